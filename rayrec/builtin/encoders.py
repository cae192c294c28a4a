"""Built-in encoders (filled in by the data/model layers)."""
