"""Real-time serving: a Ray Serve graph over plain, separately tested stage logic.

``build_app(AppArgs(...))`` (in :mod:`rayrec.serving.app`) is the one way in, used by
``rayrec serve`` and by ``serve run deploy/serve.yaml``. The stage logic lives in
:mod:`.preprocess`, :mod:`.encode`, :mod:`.scoring` and :mod:`.feedback`, free of Ray; the
deployments in :mod:`.deployments` and :mod:`.ingress` are thin shells around it.
"""
