#!/usr/bin/env bash
# Install rayrec into .venv (if needed), then run `rayrec quickstart`: train on built-in
# synthetic data, serve the model, send requests and feedback, and show a recommendation
# change after the feedback. Arguments go to `rayrec quickstart` (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$REPO_ROOT"
exec "$VENV_DIR/bin/rayrec" quickstart "$@"
