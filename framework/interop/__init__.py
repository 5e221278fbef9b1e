"""Interoperability: key tables, foreign weight formats, released models by name."""
