"""Models: the two-tower towers (one per file), losses, implicit ALS, and the servable model directories."""
