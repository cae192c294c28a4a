"""rayrec: a plugin-based recommendation server on Ray."""

__version__ = "0.1.0"
