#!/usr/bin/env bash
# The main job on the embedded tiny default, on CPU: set up .venv, then (scripts/main_job.py) generate the synthetic
# world and the frozen stand-ins (tiny LLM, tiny EVA and BEATs), train stage 1 and stage 2 with train.py, evaluate
# with evaluate.py, and write outputs/report.md (results table, loss curves, wall times, the chat command).
# Rerunning skips finished phases; arguments go to main_job.py (e.g. --seed 1 --output outputs/seed1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python scripts/main_job.py "$@"
