#!/usr/bin/env bash
# Install everything into .venv and run the checks: lint, format, types, tests.
# Usage: bash scripts/test.sh [pytest args]
#   quick local run: bash scripts/test.sh -m "not slow and not labelstudio"
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# A real Label Studio (its own venv: it pins other versions) for the end-to-end tests, installed
# in the background meanwhile: on a fresh 2-core machine each install takes 2-3 minutes.
labelstudio_log=$(mktemp)
bash scripts/install_labelstudio.sh >"$labelstudio_log" 2>&1 &
labelstudio=$!
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if ! wait "$labelstudio"; then
    cat "$labelstudio_log" >&2
    echo "installing Label Studio failed (scripts/install_labelstudio.sh)" >&2
    exit 1
fi
cat "$labelstudio_log"
rm -f "$labelstudio_log"
.venv/bin/python -m pytest "$@"
