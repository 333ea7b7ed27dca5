"""Core of vlp: recipes, the per-step feature cache, the model assembly and the training loop."""
