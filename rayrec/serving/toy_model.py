"""Deprecated: the toy model is :mod:`rayrec.models.toy` (a model kind like the others); tests
and plugins import ``ToyModel`` and ``write_toy_model`` from :mod:`rayrec.testing`."""

import warnings

from rayrec.models.toy import CATEGORY_NAMES, ToyModel, write_toy_model  # noqa: F401

warnings.warn("rayrec.serving.toy_model is deprecated: import ToyModel and write_toy_model from rayrec.testing",
              DeprecationWarning, stacklevel=2)
