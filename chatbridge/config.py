"""Typed configuration: every default lives once, here, in dataclasses.

A run YAML has three sections, `model`, `datasets` and `run`, like the authors' configs. `load_config` merges, in
increasing precedence: these dataclass defaults < the model's default YAML (chosen by `model.arch` and
`model.model_type`) < the run YAML < `--options key=value` overrides; see `chatbridge/config_loading.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Modality = Literal["image", "video", "audio"]
Precision = Literal["fp32", "bf16", "fp16"]

# Fields whose value is a file or folder carry metadata {"path": what to put there}; the loader resolves them
# against the project root and reports placeholders such as "/path/to/vicuna" by key and by this text.


def path_field(what: str, default: str | None = None) -> str | None:
    """A path-valued field; `what` tells the user what belongs there when it is unset."""
    return field(default=default, metadata={"path": what})


@dataclass
class VisionEncoderConfig:
    """EVA-ViT (timm's Eva) + `ln_vision`; defaults are EVA-ViT-g as used by BLIP-2 and ChatBridge (spec 1.2)."""

    name: str = "eva_vit_g"
    """Registered encoder builder."""
    image_size: int = 224
    """Input resolution; the position embedding of a checkpoint is interpolated to it."""
    patch_size: int = 14
    """Patch size in pixels."""
    width: int = 1408
    """Token width (D_v)."""
    depth: int = 39
    """Blocks kept: EVA-CLIP-g has 40, ChatBridge uses the penultimate layer's output."""
    num_heads: int = 16
    """Attention heads."""
    mlp_ratio: float = 4.3637
    """MLP hidden = int(width * mlp_ratio) (6144 for EVA-g)."""
    layer_norm_eps: float = 1e-6
    """Eps of the blocks' LayerNorms."""
    ln_vision_eps: float = 1e-5
    """Eps of `ln_vision` (LAVIS uses the PyTorch default, not the ViT's 1e-6)."""
    checkpoint: str | None = path_field("the LAVIS EVA-ViT-g weights `eva_vit_g.pth` (a raw state dict)")
    """EVA weights; None keeps the random init (tiny presets)."""
    frozen: bool = True
    """Frozen: no grad, eval mode kept, run under torch.no_grad."""
    precision: Precision = "bf16"
    """Compute precision of the frozen tower (the reference used fp16 on GPU)."""


@dataclass
class AudioEncoderConfig:
    """BEATs + `ln_audio`; defaults are BEATs iter3+ AS2M (spec 1.5). A checkpoint's own `cfg` takes precedence."""

    name: str = "beats"
    """Registered encoder builder."""
    num_mel_bins: int = 64
    """Fbank bins fed to BEATs: 64 for the released ChatBridge weights (BEATs itself was pre-trained on 128)."""
    patch_size: int = 16
    """Conv patch size over (time, frequency)."""
    embed_dim: int = 512
    """Patch-embedding width before `post_extract_proj`."""
    width: int = 768
    """Encoder width (D_a)."""
    depth: int = 12
    """Transformer layers."""
    num_heads: int = 12
    """Attention heads."""
    ffn_dim: int = 3072
    """Feed-forward width."""
    conv_pos: int = 128
    """Kernel of the convolutional position embedding."""
    conv_pos_groups: int = 16
    """Groups of the convolutional position embedding."""
    num_buckets: int = 320
    """Relative-position buckets."""
    max_distance: int = 800
    """Relative-position maximum distance."""
    deep_norm: bool = True
    """Residual scaled by (2 * depth) ** 0.25; has no parameters, so it must come from the checkpoint cfg."""
    layer_norm_first: bool = False
    """Pre-LN (True) or post-LN (False)."""
    gru_rel_pos: bool = True
    """Gated relative position bias."""
    ln_audio_eps: float = 1e-5
    """Eps of `ln_audio`."""
    checkpoint: str | None = path_field("an official BEATs checkpoint `.pt` with keys `cfg` and `model`")
    """BEATs weights; None keeps the random init (tiny presets)."""
    frozen: bool = True
    """Frozen: no grad, eval mode kept, run under torch.no_grad."""
    precision: Precision = "bf16"
    """Compute precision of the frozen tower."""


@dataclass
class PerceiverConfig:
    """The connector between encoders and the LLM; defaults are ChatBridge's shared BLIP-2 Q-Former (spec 1.7)."""

    name: str = "shared_qformer"
    """Registered connector: shared_qformer | qformer_per_modality | linear | mlp."""
    num_layers: int = 12
    """Q-Former layers."""
    hidden_size: int = 768
    """Q-Former width (D_q)."""
    num_heads: int = 12
    """Q-Former attention heads."""
    intermediate_size: int = 3072
    """Q-Former feed-forward width."""
    cross_attention_frequency: int = 2
    """Cross-attention in every layer whose index is a multiple of this."""
    num_query_tokens: int = 32
    """Learnable queries per query set (image queries serve images and videos)."""
    dropout: float = 0.0
    """Hidden and attention dropout (the reference: 0 in stage 1, 0.1 in stage 2)."""
    layer_norm_eps: float = 1e-12
    """Q-Former LayerNorm eps (BERT)."""
    audio_query_init: Literal["zeros", "normal"] = "zeros"
    """Initial audio queries: zeros as in the reference, or N(0, 0.02) like the image queries."""
    temporal_embeddings: bool = False
    """Add a learned embedding per frame / audio segment before the Q-Former (`multi_sample` in the reference)."""
    max_frames: int = 4
    """Frames covered by the temporal embedding."""
    max_audio_segments: int = 2
    """Audio segments covered by the temporal embedding."""
    blip2_checkpoint: str | None = path_field(
        "the LAVIS BLIP-2 checkpoint `blip2_pretrained_flant5xxl.pth` (its `model` holds the Q-Former)"
    )
    """BLIP-2 weights that initialise the Q-Former, image queries and `ln_vision`; None keeps the random init."""


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
    """The frozen causal language model and its tokenizer."""

    name: str = "hf_causal_lm"
    """Registered LLM builder: hf_causal_lm (a local Hugging Face folder) or tiny_llama (generated, tiny)."""
    path: str | None = path_field(
        "a local Hugging Face causal-LM folder (config.json, tokenizer files, weights), e.g. Vicuna-13B v0",
        default="/path/to/vicuna-13b",
    )
    """The LLM folder (hf_causal_lm) or where the tiny one is generated (tiny_llama)."""
    precision: Precision = "bf16"
    """Weight dtype of the frozen LLM (the reference used fp16)."""
    frozen: bool = True
    """Freeze the LLM's own weights."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Optional LoRA adapters."""
    hidden_size: int = 32
    """tiny_llama only: width."""
    num_layers: int = 2
    """tiny_llama only: layers."""
    num_heads: int = 4
    """tiny_llama only: attention heads."""
    vocab_size: int = 128
    """tiny_llama only: sentencepiece vocabulary size."""
    corpus: str | None = path_field("a synthetic world folder whose texts teach the tiny LLM its language")
    """tiny_llama only: train the tokenizer and pre-train the LM on this world's texts (None: a fixed corpus)."""
    pretrain_steps: int = 0
    """tiny_llama only: language-model steps on the corpus before the LLM is frozen."""


@dataclass
class FaithfulConfig:
    """Quirks of the reference code (spec section 8), each off by default and on in the `faithful` preset."""

    bos_mask_on_padded_rows: bool = False
    """Stage 2: copy BOS's attention-mask value from the first left-padded column, masking BOS on shorter rows."""
    zero_grad_keep_zeros: bool = False
    """`zero_grad(set_to_none=False)`: unused modality parameters keep zero grads and still get AdamW updates."""
    weight_decay_everything: bool = False
    """Decay biases, norms and query tokens too (the reference decays every trainable tensor)."""
    extra_segment_on_exact_multiple: bool = False
    """Fbank padding adds a whole zero segment when the length is an exact multiple of the segment length."""


@dataclass
class ModelConfig:
    """The ChatBridge model: frozen encoders, a connector, a projection, a frozen LLM."""

    arch: str = "chatbridge"
    """Registered model builder."""
    model_type: str = "vicuna13b"
    """Preset: selects the model's default YAML `chatbridge/configs/models/{arch}_{model_type}.yaml`."""
    vision: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    """Image/video encoder."""
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    """Audio encoder."""
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    """Connector between encoders and the LLM."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Language model."""
    checkpoint: str | None = path_field(
        "a ChatBridge checkpoint: the released `.pth` or a folder/`.safetensors` written by train.py"
    )
    """Weights loaded after the parts' own checkpoints (stage-2 init, evaluation, demo); None for none."""
    trainable: list[str] = field(default_factory=lambda: ["perceiver.*", "audio_adapter.*", "llm_proj.*"])
    """Glob patterns of parameter names that train; everything else is frozen."""
    max_txt_len: int = 32
    """Positions per sample: caption tokens in stage 1 (reference: 32), text and query slots in stage 2 (220)."""
    faithful: FaithfulConfig = field(default_factory=FaithfulConfig)
    """Reference quirks (off unless the faithful preset turns them on)."""
    init_seed: int = 0
    """Seed of the parts' random initialisation; frozen random towers (tiny presets) are rebuilt from it."""

    def __post_init__(self) -> None:
        if self.llm.lora.rank > 0 and not any("lora" in pattern for pattern in self.trainable):
            raise ValueError(
                "model.llm.lora.rank > 0 but no model.trainable pattern selects the adapters: add 'llm.*lora_*'"
            )


@dataclass
class ProcessorConfig:
    """Media preprocessing shared by datasets, evaluation and the demo (spec 1.4, 1.11, 4.5)."""

    image_size: int = 224
    """Square resize target (aspect ratio not kept, as in the reference)."""
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    """Normalisation mean (CLIP)."""
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    """Normalisation std (CLIP)."""
    antialias: bool = False
    """Antialiased resize (the reference's torchvision 0.13 did not antialias tensor resizes)."""
    augment: bool = False
    """Train-time RandomResizedCrop + flip."""
    num_frames: int = 4
    """Frames per video."""
    frame_sampling: Literal["segment_random", "segment_middle", "uniform"] | None = None
    """Frame choice; None = one random frame per segment in training, the middle one at evaluation."""
    sample_rate: int = 16000
    """Audio is resampled to this rate."""
    num_mel_bins: int = 64
    """Fbank bins (64 for the released weights)."""
    target_length: int = 1024
    """Fbank frames per audio segment."""
    num_audio_segments: int = 1
    """Audio segments per clip."""
    fbank_mean: float = 15.41663
    """Fbank normalisation mean (BEATs AudioSet statistics)."""
    fbank_std: float = 6.55582
    """Fbank normalisation std (divided by 2 * std, as BEATs does)."""


Task = Literal["caption", "shortqa", "normalqa", "ocr", "det", "rea", "conv"]


@dataclass
class DatasetConfig:
    """One dataset of a stage's mixture (spec 4.3, 4.4)."""

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
    """Media preprocessing."""
    skip_bad_rows: bool = False
    """Skip and count malformed annotation rows instead of failing at start-up."""


@dataclass
class RunConfig:
    """How to run: optimisation, precision, logging, checkpoints."""

    root: str = "."
    """Folder that relative paths in the config are resolved against."""
    output_dir: str = path_field("a folder for this run's config, logs and checkpoints", default="outputs/run")
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
    feature_cache: str | None = path_field("a folder for cached frozen-tower features (filled on first use)")
    """Cache the frozen towers' outputs of deterministic media here and read them instead of encoding again."""
    activation_checkpointing: bool = False
    """Recompute Q-Former and LLM activations in the backward pass."""
    fsdp: bool = False
    """Shard the frozen LLM with FSDP when it does not fit one device."""


@dataclass
class TrainConfig:
    """A whole run: the YAML's three sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    """Named datasets of this stage's mixture."""
    valor_data_opts: str | None = path_field("the authors' VALOR-style data-opts JSON (spec 4.1)")
    """Datasets from the authors' data-opts JSON, added to `datasets` (relative paths inside it: its own folder)."""
    run: RunConfig = field(default_factory=RunConfig)
    """How to run."""
    synthetic_world: str | None = path_field("a folder for the synthetic world (generated there on first use)")
    """Generate the deterministic synthetic world here before building datasets (tiny CPU runs)."""
    synthetic_world_seed: int = 0
    """Seed of the synthetic world."""

    def __post_init__(self) -> None:
        for name, dataset in self.datasets.items():
            _check_dataset_fits_model(name, dataset, self.model)


def _check_dataset_fits_model(name: str, dataset: DatasetConfig, model: ModelConfig) -> None:
    """A dataset's preprocessing must produce what the model's encoders take."""
    processor = dataset.processor
    if {"image", "video"} & set(dataset.modalities) and processor.image_size != model.vision.image_size:
        raise ValueError(
            f"datasets.{name}.processor.image_size = {processor.image_size} but model.vision.image_size = "
            f"{model.vision.image_size}: set them equal"
        )
    if "audio" in dataset.modalities and processor.num_mel_bins != model.audio.num_mel_bins:
        raise ValueError(
            f"datasets.{name}.processor.num_mel_bins = {processor.num_mel_bins} but model.audio.num_mel_bins = "
            f"{model.audio.num_mel_bins}: set them equal"
        )
