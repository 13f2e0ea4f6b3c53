"""Shared fixtures: the tiny ChatBridge config and model (every real part at small width, random init)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbridge.config import ModelConfig, TrainConfig
from chatbridge.config_loading import load_config
from chatbridge.models.chatbridge import ChatBridgeModel, build_chatbridge
from chatbridge.models.freezing import set_trainable
from chatbridge.synthetic.tiny_llm import write_tiny_llama_folder
from tests.tiny_sizes import SMALL

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml"


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """One untrained tiny LLaMA folder per test session (fixed corpus, vocabulary 128, width 32): fast, and free of
    the synthetic world, for shape-and-plumbing tests."""
    return write_tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama") / "llm")


@pytest.fixture
def tiny_train_config(tiny_llm_dir) -> TrainConfig:
    """The shipped tiny stage-1 run config at plumbing-test sizes (`tests/tiny_sizes.py`), with its LLM folder in the
    session's temp dir."""
    return load_config(TINY_PRETRAIN, [*SMALL, f"model.llm.path={tiny_llm_dir}"], require_paths=False)


@pytest.fixture
def tiny_config(tiny_train_config) -> ModelConfig:
    """The tiny preset's model config."""
    return tiny_train_config.model


@pytest.fixture
def tiny_model(tiny_config) -> ChatBridgeModel:
    """A tiny model with the stage-1/2 trainable set (random init from `init_seed`), fp32."""
    model = build_chatbridge(tiny_config)
    set_trainable(model, tiny_config.trainable)
    return model
