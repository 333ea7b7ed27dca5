"""Evaluation of trained models: held-out image-text retrieval."""
