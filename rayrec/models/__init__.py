"""Two-tower models: item towers, user towers (one per file), losses, and the trained bundle."""
