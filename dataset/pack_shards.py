"""Pack a stage-1 caption file and its media folder into webdataset tar shards, checking every media file first.

Usage:
    python dataset/pack_shards.py --annotations A.json --media-root DIR --modality image|audio|video --out DIR
        [--max-per-shard N] [--image-size S] [--num-frames N]

Each row's media is resolved like the `caption_json` dataset does (`DIR/id`, then the modality's suffixes) and
run through the real processor in evaluation mode; rows with a bad annotation or a missing, empty or undecodable
file are left out and reported by reason, with the ids of the first few. Train on the result with
`builder: caption_shards` and `annotations: <out>`. Exits 1 if nothing was written.
"""

from __future__ import annotations

import argparse
import logging
import sys

from chatbridge.config import ProcessorConfig
from chatbridge.data.shard_writer import pack_caption_shards
from chatbridge.models.encoders.beats import BeatsConfig
from chatbridge.models.encoders.eva import EvaViTConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="stage-1 caption JSON (VALOR format)")
    parser.add_argument("--media-root", required=True, help="folder the annotation ids are relative to")
    parser.add_argument("--modality", required=True, choices=["image", "audio", "video"])
    parser.add_argument("--out", required=True, help="empty output folder for shard-000000.tar, ...")
    parser.add_argument("--max-per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--image-size", type=int, default=EvaViTConfig.image_size, help="resize used for checks")
    parser.add_argument("--num-frames", type=int, default=ProcessorConfig.num_frames, help="frames used for checks")
    return parser.parse_args(argv)


def checking_processor(modality: str, image_size: int, num_frames: int) -> ProcessorConfig:
    """The preprocessing that checks each file: that of ChatBridge's own encoders (EVA-ViT-g, BEATs)."""
    encoder = BeatsConfig() if modality == "audio" else EvaViTConfig(image_size=image_size)
    processor = ProcessorConfig(num_frames=num_frames)
    processor.resolve(modality, encoder.preprocessing(modality), "processor")
    return processor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    processor = checking_processor(args.modality, args.image_size, args.num_frames)
    report = pack_caption_shards(
        args.annotations, args.media_root, args.modality, args.out, processor, args.max_per_shard
    )
    print(report.format())
    return 0 if report.written else 1


if __name__ == "__main__":
    sys.exit(main())
