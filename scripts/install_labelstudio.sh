#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own venv (.venv-ls) for the end-to-end tests. Idempotent.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-ls"

if [[ -x "$venv/bin/label-studio" ]]; then
    exit 0
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check label-studio==1.23.2
"$venv/bin/label-studio" --help >/dev/null
echo "Label Studio installed in $venv"
