"""The HTTP surface: routes and the Ingress deployment, API keys and limits, the demo page."""
