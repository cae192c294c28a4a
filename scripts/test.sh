#!/usr/bin/env bash
# Install rayrec into .venv (if needed) and run the test suite, slow tests excluded.
#
#   bash scripts/test.sh                           # everything but @pytest.mark.slow
#   bash scripts/test.sh tests/unit -q             # arguments go to pytest
#   bash scripts/test.sh -k feedback -x
#
# Exits with pytest's status. This is exactly what CI runs (.ci/run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$REPO_ROOT"
exec "$VENV_PYTHON" -m pytest -m "not slow" "$@"
