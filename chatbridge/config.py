"""Typed configuration: every default lives once, in a dataclass.

A run YAML has the sections `model`, `datasets`, `processor` and `run` (plus `synthetic` for the tiny world).
`load_config` merges, in increasing precedence: these dataclass defaults < the model preset (chosen by `model.arch`
and `model.model_type`) < the run YAML < `--options key=value` overrides; see `chatbridge/config_loading.py`.

Encoders and connectors are pluggable: their common fields are declared here (`EncoderConfig`,
`ConnectorConfig`), and each registered builder declares its own dataclass, a subclass, as the annotation of its
`cfg` parameter (e.g. `EvaViTConfig` in `chatbridge/models/encoders/eva.py`). The loader validates a YAML section
against the schema of the builder its `name` selects. Those subclasses also answer the questions the data layer
asks without building a model: how many tokens an input gives, which preprocessing it needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from chatbridge.config_apps import DemoSettings, EvaluationConfig, GenerationSettings
from chatbridge.config_fields import at_least, path_field, require

Modality = Literal["image", "video", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "video", "audio")
Precision = Literal["fp32", "bf16", "fp16"]


def split_items(modality: str, block_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(items, item shape) of one media block: an image is one item; a video's frames and an audio clip's segments
    (or clips) are its leading dimension. The model and the token arithmetic both use this one rule."""
    if modality == "image":
        return 1, tuple(block_shape)
    return block_shape[0], tuple(block_shape[1:])


# ----------------------------------------------------------------------------------------------- pluggable parts


@dataclass
class EncoderConfig:
    """Fields every frozen encoder has. Its architecture fields come from the registered builder's own subclass."""

    name: str = ""
    """Registered encoder builder (e.g. eva_vit_g, beats); selects the schema of the rest of this section."""
    checkpoint: str | None = path_field("the encoder's official weight file")
    """Weights loaded after the build; None keeps the random init (tiny presets)."""
    frozen: bool = True
    """Frozen: no grad, eval mode kept, run under torch.no_grad."""
    precision: Precision = "bf16"
    """Weight dtype of the frozen tower (norms, class token, position embedding and biases stay fp32)."""

    def output_width(self) -> int:
        """Width of every output token."""
        raise _no_schema(self, "encoder")

    def num_tokens(self, modality: str, item_shape: tuple[int, ...]) -> int:
        """Tokens one input item (an image, a frame, an audio segment or clip) of this shape becomes."""
        raise _no_schema(self, "encoder")

    def preprocessing(self, modality: str) -> dict[str, Any]:
        """`ProcessorConfig` values this encoder needs for `modality` (processor name, size, statistics...)."""
        raise _no_schema(self, "encoder")


@dataclass
class ConnectorConfig:
    """Fields every connector has; its own fields come from the registered builder's subclass."""

    name: str = ""
    """Registered connector builder (shared_qformer, qformer_per_modality, linear, mlp, item_mean)."""

    def output_tokens(self, num_items: int, tokens_per_item: int) -> int:
        """Soft tokens a media block of `num_items` items with `tokens_per_item` encoder tokens each becomes."""
        raise _no_schema(self, "connector")

    def output_width(self, memory_width: int) -> int:
        """Width of the connector's output tokens (before `llm_proj`)."""
        raise _no_schema(self, "connector")


def _no_schema(section: Any, kind: str) -> TypeError:
    return TypeError(
        f"{kind} config {section.name!r} is the bare {type(section).__name__}; build configs with load_config "
        f"(which applies the registered {kind}'s schema) or with that {kind}'s own config class"
    )


@dataclass
class RouteConfig:
    """How one modality reaches the LLM."""

    encoder: str = ""
    """Key in `model.encoders` of the tower that encodes it (videos use the image tower in ChatBridge)."""
    queries: str | None = None
    """The connector's query set for it (Q-Former connectors); None for connectors without queries."""


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class LoraConfig:
    """Optional LoRA adapters on the LLM through peft (rank 0 disables them)."""

    rank: int = 0
    """LoRA rank; 0 = no adapters."""
    alpha: float = 16.0
    """LoRA scaling numerator."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Module names that get adapters."""


@dataclass
class LLMConfig:
    """The causal language model and its tokenizer, from a local Hugging Face folder."""

    name: str = "hf_causal_lm"
    """Registered LLM builder."""
    path: str | None = path_field(
        "a local Hugging Face causal-LM folder (config.json, tokenizer files, weights), e.g. Vicuna-13B v0",
        default="/path/to/vicuna-13b",
    )
    """The LLM folder."""
    precision: Precision = "bf16"
    """Weight dtype of the frozen LLM (the reference used fp16)."""
    frozen: bool = True
    """Freeze the LLM's own weights."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Optional LoRA adapters."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Load the frozen LLM in 8 or 4 bits through bitsandbytes (a CUDA device only), for chat and evaluation."""
    device_map: str | None = None
    """Spread the LLM over devices with accelerate (e.g. "auto"; a CUDA device only); None: one device."""
    architecture: str | None = None
    """A shape shipped with the package (`chatbridge/configs/llms/<name>.json`, e.g. vicuna-13b) that the dry run
    uses when `path` is not on disk yet; an existing folder's own `config.json` always wins."""
    added_tokens: list[str] = field(default_factory=list)
    """Tokens appended to the vocabulary in order, with new LLM rows unless the folder has them (ChatBind's LLaVA
    tokens); each splits the text and swallows adjacent whitespace (docs/reference/chatbind.md §2.5, §4.5)."""
    mean_init_tokens: list[str] = field(default_factory=list)
    """Added tokens whose new rows start as the mean of all rows before them; others ~ N(0, initializer_range)."""
    token_rows: list[str] = field(default_factory=list)
    """Added tokens whose input rows live in the model's `token_rows` table, trainable while the LLM is frozen."""


@dataclass
class FaithfulConfig:
    """Quirks of the authors' code (docs/reference/chatbridge.md §8), each off by default, on in the `faithful`
    preset. The audio padding quirk is a preprocessing setting: `processor.extra_segment_on_exact_multiple`."""

    bos_mask_on_padded_rows: bool = False
    """Stage 2: BOS takes the attention-mask value of the first left-padded column, masking BOS on shorter rows."""
    zero_grad_keep_zeros: bool = False
    """`zero_grad(set_to_none=False)`: unused modality parameters keep zero grads and still get AdamW updates."""
    weight_decay_everything: bool = False
    """Decay biases, norms and query tokens too (the reference decays every trainable tensor)."""
    splice_last_medium_only: bool = False
    """ChatBind: only the last medium of a prompt reaches the LLM (docs/reference/chatbind.md §2.6)."""


@dataclass
class ModelConfig:
    """Frozen encoders, a connector, a projection, an LLM; the model preset fills `encoders` and `routes`."""

    arch: str = "chatbridge"
    """Registered model builder."""
    model_type: str = "vicuna13b"
    """Preset: selects the model's default YAML `chatbridge/configs/models/{arch}_{model_type}.yaml`."""
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    """Frozen towers by key (ChatBridge: `vision` = EVA-ViT-g, `audio` = BEATs)."""
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    """Modality -> encoder and query set (ChatBridge: image and video -> vision/image queries, audio -> audio)."""
    memory_encoder: str | None = None
    """Encoder whose width the connector's memory has; others get a linear adapter to it (`audio_trans` in the
    reference). None: the widest encoder."""
    connector: ConnectorConfig = field(default_factory=lambda: ConnectorConfig(name="shared_qformer"))
    """Between the encoders and `llm_proj`."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Language model."""
    checkpoint: str | None = path_field(
        "a ChatBridge checkpoint: the released `.pth` or a folder/`.safetensors` written by train.py"
    )
    """Weights loaded after the parts' own checkpoints (stage-2 init, evaluation, demo); None for none."""
    trainable: list[str] = field(default_factory=lambda: ["connector.*", "adapters.*", "llm_proj.*"])
    """Glob patterns of parameter names that train; everything else is frozen."""
    max_txt_len: int = 32
    """Positions per sample: caption tokens in stage 1 (reference: 32), text and soft tokens in stage 2 (220)."""
    chat_template: str = "chatbridge"
    """Registered chat template: how chat, demo and evaluation prompts are rendered and tokenised."""
    faithful: FaithfulConfig = field(default_factory=FaithfulConfig)
    """Reference quirks (off unless the faithful preset turns them on)."""
    init_seed: int = 0
    """Seed of the parts' random initialisation; frozen random towers (tiny presets) are rebuilt from it."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernels of EVA, the Q-Former and the LLM: eager (matmul + softmax), sdpa (PyTorch's fused
    kernel), or auto = sdpa, except eager on CPU for the parts trained through (Q-Former, LLM), where SDPA's
    backward is slower (the README's benchmark section)."""

    def __post_init__(self) -> None:
        at_least(self, "model", 1, "max_txt_len")
        for modality, route in self.routes.items():
            if route.encoder not in self.encoders:
                raise ValueError(
                    f"model.routes.{modality}.encoder = {route.encoder!r} is not in model.encoders "
                    f"{sorted(self.encoders)}"
                )
        if self.memory_encoder is not None and self.memory_encoder not in self.encoders:
            raise ValueError(f"model.memory_encoder = {self.memory_encoder!r} is not in {sorted(self.encoders)}")
        if self.llm.lora.rank > 0 and not any("lora" in pattern for pattern in self.trainable):
            raise ValueError(
                "model.llm.lora.rank > 0 but no model.trainable pattern selects the adapters: add 'llm.*lora_*'"
            )

    def memory_width_encoder(self) -> str:
        """The encoder key that sets the connector's memory width (`memory_encoder`, else the widest)."""
        if self.memory_encoder is not None:
            return self.memory_encoder
        return max(self.encoders, key=lambda key: self.encoders[key].output_width())

    def soft_tokens(self, modality: str, block_shape: tuple[int, ...]) -> int:
        """Soft tokens one media block of `block_shape` becomes; what the data pipeline reserves for it.

        A pure function of the config (no model is built), so datasets are built and pickled without a model.
        """
        if modality not in self.routes:
            raise ValueError(f"no model.routes entry for {modality!r}; routed: {sorted(self.routes)}")
        num_items, item_shape = split_items(modality, block_shape)
        encoder = self.encoders[self.routes[modality].encoder]
        return self.connector.output_tokens(num_items, encoder.num_tokens(modality, item_shape))


# ----------------------------------------------------------------------------------------------- data


@dataclass
class ProcessorConfig:
    """Media preprocessing shared by datasets, evaluation and the chat.

    Fields left at None are filled from the routed encoder's declared needs (`EncoderConfig.preprocessing`); a
    value set here that disagrees with them is an error. A dataset's `processor` section overrides the top-level
    `processor` section field by field.
    """

    image_processor: str | None = None
    """Registered processor for images (None: the encoder's)."""
    video_processor: str | None = None
    """Registered processor for videos (None: the encoder's)."""
    audio_processor: str | None = None
    """Registered processor for audio (None: the encoder's)."""
    image_size: int | None = None
    """Square side the frames are resized to."""
    mean: list[float] | None = None
    """Per-channel normalisation mean."""
    std: list[float] | None = None
    """Per-channel normalisation std."""
    antialias: bool = False
    """Antialiased resize (the reference's torchvision 0.13 did not antialias tensor resizes)."""
    augment: bool = False
    """Train-time RandomResizedCrop + flip."""
    num_frames: int = 4
    """Frames per video."""
    frame_sampling: Literal["segment_random", "segment_middle", "uniform"] | None = None
    """Frame choice; None = one random frame per segment in training, the middle one at evaluation."""
    sample_rate: int | None = None
    """Audio is resampled to this rate."""
    num_mel_bins: int | None = None
    """Fbank bins."""
    target_length: int = 1024
    """Fbank frames per audio segment."""
    num_audio_segments: int = 1
    """Audio segments per clip."""
    fbank_mean: float | None = None
    """Fbank normalisation mean (the encoder's pre-training statistics)."""
    fbank_std: float | None = None
    """Fbank normalisation std."""
    extra_segment_on_exact_multiple: bool = False
    """Faithful quirk: an extra all-zero audio segment when the fbank length is an exact multiple of a segment."""
    # ImageBind preprocessing (docs/reference/chatbind.md §3): videos and audio tracks become clips of fixed length.
    clip_seconds: float = 2.0
    """Length of one video or audio clip in seconds."""
    video_clips: int = 5
    """Clips spread evenly over a video."""
    video_crops: int = 3
    """Square crops per video clip along its long side: 3 (start, centre, end) or 1 (centre)."""
    frames_per_clip: int | None = None
    """Frames taken evenly from each video clip (2: its first and last), the encoder's tubelet depth."""
    frame_folder_fps: float = 1.0
    """Frame rate assumed for a folder of frames (it has no timestamps; clips are cut in seconds)."""
    audio_clips: int = 3
    """Clips spread evenly over an audio track."""
    clip_fbank_frames: int | None = None
    """Fbank frames each audio clip is zero-padded or cut to (204 for 2 s), the encoder's."""
    centre_clips_in_place: bool = False
    """Faithful quirk (§9.14): clip means subtracted in place, so overlapping audio clips see shifted samples."""
    max_image_pixels: int = 16_000_000
    """Larger images (and video frames) are refused before decoding; JPEGs are decoded at a reduced size instead."""
    max_audio_seconds: float = 3600.0
    """Longer audio is refused before decoding."""

    def check(self, where: str) -> None:
        """Positive sizes and counts (called for every processor section of a run)."""
        at_least(self, where, 1, "image_size", "num_frames", "sample_rate", "num_mel_bins", "target_length")
        at_least(self, where, 1, "num_audio_segments", "max_image_pixels", "max_audio_seconds")
        require(self.fbank_std is None or self.fbank_std > 0, f"{where}.fbank_std", "be > 0", self.fbank_std)

    def resolve(self, modality: str, needs: dict[str, Any], where: str) -> None:
        """Fill unset fields from an encoder's `needs` for `modality`; raise on a conflicting explicit value."""
        for key, value in needs.items():
            current = getattr(self, key)
            if current is None:
                setattr(self, key, value)
            elif current != value:
                raise ValueError(f"{where}.{key} = {current!r} but the {modality} encoder needs {value!r}")


Task = Literal["caption", "shortqa", "normalqa", "ocr", "det", "rea", "conv"]


@dataclass
class DatasetConfig:
    """One dataset of a stage's mixture (docs/reference/chatbridge.md §4.3, §4.4)."""

    builder: str = "caption_json"
    """Registered dataset builder."""
    modalities: list[Modality] = field(default_factory=lambda: ["image"])
    """Media per sample, in placeholder order (e.g. [video, audio] for a video with its sound track)."""
    task: Task = "caption"
    """Stage-1 captioning or a MULTIS task family."""
    annotations: str | None = path_field("an annotation JSON (stage-1 caption list or a MULTIS file)")
    """Annotation file."""
    image_root: str | None = path_field("the folder that image ids are relative to")
    """Image folder."""
    video_root: str | None = path_field("the folder that video ids (files or frame folders) are relative to")
    """Video folder."""
    audio_root: str | None = path_field("the folder that audio ids are relative to")
    """Audio folder."""
    prompts: str | None = path_field("an instruction-template file in the `task_prompt.json` format")
    """Instruction templates (stage 2)."""
    weight: float = 1.0
    """Sampling weight in the mixture."""
    batch_size: int = 2
    """Per-process batch size for steps drawn from this dataset."""
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    """Media preprocessing (field by field over the top-level `processor`)."""
    skip_bad_rows: bool = False
    """Skip and count malformed annotation rows instead of failing at start-up."""


# ----------------------------------------------------------------------------------------------- running


@dataclass
class RunConfig:
    """How to run: optimisation, precision, logging, checkpoints."""

    root: str = "."
    """Folder that relative paths in the config are resolved against."""
    output_dir: str = path_field(
        "a folder for this run's config, logs and checkpoints", default="outputs/run", output=True
    )
    """Where the resolved config, logs and checkpoints go (relative to `root`)."""
    seed: int = 42
    """Base seed (each rank adds its rank)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device; auto = cuda when available."""
    precision: Precision = "bf16"
    """Autocast precision of the trainable path (fp16 adds a GradScaler)."""
    max_steps: int = 10
    """Optimizer steps."""
    init_lr: float = 1e-4
    """Peak learning rate."""
    min_lr: float = 1e-5
    """Final cosine learning rate."""
    warmup_lr: float = 1e-6
    """Learning rate at step 0 of the linear warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to biases, norms and query tokens unless faithful)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step."""
    grad_clip: float | None = 1.0
    """Max gradient norm; None disables clipping (the reference did not clip)."""
    num_workers: int = 0
    """Data-loader workers per process."""
    cpu_threads: int | None = None
    """PyTorch's CPU threads in each process of train.py, evaluate.py, chat.py and demo.py; None = its default (one
    per core). The tiny YAMLs use 1: on a 2-core machine shared with another job, two threads per process made a
    tiny training step ~50x slower (1.9 s against 0.04 s), as the threads of both jobs wait on each other."""
    log_every: int = 1
    """Steps between log lines."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 = only at the end."""
    keep_last: int = 2
    """Checkpoints kept."""
    resume: str | None = None
    """`auto` (newest complete checkpoint in output_dir), a checkpoint folder, or None."""
    tensorboard: bool = False
    """Also log to TensorBoard."""
    wandb_project: str | None = None
    """Log to Weights & Biases under this project (key from the WANDB_API_KEY environment variable)."""
    feature_cache: str | None = path_field(
        "a folder for cached frozen-tower features (filled on first use)", output=True
    )
    """Cache the frozen towers' outputs of deterministic media here and read them instead of encoding again."""
    activation_checkpointing: bool = False
    """Recompute connector and LLM activations in the backward pass."""
    fsdp: bool = False
    """Shard the frozen LLM with FSDP when it does not fit one device."""
    compile: bool = False
    """`torch.compile` every transformer block (LLM, Q-Former, EVA) before training: faster steps after about a
    minute of compiling at the first step."""

    def __post_init__(self) -> None:
        at_least(self, "run", 1, "max_steps", "grad_accum_steps", "log_every", "keep_last")
        at_least(self, "run", 0, "init_lr", "min_lr", "warmup_lr", "warmup_steps", "weight_decay")
        at_least(self, "run", 0, "num_workers", "checkpoint_every")
        require(
            self.cpu_threads is None or self.cpu_threads >= 1, "run.cpu_threads", "be >= 1 or null", self.cpu_threads
        )
        require(
            self.warmup_steps <= self.max_steps,
            "run.warmup_steps",
            f"be <= run.max_steps ({self.max_steps})",
            self.warmup_steps,
        )
        require(self.grad_clip is None or self.grad_clip > 0, "run.grad_clip", "be > 0 or null", self.grad_clip)
        require(
            self.resume in (None, "auto") or bool(self.resume), "run.resume", "be auto, a folder or null", self.resume
        )


@dataclass
class TinyLLMConfig:
    """A tiny LLaMA stand-in for Vicuna, trained on the synthetic world's texts and written to `model.llm.path`."""

    hidden_size: int = 64
    """Width."""
    num_layers: int = 2
    """Layers."""
    num_heads: int = 4
    """Attention heads."""
    vocab_size: int = 512
    """Sentencepiece vocabulary size."""
    pretrain_steps: int = 300
    """Language-model steps on the world's texts before it is frozen."""
    seed: int = 0
    """Seed of its initialisation and batch order."""


@dataclass
class TinyEncodersConfig:
    """Pretrain the preset's tiny towers on the synthetic world and write them to `model.encoders.*.checkpoint`."""

    vision_steps: int = 600
    """AdamW steps of the tiny EVA on the world's training images and video frames."""
    vision_batch_size: int = 64
    """Images or frames per vision step."""
    audio_steps: int = 2000
    """AdamW steps of the tiny BEATs on the world's training fbank segments (its per-token segment count needs more
    than 600; about 60 s on one core, beside the tiny LLM's few minutes)."""
    audio_batch_size: int = 32
    """Segments per audio step."""
    learning_rate: float = 1e-3
    """Peak learning rate of both (5% warmup, cosine to a tenth)."""
    seed: int = 0
    """Seed of the towers' and probes' initialisation and of the batches."""

    def __post_init__(self) -> None:
        at_least(self, "synthetic.tiny_encoders", 1, "vision_steps", "vision_batch_size", "audio_steps")
        at_least(self, "synthetic.tiny_encoders", 1, "audio_batch_size")
        require(self.learning_rate > 0, "synthetic.tiny_encoders.learning_rate", "be > 0", self.learning_rate)


@dataclass
class SyntheticConfig:
    """The synthetic world and its stand-ins for weights that cannot be downloaded (tiny CPU runs)."""

    world: str | None = path_field("a folder for the synthetic world (generated there on first use)", output=True)
    """Generate the deterministic synthetic world here before anything else; None: no synthetic world."""
    seed: int = 0
    """Seed of the world."""
    tiny_llm: TinyLLMConfig | None = None
    """Write a tiny LLaMA that knows the world's language to `model.llm.path` (unless an identical one is there)."""
    tiny_encoders: TinyEncodersConfig | None = None
    """Pretrain tiny EVA and BEATs towers on the world and write them to the encoders' checkpoints (unless there)."""


@dataclass
class TrainConfig:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    """Named datasets of this stage's mixture."""
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    """Preprocessing of every dataset (each dataset's `processor` overrides it) and of evaluation and chat."""
    valor_data_opts: str | None = path_field("the authors' VALOR-style data-opts JSON (docs/reference §4.1)")
    """Datasets from the authors' data-opts JSON, added to `datasets` (relative paths inside it: its own folder)."""
    run: RunConfig = field(default_factory=RunConfig)
    """How to run."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """How the chat, the demo and evaluation generate."""
    demo: DemoSettings = field(default_factory=DemoSettings)
    """The Gradio demo."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Benchmarks for `evaluate.py`."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The synthetic world and stand-in weights (tiny presets)."""

    def __post_init__(self) -> None:
        self.processor = resolve_processor(self.model, self.processor, list(self.model.routes), "processor")
        self.processor.check("processor")
        for name, dataset in self.datasets.items():
            at_least(dataset, f"datasets.{name}", 1, "batch_size")
            require(dataset.weight > 0, f"datasets.{name}.weight", "be > 0", dataset.weight)
            where = f"datasets.{name}.processor"
            dataset.processor = resolve_processor(self.model, dataset.processor, dataset.modalities, where)
            dataset.processor.check(where)


def resolve_processor(
    model: ModelConfig, processor: ProcessorConfig, modalities: list[str], where: str
) -> ProcessorConfig:
    """A copy of `processor` with every field an encoder dictates filled in for `modalities` (see ProcessorConfig).

    Modalities without a route are left alone here; building their dataset reports them.
    """
    resolved = dataclasses.replace(processor)
    for modality in modalities:
        route = model.routes.get(modality)
        if route is not None:
            resolved.resolve(modality, model.encoders[route.encoder].preprocessing(modality), where)
    return resolved
