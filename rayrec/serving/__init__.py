"""Real-time serving: a Ray Serve graph over plain, separately tested stage logic.

Three rooms, imports pointing down (``http`` -> ``graph`` -> ``stages``):

- :mod:`.stages`: the stage logic (preprocess, encode, scoring, feedback, the item index, text
  search, model slots, the in-process pipeline), no Ray and no HTTP, unit-tested in process.
- :mod:`.graph`: the Ray Serve deployments that host the stages, the topologies (how the
  ingress reaches them), their options and resources, the loaded model's item metadata,
  metrics and the proxy. Models load through :func:`rayrec.models.servable.load_model_dir`.
- :mod:`.http`: the FastAPI routes and the Ingress deployment, security (API keys, limits),
  error answers and the demo page.

Shared by all three: :mod:`.config` (``AppArgs``) and :mod:`.schemas` (the API's types).
``build_app(AppArgs(...))`` in :mod:`.app` is the one way in, used by ``rayrec serve`` and by
``serve run deploy/serve.yaml``.
"""
