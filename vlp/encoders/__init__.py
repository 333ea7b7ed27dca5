"""Encoder plugins: image encoders, text encoders and fusion modules."""
