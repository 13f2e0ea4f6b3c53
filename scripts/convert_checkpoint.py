"""Convert the authors' released ChatBridge `.pth` into this framework's checkpoint folder.

    python scripts/convert_checkpoint.py --checkpoint chatbridge_released.pth \
        --cfg-path eval_configs/chatbridge_eval.yaml --out weights/chatbridge

The folder holds `model.safetensors` (the Q-Former, query tokens, audio_trans, llama_proj, ln_vision/ln_audio, in
this framework's names; no pickle) and `config.yaml` (the resolved config given with --cfg-path). Point
`model.checkpoint` at the folder afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatbridge.config_loading import ConfigError, load_config
from chatbridge.models.loading import convert_released_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the released .pth")
    parser.add_argument("--cfg-path", type=Path, required=True, help="the model config the weights belong to")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    args = parser.parse_args()
    try:
        config = load_config(args.cfg_path, require_paths=False)
        folder = convert_released_checkpoint(args.checkpoint, args.out, config)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
