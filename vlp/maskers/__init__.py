"""Maskers: plugins that derive views (masked or augmented inputs) from a batch on its device."""
