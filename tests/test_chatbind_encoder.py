"""ChatBind's ImageBind encoder and `item_mean` connector (docs/reference/chatbind.md §2.2)."""

from __future__ import annotations

import math

import pytest
import torch

from chatbridge.models.connectors.pooled import ItemMean
from chatbridge.models.encoders.imagebind import (
    UNUSED_PREFIXES,
    ImageBindConfig,
    build_imagebind,
    official_state_dict,
)
from tests.fixtures.imagebind import TinyImageBind, write_tiny_imagebind_checkpoint
from tests.fixtures.imagebind import official_state_dict as fixture_state_dict

# The embeddings of Meta's own `ImageBindModel` (facebookresearch/ImageBind model code, as packaged in the
# `imagebind-unofficial` 0.1.1 wheel) for `write_tiny_imagebind_checkpoint(TinyImageBind(), seed=0)` and the inputs
# of `_inputs()`, computed once in eval mode (first six values; video and audio averaged over clips upstream).
GOLDEN = {
    "image": [0.0228, -0.114286, -0.386427, -0.306573, 0.157651, -0.278799],
    "video": [0.059209, -0.058699, -0.372435, -0.287081, 0.158103, -0.31729],
    "audio": [-5.611431, -3.619045, -0.811197, -6.848898, 9.115009, 0.189102],
}
GOLDEN_NORMS = {"image": 1.0, "video": 0.9984637498855591, "audio": 19.516216278076172}


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(1, 3, 224, 224, generator=generator),
        "video": torch.randn(2, 3, 2, 224, 224, generator=generator),  # two clips of one video
        "audio": torch.randn(3, 1, 32, 204, generator=generator),  # three clips of one track
    }


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("imagebind") / "imagebind_huge.pth"
    write_tiny_imagebind_checkpoint(path)
    return path


def test_official_layout_checkpoint_loads_with_no_missing_or_unexpected_keys(tiny_file):
    encoder = build_imagebind(TinyImageBind().config())
    encoder.load_checkpoint(tiny_file)  # strict: raises on any missing or unexpected key
    written = torch.load(tiny_file, weights_only=True)
    used = {key: value for key, value in written.items() if not key.startswith(UNUSED_PREFIXES)}
    loaded = official_state_dict(encoder)
    assert loaded.keys() == used.keys()  # 0 missing, 0 unexpected: every vision/audio entry, nothing else
    assert all(torch.equal(loaded[key], used[key]) for key in used)
    assert len(written) - len(used) > 0  # the text, depth, thermal and IMU entries were there and skipped


def test_embeddings_equal_metas_imagebind(tiny_file):
    encoder = build_imagebind(TinyImageBind().config()).eval()
    encoder.load_checkpoint(tiny_file)
    with torch.no_grad():
        for modality, items in _inputs().items():
            embedding = encoder(items, modality)  # (clips, 1, E): one token per item
            assert embedding.shape == (len(items), 1, TinyImageBind().embed_dim)
            mean = embedding[:, 0].mean(0)  # upstream averages clips inside the model
            torch.testing.assert_close(mean[:6], torch.tensor(GOLDEN[modality]), atol=2e-5, rtol=0)
            assert mean.norm().item() == pytest.approx(GOLDEN_NORMS[modality], abs=1e-5)


def test_loader_names_missing_and_unexpected_keys(tmp_path):
    state_dict = fixture_state_dict()
    del state_dict["modality_trunks.vision.blocks.1.mlp.fc2.bias"]
    state_dict["modality_trunks.vision.extra.weight"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as error:
        build_imagebind(TinyImageBind().config()).load_checkpoint(tmp_path / "broken.pth")
    message = str(error.value)
    assert "trunks.vision.blocks.1.mlp.fc2.bias" in message and "modality_trunks.vision.extra.weight" in message


def test_loader_refuses_a_checkpoint_of_another_size(tiny_file):
    with pytest.raises(ValueError, match="does not fit"):
        build_imagebind(TinyImageBind(vision_width=24).config()).load_checkpoint(tiny_file)


def test_frozen_encoder_is_deterministic_and_the_faithful_train_mode_is_not(tiny_file):
    audio = _inputs()["audio"].repeat(10, 1, 1, 1)  # 30 clips: some drop-path draw differs with certainty
    outputs = {}
    for train_mode in (False, True):
        encoder = build_imagebind(TinyImageBind().config(train_mode=train_mode))
        encoder.load_checkpoint(tiny_file)
        encoder.eval()  # what ChatBridgeModel does to frozen parts
        with torch.no_grad():
            outputs[train_mode] = [encoder(audio, "audio") for _ in range(2)]
    assert torch.equal(*outputs[False])
    assert not torch.equal(*outputs[True])  # audio drop-path stays active, as in the reference's list-held encoder


def test_preprocessing_is_the_references(tiny_file):
    cfg = ImageBindConfig()
    assert cfg.preprocessing("image")["image_processor"] == "imagebind_image"
    assert cfg.preprocessing("video")["frames_per_clip"] == 2
    audio = cfg.preprocessing("audio")
    assert (audio["num_mel_bins"], audio["clip_fbank_frames"], audio["fbank_mean"], audio["fbank_std"]) == (
        128,
        204,
        -4.268,
        9.138,
    )
    assert cfg.num_tokens("video", (3, 2, 224, 224)) == 1


def test_full_size_trunks_on_the_meta_device_have_the_references_parameter_counts():
    with torch.device("meta"):
        encoder = build_imagebind(ImageBindConfig())
    vision = sum(p.numel() for p in encoder.trunks.vision.parameters())
    audio = sum(p.numel() for p in encoder.trunks.audio.parameters())
    assert vision == 632_829_440  # §2.2.4: the vision part of imagebind_huge.pth
    assert audio + 1 == 86_235_649  # + the log_logit_scale buffer = the audio part's elements
    assert len(official_state_dict(encoder)) == 392 + 177  # vision and audio entries of the file


def test_item_mean_keeps_the_items_norm_and_the_faithful_mean_shrinks():
    torch.manual_seed(0)
    clips = torch.nn.functional.normalize(torch.randn(2, 15, 1, 8), dim=-1) * torch.tensor([1.0, 20.0]).view(2, 1, 1, 1)
    fixed, plain = ItemMean(8, renormalize=True)(clips, None), ItemMean(8, renormalize=False)(clips, None)
    assert fixed.shape == plain.shape == (2, 1, 8)
    torch.testing.assert_close(fixed.norm(dim=-1).flatten(), torch.tensor([1.0, 20.0]))
    torch.testing.assert_close(plain, clips.mean(1))  # the reference's mean, no re-normalisation (§2.2.2)
    assert (plain.norm(dim=-1) < fixed.norm(dim=-1)).all()
    image = clips[:, :1]
    torch.testing.assert_close(ItemMean(8, renormalize=True)(image, None), image[:, 0])  # one item: unchanged
    assert math.isclose(float(torch.cosine_similarity(fixed, plain, dim=-1).min()), 1.0, rel_tol=1e-6)
