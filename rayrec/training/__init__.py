"""Training: the per-worker loop, the Ray Train driver, and model-directory export."""
