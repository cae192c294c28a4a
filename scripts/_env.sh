# Shared setup for scripts/test.sh and scripts/quickstart.sh; source it, don't run it.
#
# Makes sure $RAYREC_VENV (default: .venv in the repository root) exists and holds rayrec with
# its test extras plus every plugin package under plugins/, all installed editable. The first
# run on a fresh machine takes a few minutes (Ray and torch); after that pip is skipped while
# no pyproject.toml has changed. RAYREC_FORCE_INSTALL=1 reinstalls anyway. Sets VENV_PYTHON.
#
# torch: pyproject.toml pins torch>=2.4,<2.14, which resolves to the CPU wheel here. For a GPU
# build install torch from the PyTorch CUDA index into the venv first (see README.md).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${RAYREC_VENV:-$REPO_ROOT/.venv}"
VENV_PYTHON="$VENV_DIR/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

_rayrec_log() { echo "[rayrec setup] $*" >&2; }

# The first interpreter of at least Python 3.11 (pyproject's floor); $PYTHON wins when set.
_rayrec_find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

_rayrec_create_venv() {
    local python
    if ! python="$(_rayrec_find_python)"; then
        _rayrec_log "error: rayrec needs Python 3.11 or newer; none was found on PATH."
        _rayrec_log "Install one (Debian/Ubuntu: apt-get install python3 python3-venv) or set PYTHON=/path/to/python3."
        return 1
    fi
    _rayrec_log "creating $VENV_DIR with $python ($("$python" --version 2>&1))"
    if ! "$python" -m venv "$VENV_DIR"; then
        _rayrec_log "error: '$python -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv"
        rm -rf "$VENV_DIR"
        return 1
    fi
}

# What the installed state depends on: the interpreter and every pyproject.toml we install.
_rayrec_install_fingerprint() {
    {
        echo "python=$("$VENV_PYTHON" -c 'import sys; print(sys.version)')"
        local project
        for project in "$REPO_ROOT/pyproject.toml" "$REPO_ROOT"/plugins/*/pyproject.toml; do
            if [[ -f "$project" ]]; then echo "$project $(cksum <"$project")"; fi
        done
    } | cksum
}

rayrec_setup_venv() {
    if [[ ! -x "$VENV_PYTHON" ]] || ! "$VENV_PYTHON" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV_DIR"
        _rayrec_create_venv
    fi

    local stamp="$VENV_DIR/.rayrec-install-fingerprint" fingerprint
    fingerprint="$(_rayrec_install_fingerprint)"
    if [[ "${RAYREC_FORCE_INSTALL:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]] &&
        "$VENV_PYTHON" -c 'import rayrec, pytest' >/dev/null 2>&1; then
        return 0
    fi

    # One pip call for everything, so the plugins' "rayrec" requirement resolves to this checkout.
    local -a requirements=(-e "$REPO_ROOT[test]")
    local project
    for project in "$REPO_ROOT"/plugins/*/pyproject.toml; do
        if [[ -f "$project" ]]; then requirements+=(-e "$(dirname "$project")"); fi
    done
    _rayrec_log "installing rayrec and $((${#requirements[@]} / 2 - 1)) plugin(s) into $VENV_DIR (the first time takes a few minutes) ..."
    "$VENV_PYTHON" -m pip install --quiet "${requirements[@]}"
    echo "$fingerprint" >"$stamp"
    _rayrec_log "done"
}

rayrec_setup_venv
