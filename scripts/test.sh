#!/usr/bin/env bash
# Install everything into .venv and run the checks: lint, format, types, tests.
# Usage: bash scripts/test.sh [pytest args]
#   quick local run: bash scripts/test.sh -m "not slow and not labelstudio"
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
# A real Label Studio (its own venv: it pins other versions) for the end-to-end tests.
bash scripts/install_labelstudio.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
