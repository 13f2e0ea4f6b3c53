"""Shared fixtures: the tiny ChatBridge config and model (every real part at small width, random init)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chatbridge.config import ModelConfig
from chatbridge.config_loading import load_config
from chatbridge.models.chatbridge import ChatBridgeModel, build_chatbridge
from chatbridge.models.freezing import set_trainable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """One tiny LLaMA folder per test session (generated through the real `tiny_llama` builder)."""
    return tmp_path_factory.mktemp("tiny_llama")


@pytest.fixture
def tiny_config(tiny_llm_dir) -> ModelConfig:
    """The shipped tiny preset, with its LLM folder in the session's temp dir."""
    config = load_config(REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml", require_paths=False)
    model = config.model
    # An untrained tiny LLM (no corpus) keeps these shape-and-plumbing tests fast and free of the synthetic world.
    llm = dataclasses.replace(model.llm, path=str(tiny_llm_dir / "llm"), corpus=None, pretrain_steps=0)
    return dataclasses.replace(model, llm=llm)


@pytest.fixture
def tiny_model(tiny_config) -> ChatBridgeModel:
    """A tiny model with the stage-1/2 trainable set (random init from `init_seed`), fp32."""
    model = build_chatbridge(tiny_config)
    set_trainable(model, tiny_config.trainable)
    return model
