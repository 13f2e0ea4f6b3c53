"""A trained model ready to answer: load it once, then generate for many prompts at once, score answers, or chat.

Prompts are rendered and tokenised by the model's chat template exactly as training renders and tokenises its
samples (`data.chat_templates`; ChatBridge's: segment by segment), and padded by the training collate, so inference
sees what the model was tuned on and a batch left-padded together generates what each prompt generates alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedTokenizer

from chatbridge.config import Modality, TrainConfig
from chatbridge.config_apps import GenerationSettings
from chatbridge.data.batch import ChatBridgeBatch
from chatbridge.data.collate import collate
from chatbridge.data.sample import Medium, MultimodalSample
from chatbridge.data.tokenize import EncodedSample
from chatbridge.inference.generation import cut_at_stop, generate_from_embeds
from chatbridge.inference.media import MediaFile, MediaReader
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.llm import load_llm_tokenizer
from chatbridge.models.setup import build_model_for_training
from chatbridge.registry import CHAT_TEMPLATES


@dataclass
class Request:
    """One single-turn prompt: media (in prompt order) and a question."""

    question: str
    media: Sequence[MediaFile] = ()


@dataclass
class EncodedMedium:
    """A medium turned into soft tokens once, kept for every later turn of a conversation."""

    modality: Modality
    soft_tokens: Tensor  # (Q, D_llm)
    source: str = ""


@dataclass
class Prompt:
    """Token ids of a prompt with its media's soft tokens, before BOS."""

    encoded: EncodedSample
    media: list[EncodedMedium] = field(default_factory=list)


class InferenceEngine:
    """A model in eval mode with its tokenizer, media reader, chat template and generation settings.

    Args:
        model: The ChatBridge model (eval mode, nothing trains).
        tokenizer: Its tokenizer.
        reader: Turns media files into encoder inputs.
        settings: How to generate (`settings.stop` None: the template's stop text).
        template: The registered chat template's name (`model.chat_template`).
    """

    def __init__(  # noqa: PLR0913 - the parts of an engine
        self,
        model: ChatBridgeModel,
        tokenizer: PreTrainedTokenizer,
        reader: MediaReader,
        settings: GenerationSettings,
        template: str = "chatbridge",
    ) -> None:
        self.model, self.tokenizer, self.reader = model.eval(), tokenizer, reader
        self.template = CHAT_TEMPLATES.get(template)()
        self.settings = settings if settings.stop else dataclasses.replace(settings, stop=self.template.stop)

    @property
    def device(self) -> torch.device:
        return self.model.llm_proj.weight.device

    # ------------------------------------------------------------------------------------------- prompts

    def encode_media(self, media: Sequence[MediaFile]) -> list[EncodedMedium]:
        """Read and encode media into soft tokens, one encoder call per modality.

        Raises:
            MediaInputError: a file cannot be used (the message names it).
        """
        tensors = [self.reader.read(medium) for medium in media]
        soft: list[Tensor | None] = [None] * len(media)
        for modality in dict.fromkeys(medium.modality for medium in media):
            indices = [i for i, medium in enumerate(media) if medium.modality == modality]
            with torch.no_grad():
                encoded = self.model.encode_media(modality, torch.stack([tensors[i] for i in indices]).to(self.device))
            for i, tokens in zip(indices, encoded, strict=True):
                soft[i] = tokens
        return [EncodedMedium(m.modality, s, str(m.path)) for m, s in zip(media, soft, strict=True)]

    def turn_prompt(self, question: str | None, media: Sequence[EncodedMedium], first: bool) -> Prompt:
        """One chat turn, rendered with the chat template and tokenised as training does."""
        text = self.template.render_turn([medium.modality for medium in media], question, first)
        return self.encode_text(text, media)

    def encode_text(self, text: str, media: Sequence[EncodedMedium]) -> Prompt:
        """A rendered text (one `<query>` per medium) as a prompt, tokenised by the chat template."""
        counts = [medium.soft_tokens.shape[0] for medium in media]
        return Prompt(self.template.encode(text, self.tokenizer, counts), list(media))

    def embed_prompts(self, prompts: Sequence[Prompt]) -> tuple[Tensor, Tensor, ChatBridgeBatch]:
        """Left-padded input embeddings (B, L, D) and attention mask (B, L) of prompts, BOS first."""
        samples = [
            MultimodalSample(prompt.encoded, [Medium(m.modality, m.soft_tokens) for m in prompt.media], "prompt", i)
            for i, prompt in enumerate(prompts)
        ]
        # The media are encoded already: collate stacks their soft tokens per modality (in `batch.media`) in the order
        # of the slot positions it computes, which is all `embed` needs.
        batch = collate(samples, self.tokenizer.pad_token_id, self.tokenizer.bos_token_id).to(self.device)
        with torch.no_grad():
            embeds = self.model.embed(batch.input_ids, batch.media, batch.soft_token_positions)
        return embeds, batch.attention_mask, batch

    # ------------------------------------------------------------------------------------------- batches

    def generate(self, requests: Sequence[Request], settings: GenerationSettings | None = None) -> list[str]:
        """Answers to single-turn prompts, generated together (left-padded into one batch)."""
        prompts = [self.turn_prompt(r.question, self.encode_media(r.media), first=True) for r in requests]
        return self.generate_prompts(prompts, settings)

    def generate_prompts(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None) -> list[str]:
        """Answers after prompts built by `turn_prompt` / `encode_text` (e.g. dialogues with their history)."""
        settings = settings or self.settings
        embeds, mask, _ = self.embed_prompts(prompts)
        generated = generate_from_embeds(self.model.llm, self.tokenizer, embeds, mask, settings)
        texts = self.tokenizer.batch_decode(generated.tokens, skip_special_tokens=True)
        return [cut_at_stop(text, settings.stop) for text in texts]

    def score(self, requests: Sequence[Request], answers: Sequence[str]) -> Tensor:
        """Mean negative log-likelihood per answer token of each `answers[i]` given `requests[i]` (B,).

        The answer is appended as training appends a target (`{answer}` + the template's answer suffix, `\\n###`
        for ChatBridge), so likelihood-based multiple choice ranks options exactly by the training loss.
        """
        prompts = []
        for request, answer in zip(requests, answers, strict=True):
            media = self.encode_media(request.media)
            text = self.template.render_turn([m.modality for m in media], request.question, True)
            prompts.append(self.encode_text(text + answer + self.template.answer_suffix, media))
        embeds, _, batch = self.embed_prompts(prompts)
        with torch.no_grad():
            return self.model.loss_from_embeds(embeds, batch).per_sample_loss


def load_engine(
    config: TrainConfig, device: torch.device | None = None, max_megabytes: float | None = None
) -> InferenceEngine:
    """Build the configured model with every checkpoint loaded, in eval mode, nothing trainable; media files over
    `max_megabytes` are refused before they are read.

    Raises:
        FileNotFoundError: `model.checkpoint` is set but missing (e.g. the main job has not trained it yet).
    """
    model_cfg = config.model
    if model_cfg.checkpoint and not Path(model_cfg.checkpoint).exists():
        raise FileNotFoundError(
            f"model.checkpoint = {model_cfg.checkpoint} does not exist; train it first (the tiny default: "
            "bash scripts/quickstart.sh) or point model.checkpoint at a checkpoint"
        )
    chosen = config.run.device
    use_cuda = chosen == "cuda" or (chosen == "auto" and torch.cuda.is_available())
    target = device or torch.device("cuda" if use_cuda else "cpu")
    model = build_model_for_training(dataclasses.replace(model_cfg, trainable=[]), target)
    reader = MediaReader(config.processor, model_cfg, max_megabytes)
    tokenizer = load_llm_tokenizer(model_cfg.llm)
    return InferenceEngine(model, tokenizer, reader, config.generation, model_cfg.chat_template)
