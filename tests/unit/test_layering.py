"""Imports point down (cli -> serving/training -> models/data/evaluation -> plugins -> ...):
a lower layer never imports a higher one, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rayrec

PACKAGE = Path(rayrec.__file__).parent

#: layer -> packages it must not import. models may use evaluation.metrics alone: the tie rule
#: of its recommendation lists is the one the metrics are computed with.
FORBIDDEN = {
    "models": ("rayrec.training", "rayrec.evaluation.protocol", "rayrec.evaluation.baselines", "rayrec.serving",
               "rayrec.cli"),
    "data": ("rayrec.training", "rayrec.models", "rayrec.evaluation", "rayrec.serving", "rayrec.cli"),
    "evaluation": ("rayrec.training", "rayrec.models", "rayrec.serving", "rayrec.cli"),
    "state": ("rayrec.training", "rayrec.models", "rayrec.serving", "rayrec.cli"),
    "batch": ("rayrec.serving", "rayrec.cli"),
    # Serving's rooms: stage logic runs without Ray or HTTP; the graph knows nothing of HTTP;
    # only rayrec/serving/app.py puts the two together.
    "serving/stages": ("ray", "fastapi", "starlette", "rayrec.serving.graph", "rayrec.serving.http",
                       "rayrec.serving.app", "rayrec.cli"),
    "serving/graph": ("fastapi", "starlette", "rayrec.serving.http", "rayrec.serving.app", "rayrec.cli"),
    "serving/http": ("rayrec.serving.app", "rayrec.cli"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for line, module in imported_modules(path)
        if any(module == banned or module.startswith(banned + ".") for banned in FORBIDDEN[layer])
    ]
    assert not wrong, "\n".join(wrong)
