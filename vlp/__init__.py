"""vlp: medical vision-language pre-training where objectives, maskers and encoders are plugins."""

__version__ = "0.1.0"
