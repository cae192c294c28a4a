"""The Ray Serve graph: deployments that host the stage logic, and how they are wired.

:mod:`.deployments` (thin shells: batching, reloads, health checks, metrics),
:mod:`.topology` (split, fused, ingress: how the ingress reaches the read stages),
:mod:`.builder` (each deployment bound with its replicas, CPUs and memory),
:mod:`.model_loading`, :mod:`.observability` (metrics, request log) and :mod:`.proxy`
(the HTTP front Ray starts: HAProxy or Serve's proxy).
"""
