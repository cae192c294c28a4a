"""``python -m rayrec``: the command line, as the ``rayrec`` script runs it."""

import os
import sys


def _drop_a_shadowing_folder() -> None:
    """``-m`` puts the working directory first on ``sys.path``. Run from the folder that holds a
    clone named ``rayrec/``, that folder (no ``__init__.py``) is imported as a namespace package
    ``rayrec`` in place of an editable install, whose finder Python asks only after the path:
    ``rayrec.plugins`` then resolves to the clone's ``plugins/`` folder. Forget that namespace
    and the working directory, so the import below finds the installed package."""
    package = sys.modules.get("rayrec")
    if package is None or getattr(package, "__file__", None) is not None:
        return
    cwd = os.getcwd()
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != cwd]
    for name in [name for name in sys.modules if name == "rayrec" or name.startswith("rayrec.")]:
        del sys.modules[name]


_drop_a_shadowing_folder()

from rayrec.cli import main  # noqa: E402

main()
