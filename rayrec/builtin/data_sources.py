"""Built-in data sources (filled in by the data/model layers)."""
