"""Golden token ids, label masks and soft-token positions (docs/reference/chatbridge.md §2.2, §2.3.2), on the tiny
sentencepiece model.

Expected ids are built independently: `SentencePieceProcessor.encode` on each segment the reference tokenized
separately, glued with hand-written structure (which positions are soft-token slots, which are supervised).
`collate` always left-pads (`[BOS][pad][content]`) and returns each modality's soft-token positions.
"""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch

from chatbridge.data import templates
from chatbridge.data.batch import IGNORE_INDEX
from chatbridge.data.collate import collate
from chatbridge.data.sample import Medium, MultimodalSample
from chatbridge.data.tokenize import EncodedSample, encode_conversation, encode_prompt, encode_stage1, split_targets
from tests.fixtures.llama import tiny_llama_folder

Q = 4  # query tokens per media block (32 in ChatBridge)
UNK, BOS, EOS = 0, 1, 2
X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, tokenizer = tiny_llama_folder(tmp_path_factory.mktemp("llm"))
    return tokenizer, spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))


def prompt(sp, text: str) -> tuple[list[int], list[int]]:
    ids = sp.encode(text)
    return ids, [X] * len(ids)


def target(sp, text: str) -> tuple[list[int], list[int]]:
    ids = sp.encode(text)
    return ids, ids


def queries(n: int = Q) -> tuple[list[int], list[int]]:
    return [UNK] * n, [X] * n


def glue(*parts: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    return [i for ids, _ in parts for i in ids], [label for _, labels in parts for label in labels]


MEDIA_SHAPES = {"image": (3, 2, 2), "video": (2, 3, 2, 2), "audio": (1, 4, 2)}
"""Small stand-in media tensors: collate only stacks them."""


def with_media(
    encoded: EncodedSample, modalities: tuple[str, ...], index: int = 0, source: str = "s"
) -> MultimodalSample:
    """`encoded` with one stand-in medium per modality, filled with `index * 10 + m` so that order shows."""
    media = [
        Medium(modality, torch.full(MEDIA_SHAPES[modality], float(index * 10 + number)))
        for number, modality in enumerate(modalities)
    ]
    return MultimodalSample(encoded, media, source, index)


def slots(row: int, width: int, encoded: EncodedSample, block: int) -> list[int]:
    """Flat (B * L) positions of block `block` of the sample in row `row`, left-padded to `width` behind BOS."""
    slot, length = encoded.media_spans[block]
    start = row * width + width - len(encoded.input_ids) + slot
    return list(range(start, start + length))


def test_literal_ids_catch_tokenizer_changes(tiny) -> None:
    tokenizer, _ = tiny
    sample = encode_stage1("red\n###", tokenizer, num_soft_tokens=2, max_txt_len=32)
    assert sample.input_ids == [0, 0, 40, 51, 42, 50, 3, 11]
    assert sample.labels == [X, X, 40, 51, 42, 50, 3, 11]


def test_stage1_caption(tiny) -> None:
    tokenizer, sp = tiny
    caption = templates.render_caption("A red circle.")
    sample = encode_stage1(caption, tokenizer, Q, max_txt_len=32)
    assert (sample.input_ids, sample.labels) == glue(queries(), target(sp, "a red circle.\n"))
    assert sample.media_spans == [(0, Q)]


def test_stage1_truncates_caption_tokens_only_and_masks_genuine_eos(tiny) -> None:
    tokenizer, sp = tiny
    assert (
        encode_stage1("a red circle.\n", tokenizer, Q, max_txt_len=3).input_ids
        == [UNK] * Q + sp.encode("a red circle.\n")[:3]
    )
    # "</s>" is a special token: its own chunk, id 2 = pad, so the reference masks it like padding
    sample = encode_stage1("red</s>\n", tokenizer, Q, max_txt_len=32)
    assert sample.input_ids == [UNK] * Q + sp.encode("red") + [EOS] + sp.encode("\n")
    assert sample.labels == [X] * Q + sp.encode("red") + [X] + sp.encode("\n")


def test_stage2_single_turn_vqa(tiny) -> None:
    tokenizer, sp = tiny
    text = templates.render_single_turn(("image",), "What is the color of the circle?", "red")
    sample = encode_conversation(text, tokenizer, [Q], max_txt_len=220)
    expected = glue(
        prompt(sp, "###Human: Given following image: "),
        queries(),
        prompt(sp, ".###Human: What is the color of the circle?###Assistant:"),
        target(sp, "red\n###"),
    )
    assert (sample.input_ids, sample.labels) == expected
    assert sample.media_spans == [(len(sp.encode("###Human: Given following image: ")), Q)]


def test_stage2_multi_turn_conversation(tiny) -> None:
    tokenizer, sp = tiny
    messages = [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A circle."},
        {"from": "human", "value": "What color?"},
        {"from": "gpt", "value": "Red."},
    ]
    text = templates.render_conversation(("image",), messages)
    sample = encode_conversation(text, tokenizer, [Q], max_txt_len=220)
    expected = glue(
        prompt(sp, "###Human: Given following image: "),
        queries(),
        prompt(sp, ".###Human: What is it?###Assistant:"),
        target(sp, "A circle.###"),
        prompt(sp, "Human: What color?###Assistant:"),
        target(sp, "Red.###"),
    )
    assert (sample.input_ids, sample.labels) == expected


def test_stage2_video_and_audio_blocks(tiny) -> None:
    tokenizer, sp = tiny
    text = templates.render_single_turn(("video", "audio"), "What is happening?", "a dog barks")
    sample = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=220)
    head = sp.encode("###Human: Given following video: ")
    middle = sp.encode(" and its background audio: ")
    expected = glue(
        prompt(sp, "###Human: Given following video: "),
        queries(),
        prompt(sp, " and its background audio: "),
        queries(),
        prompt(sp, ".###Human: What is happening?###Assistant:"),
        target(sp, "a dog barks\n###"),
    )
    assert (sample.input_ids, sample.labels) == expected
    assert sample.media_spans == [(len(head), Q), (len(head) + Q + len(middle), Q)]


def test_truncation_cuts_the_answer_but_refuses_to_cut_a_medium(tiny) -> None:
    tokenizer, sp = tiny
    text = templates.render_single_turn(("video", "audio"), "What?", "red")
    full = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=220)
    answer = sp.encode("red\n###")
    cut = len(full.input_ids) - 2
    sample = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=cut)
    assert sample.input_ids == full.input_ids[:cut]
    assert [label for label in sample.labels if label != X] == answer[:-2]

    (video_start, _), (audio_start, _) = full.media_spans
    audio_end = audio_start + Q
    right_after_audio = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=audio_end)
    assert right_after_audio.media_spans == [(video_start, Q), (audio_start, Q)]
    assert right_after_audio.input_ids == full.input_ids[:audio_end]
    assert all(label == X for label in right_after_audio.labels)
    for max_txt_len in (audio_start + 1, audio_start):  # inside the audio block, and just before it
        message = (
            f"model.max_txt_len = {max_txt_len} cuts a medium's soft tokens (the last ends at position {audio_end}); "
            "raise model.max_txt_len"
        )
        with pytest.raises(ValueError) as caught:
            encode_conversation(text, tokenizer, [Q, Q], max_txt_len=max_txt_len)
        assert str(caught.value) == message


def test_placeholder_count_must_match_blocks(tiny) -> None:
    tokenizer, _ = tiny
    with pytest.raises(ValueError, match="text has 1 <query> but 2 media"):
        encode_conversation(templates.render_single_turn(("image",), "q", "a"), tokenizer, [Q, Q], 220)


def test_split_targets_follows_the_reference_walk() -> None:
    assert split_targets(".###Human: q###Assistant:a\n###") == [
        (".###Human: q###Assistant:", False),
        ("a\n###", True),
    ]
    assert split_targets(".###Human: q###Assistant:a###Human: q2###Assistant:") == [
        (".###Human: q###Assistant:", False),
        ("a###", True),
        ("Human: q2###Assistant:", False),
    ]
    assert split_targets("x###Assistant: unfinished") == [("x###Assistant:", False), (" unfinished", False)]
    assert split_targets(".###Human: no answer") == [(".###Human: no answer", False)]


def test_inference_prompt_first_turn_matches_training_prompt(tiny) -> None:
    tokenizer, sp = tiny
    modalities = ("image",)
    chat = templates.render_chat_prompt(
        [
            (templates.HUMAN, templates.media_message(modalities)),
            (templates.HUMAN, "What color?"),
            (templates.ASSISTANT, None),
        ]
    )
    sample = encode_prompt(chat, tokenizer, [Q])
    training = encode_conversation(templates.render_single_turn(modalities, "What color?", "red"), tokenizer, [Q], 220)
    assert sample.input_ids == training.input_ids[: len(sample.input_ids)]
    assert len(training.input_ids) - len(sample.input_ids) == len(sp.encode("red\n###"))
    assert set(sample.labels) == {X}


# Hand-made samples for the padding contract: soft-token slots are the leading UNKs.
LONG = EncodedSample(input_ids=[UNK, UNK, 5, 6, 7], labels=[X, X, X, 6, 7], media_spans=[(0, 2)])
SHORT = EncodedSample(input_ids=[UNK, UNK, 8], labels=[X, X, 8], media_spans=[(0, 2)])


def test_collate_stage1_left_pads_and_stacks_media() -> None:
    samples = [with_media(LONG, ("image",), 0), with_media(SHORT, ("image",), 1)]
    batch = collate(samples, pad_id=EOS, bos_id=BOS, bos_mask_on_padded_rows=False)
    assert batch.input_ids.tolist() == [[BOS, UNK, UNK, 5, 6, 7], [BOS, EOS, EOS, UNK, UNK, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1]]
    assert batch.labels.tolist() == [[X, X, X, X, 6, 7], [X, X, X, X, X, 8]]
    assert batch.num_supervised_tokens == 3
    assert {m: p.tolist() for m, p in batch.soft_token_positions.items()} == {"image": [[1, 2], [9, 10]]}
    assert torch.equal(batch.media["image"], torch.stack([samples[0].media[0].tensor, samples[1].media[0].tensor]))
    assert batch.features == {}


@pytest.mark.parametrize(("quirk", "short_bos"), [(False, 1), (True, 0)])
def test_collate_left_padding_and_bos_quirk(quirk: bool, short_bos: int) -> None:
    samples = [with_media(LONG, ("image",), 0), with_media(SHORT, ("image",), 1)]
    batch = collate(samples, pad_id=EOS, bos_id=BOS, bos_mask_on_padded_rows=quirk)
    assert batch.input_ids.tolist() == [[BOS, UNK, UNK, 5, 6, 7], [BOS, EOS, EOS, UNK, UNK, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [short_bos, 0, 0, 1, 1, 1]]
    assert batch.labels.tolist() == [[X, X, X, X, 6, 7], [X, X, X, X, X, 8]]
    assert batch.soft_token_positions["image"].tolist() == [[1, 2], [9, 10]]


def test_bos_quirk_is_a_no_op_without_padded_rows() -> None:
    samples = [with_media(LONG, ("image",), 0), with_media(LONG, ("image",), 1)]
    batch = collate(samples, pad_id=EOS, bos_id=BOS, bos_mask_on_padded_rows=True)
    assert batch.attention_mask[:, 0].tolist() == [1, 1]


def test_soft_token_positions_hit_exactly_the_placeholder_slots(tiny) -> None:
    tokenizer, _ = tiny
    texts = [
        templates.render_single_turn(("video", "audio"), "What is happening?", "a dog barks"),
        templates.render_single_turn(("image",), "What color?", "red"),
    ]
    samples = [
        with_media(encode_conversation(texts[0], tokenizer, [Q, Q], 220), ("video", "audio"), 0),
        with_media(encode_conversation(texts[1], tokenizer, [Q], 220), ("image",), 1),
    ]
    batch = collate(samples, pad_id=EOS, bos_id=BOS, bos_mask_on_padded_rows=True)
    B, L = batch.input_ids.shape
    positions = batch.soft_token_positions
    assert {m: tuple(p.shape) for m, p in positions.items()} == {"video": (1, Q), "audio": (1, Q), "image": (1, Q)}
    every = sorted(int(i) for p in positions.values() for i in p.view(-1))
    assert len(set(every)) == len(every)
    assert (batch.input_ids.view(-1) == UNK).nonzero().view(-1).tolist() == every

    # The model's splice puts block i of a modality at row i of that modality's positions.
    D = 3
    soft = {m: torch.arange(Q * D, dtype=torch.float).view(1, Q, D) + 100 * n for n, m in enumerate(positions)}
    embeds = torch.zeros(B, L, D)
    for modality, flat in positions.items():
        embeds.view(B * L, D)[flat.view(-1)] = soft[modality].view(-1, D)
    row1_start = L - len(samples[1].encoded.input_ids) + samples[1].encoded.media_spans[0][0]
    assert torch.equal(embeds[1, row1_start : row1_start + Q], soft["image"][0])


def test_positions_and_media_grouped_per_modality_for_the_model(tiny) -> None:
    tokenizer, _ = tiny
    modalities = [("video", "audio"), ("audio",), ("video",)]
    encoded = [
        encode_conversation(templates.render_single_turn(m, "What?", "red"), tokenizer, [Q] * len(m), 220)
        for m in modalities
    ]
    samples = [with_media(e, m, index) for index, (e, m) in enumerate(zip(encoded, modalities, strict=True))]
    batch = collate(samples, pad_id=EOS, bos_id=BOS, bos_mask_on_padded_rows=False)
    L = batch.input_ids.shape[1]
    # blocks in batch order: video0, audio0, audio1, video2
    assert set(batch.soft_token_positions) == set(batch.media) == {"video", "audio"}
    assert batch.soft_token_positions["video"].tolist() == [slots(0, L, encoded[0], 0), slots(2, L, encoded[2], 0)]
    assert batch.soft_token_positions["audio"].tolist() == [slots(0, L, encoded[0], 1), slots(1, L, encoded[1], 0)]
    assert torch.equal(batch.media["video"], torch.stack([samples[0].media[0].tensor, samples[2].media[0].tensor]))
    assert torch.equal(batch.media["audio"], torch.stack([samples[0].media[1].tensor, samples[1].media[0].tensor]))
    wrong = MultimodalSample(encoded[0], samples[2].media, "s", 7)  # two placeholders, one medium
    with pytest.raises(ValueError, match=r"s\[7\]: 1 media but 2 placeholders"):
        collate([samples[0], wrong], pad_id=EOS, bos_id=BOS)


def test_a_block_cut_by_truncation_is_refused_when_encoding(tiny) -> None:
    tokenizer, _ = tiny
    text = templates.render_single_turn(("image",), "What?", "red")
    whole = encode_conversation(text, tokenizer, [Q], 220)
    start = whole.media_spans[0][0]
    with pytest.raises(ValueError, match=f"max_txt_len = {start + 1} cuts a medium's soft tokens"):
        encode_conversation(text, tokenizer, [Q], start + 1)


def test_cached_features_go_to_features_and_may_not_mix_with_media() -> None:
    features = torch.ones(1, 5, 3)  # (S, L, D) encoder output
    cached = MultimodalSample(LONG, [Medium("image", features, cached=True)], "cached", 0)
    also_cached = MultimodalSample(SHORT, [Medium("image", 2 * features, cached=True)], "cached", 1)
    batch = collate([cached, also_cached], EOS, BOS)
    assert batch.media == {}
    assert torch.equal(batch.features["image"], torch.stack([features, 2 * features]))
    assert batch.soft_token_positions["image"].tolist() == [[1, 2], [9, 10]]
    same_shape = MultimodalSample(SHORT, [Medium("image", features)], "s", 1)
    with pytest.raises(ValueError, match=r"image media both cached and not in one batch \(cached\[0\] vs s\[1\]\)"):
        collate([cached, same_shape], EOS, BOS)


def test_only_assistant_tokens_are_supervised_in_a_batch(tiny) -> None:
    tokenizer, sp = tiny
    text = templates.render_single_turn(("audio",), "Describe the audio.", "a dog barks")
    sample = with_media(encode_conversation(text, tokenizer, [Q], 220), ("audio",))
    batch = collate([sample], EOS, BOS, bos_mask_on_padded_rows=False)
    assert batch.labels[batch.labels != X].tolist() == sp.encode("a dog barks\n###")


def test_collate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        collate([], EOS, BOS, False)
