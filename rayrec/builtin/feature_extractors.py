"""Built-in feature extractors (filled in by the data/model layers)."""
