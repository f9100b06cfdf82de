#!/usr/bin/env bash
# Install the backend into .venv and start it on the embedded default: an embedded Redis under
# MODEL_DIR and the retraining worker in-process, so the whole loop runs from one command.
# Usage: bash scripts/serve.sh            (env: CLIPSAM_PRESET, PORT, MODEL_DIR, ... see README)
#   try it without downloading: CLIPSAM_PRESET=tiny bash scripts/serve.sh (the shipped micro models)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.serve-requirements"  # install again only when requirements.txt changed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r requirements.txt
  touch "$stamp"
fi
export MODEL_DIR=${MODEL_DIR:-model_dir}
echo "clipsam: serving on ${HOST:-127.0.0.1}:${PORT:-9090}, state in $MODEL_DIR" >&2
exec "$venv/bin/python" -m backend
