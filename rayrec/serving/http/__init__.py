"""The HTTP surface: routes and the Ingress deployment (:mod:`.ingress`), API keys and limits
(:mod:`.security`), error answers (:mod:`.error_handlers`) and the demo page (``static/``)."""
