#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: torch first, pinned, then the package with
# its dev and demo extras (the tests import gradio). Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.14.1 torchaudio==2.11.0
.venv/bin/python -m pip install --quiet -e ".[dev,demo]"
.venv/bin/python -c "import chatbridge, torch; print(f'chatbridge {chatbridge.__version__} with torch {torch.__version__} ready in .venv')"
