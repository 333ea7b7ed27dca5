"""Trained encoders out of vlp: timm, Hugging Face and open_clip formats, and embeddings."""
