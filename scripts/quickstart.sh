#!/usr/bin/env bash
# The main job on the embedded tiny default, on CPU: set up .venv, then train both ChatBridge stages on the
# synthetic world (generated into .cache/ on first use). Outputs go to outputs/tiny_pretrain and
# outputs/tiny_instructtuning; each stage prints where its checkpoint and loss log are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
echo "== stage 1: align images, videos and audio with text (synthetic captions)"
.venv/bin/python train.py --cfg-path train_configs/chatbridge_tiny_pretrain.yaml "$@"
echo "== stage 2: instruction tuning (MULTIS-format synthetic conversations, incl. video with its audio)"
.venv/bin/python train.py --cfg-path instructiontuning_configs/chatbridge_tiny_instructtuning.yaml "$@"
