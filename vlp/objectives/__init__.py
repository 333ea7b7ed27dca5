"""Objective plugins. Each loss's math is also a plain function beside its plugin class."""
