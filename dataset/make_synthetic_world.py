"""Write the deterministic synthetic multimodal world used for CPU training, evaluation and demos.

The world (layout: ``chatbridge/synthetic/world.py``; held-out questions, their types and chance levels:
``chatbridge/synthetic/questions.py``) is reused when ``--out`` already holds a complete world with the same seed and
scale, and regenerated in place otherwise; ``--force`` always regenerates. Prints the row counts of every file and
the question types of every held-out QA file with their chance level (all slots right, by uniform guessing).

Usage:
    python dataset/make_synthetic_world.py --out data/synthetic --seed 0 [--scale small] [--force]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from chatbridge.synthetic.world import SCALES, ensure_world, generate_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="world root folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng; same seed, same bytes")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small", help="preset WorldSizes")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build = generate_world if args.force else ensure_world
    manifest = build(args.out, seed=args.seed, sizes=SCALES[args.scale])
    print(f"synthetic world (seed {manifest.seed}, scale {args.scale}) at {manifest.root}")
    for name, count in manifest.counts.items():
        print(f"  {name:28s} {count}")
    for name, types in manifest.question_types.items():
        print(
            f"  {name}: "
            + ", ".join(f"{kind} {entry['questions']} (chance {entry['chance']:.3f})" for kind, entry in types.items())
        )


if __name__ == "__main__":
    main()
