"""Models: the two-tower towers (one per file), losses, implicit ALS, EASE, and the servable model directories."""
