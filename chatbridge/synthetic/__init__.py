"""The synthetic world and stand-ins for weights that cannot be downloaded: the tiny default's harness.

It may use every layer of the package; nothing in the core imports it. Entry points call `prepare` before they
build anything, so that the world and the stand-in weights exist where the config expects them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from chatbridge.config import TrainConfig


def prepare(config: TrainConfig) -> None:
    """Generate what `config.synthetic` asks for, unless an identical copy is already there.

    The world goes to `synthetic.world`; tiny EVA and BEATs towers pretrained on it go to the encoders'
    checkpoints; a tiny LLaMA that learned the world's language goes to `model.llm.path`,
    where the model's loader reads it like any Hugging Face folder.
    """
    for _, make in preparation_steps(config):
        make()


def preparation_steps(config: TrainConfig) -> list[tuple[str, Callable[[], None]]]:
    """`prepare` as named steps in order (the main job times and reports each); each skips an identical copy."""
    from chatbridge.synthetic.chatbind import prepare_chatbind
    from chatbridge.synthetic.tiny_encoders import ensure_tiny_encoders
    from chatbridge.synthetic.tiny_llm import ensure_tiny_llama_folder
    from chatbridge.synthetic.world import ensure_world

    synthetic = config.synthetic
    if synthetic.world is None:
        return []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("synthetic world", lambda: ensure_world(Path(synthetic.world), synthetic.seed))
    ]
    tiny = synthetic.tiny_llm
    if tiny is not None:
        if not config.model.llm.path:
            raise ValueError("synthetic.tiny_llm is set but model.llm.path (where to write it) is not")

        def make_llm() -> None:
            ensure_tiny_llama_folder(
                config.model.llm.path,
                tiny.vocab_size,
                tiny.hidden_size,
                tiny.num_layers,
                tiny.num_heads,
                corpus=synthetic.world,
                pretrain_steps=tiny.pretrain_steps,
                seed=tiny.seed,
            )

        steps.append(("tiny LLM", make_llm))
    if synthetic.tiny_encoders is not None:
        steps.append(("tiny encoders", lambda: ensure_tiny_encoders(config, synthetic.tiny_encoders)))
    steps.append(("ChatBind stand-ins", lambda: prepare_chatbind(config)))
    return steps
