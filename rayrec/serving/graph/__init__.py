"""The Ray Serve graph: the deployments that host the stage logic, and how they are wired."""
