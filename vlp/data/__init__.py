"""Data sets of image-report pairs: a built-in demo set and manifest files."""
