"""rayrec's own components, registered through the same hooks third-party plugins use."""
