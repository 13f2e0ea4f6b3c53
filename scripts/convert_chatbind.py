"""Convert ChatBind's released artefacts (docs/reference/chatbind.md §10) into this framework's format.

The stage-1 projector (`chatbind-7b-pretrain.bin`) -> our checkpoint folder, the `model.checkpoint` of stage 2:

    python scripts/convert_chatbind.py projector --projector chatbind-7b-pretrain.bin \
        --cfg-path instructiontuning_configs/chatbind_finetune.yaml --out weights/chatbind_stage1

The stage-2 delta (`dreamerlin/chatbind-7b-delta`) applied to the original LLaMA-7B (Hugging Face folder) ->
`OUT/llm` (the merged LLaMA, fp16 safetensors; about 14 GB of disk, one shard in memory at a time) and
`OUT/chatbind` (our checkpoint of the projector, with a config pointing at both):

    python scripts/convert_chatbind.py delta --base /path/to/llama-7b --delta /path/to/chatbind-7b-delta \
        --cfg-path eval_configs/chatbind_eval.yaml --out weights/chatbind_converted

The delta's vocabulary tells the LLaVA version it was trained with: 32004 rows is v0 (the default preset), 32003 is
v1 (`--options model.model_type=vicuna7b_v1`); a mismatch is reported. ImageBind is not part of either artefact:
set `model.encoders.imagebind.checkpoint` to Meta's `imagebind_huge.pth`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatbridge.config_loading import ConfigError, load_config
from chatbridge.models.loading_chatbind import convert_delta, convert_projector


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    projector = commands.add_parser("projector", help="the stage-1 projector file -> our checkpoint folder")
    projector.add_argument("--projector", type=Path, required=True, help="chatbind-7b-pretrain.bin / mm_projector.bin")
    delta = commands.add_parser("delta", help="LLaMA-7B + the stage-2 delta -> merged LLM + our checkpoint")
    delta.add_argument("--base", type=Path, required=True, help="the original LLaMA-7B Hugging Face folder")
    delta.add_argument("--delta", type=Path, required=True, help="the chatbind-7b-delta folder")
    for command in (projector, delta):
        command.add_argument("--cfg-path", type=Path, required=True, help="the ChatBind config the weights belong to")
        command.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
        command.add_argument("--out", type=Path, required=True, help="folder to write")
    args = parser.parse_args()
    try:
        config = load_config(args.cfg_path, args.options, require_paths=False)
        if args.command == "projector":
            written = [convert_projector(args.projector, args.out, config)]
        else:
            written = list(convert_delta(args.base, args.delta, args.out, config))
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder in written:
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
