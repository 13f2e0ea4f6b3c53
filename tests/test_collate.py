"""Golden token ids, label masks and placeholder positions (spec 2.2, 2.3.2), on the tiny sentencepiece model.

Expected ids are built independently: `SentencePieceProcessor.encode` on each segment the reference tokenized
separately, glued with hand-written structure (which positions are queries, which are supervised).
"""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch

from chatbridge.data import templates
from chatbridge.data.collate import (
    IGNORE_INDEX,
    EncodedSample,
    collate,
    encode_conversation,
    encode_prompt,
    encode_stage1,
    query_positions_by_modality,
    split_targets,
)
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


def test_literal_ids_catch_tokenizer_changes(tiny) -> None:
    tokenizer, _ = tiny
    sample = encode_stage1("red\n###", tokenizer, num_query_tokens=2, max_txt_len=32)
    assert sample.input_ids == [0, 0, 40, 51, 42, 50, 3, 11]
    assert sample.labels == [X, X, 40, 51, 42, 50, 3, 11]


def test_stage1_caption(tiny) -> None:
    tokenizer, sp = tiny
    caption = templates.render_caption("A red circle.")
    sample = encode_stage1(caption, tokenizer, Q, max_txt_len=32)
    assert (sample.input_ids, sample.labels) == glue(queries(), target(sp, "a red circle.\n"))
    assert sample.query_spans == [(0, Q)]


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
    assert sample.query_spans == [(len(sp.encode("###Human: Given following image: ")), Q)]


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
    assert sample.query_spans == [(len(head), Q), (len(head) + Q + len(middle), Q)]


def test_truncation_cuts_the_answer_and_query_blocks(tiny) -> None:
    tokenizer, sp = tiny
    text = templates.render_single_turn(("video", "audio"), "What?", "red")
    full = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=220)
    answer = sp.encode("red\n###")
    cut = len(full.input_ids) - 2
    sample = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=cut)
    assert sample.input_ids == full.input_ids[:cut]
    assert [label for label in sample.labels if label != X] == answer[:-2]

    (video_start, _), (audio_start, _) = full.query_spans
    inside_audio = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=audio_start + 1)
    assert inside_audio.query_spans == [(video_start, Q), (audio_start, 1)]
    assert all(label == X for label in inside_audio.labels)
    before_audio = encode_conversation(text, tokenizer, [Q, Q], max_txt_len=audio_start)
    assert before_audio.query_spans == [(video_start, Q), (audio_start, 0)]


def test_placeholder_count_must_match_blocks(tiny) -> None:
    tokenizer, _ = tiny
    with pytest.raises(ValueError, match="1 <query> but 2 media blocks"):
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


# Hand-made samples for the padding contract: query slots are the leading UNKs.
LONG = EncodedSample(input_ids=[UNK, UNK, 5, 6, 7], labels=[X, X, X, 6, 7], query_spans=[(0, 2)])
SHORT = EncodedSample(input_ids=[UNK, UNK, 8], labels=[X, X, 8], query_spans=[(0, 2)])


def test_collate_right_padding_stage1() -> None:
    batch = collate([LONG, SHORT], pad_id=EOS, padding_side="right", bos_id=BOS, bos_mask_on_padded_rows=False)
    assert batch["input_ids"].tolist() == [[BOS, UNK, UNK, 5, 6, 7], [BOS, UNK, UNK, 8, EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[X, X, X, X, 6, 7], [X, X, X, 8, X, X]]
    assert batch["query_positions"].tolist() == [1, 2, 7, 8]
    assert batch["query_block_sizes"].tolist() == [2, 2]
    assert batch["query_blocks_per_sample"].tolist() == [1, 1]


@pytest.mark.parametrize(("quirk", "short_bos"), [(False, 1), (True, 0)])
def test_collate_left_padding_and_bos_quirk(quirk: bool, short_bos: int) -> None:
    batch = collate([LONG, SHORT], pad_id=EOS, padding_side="left", bos_id=BOS, bos_mask_on_padded_rows=quirk)
    assert batch["input_ids"].tolist() == [[BOS, UNK, UNK, 5, 6, 7], [BOS, EOS, EOS, UNK, UNK, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [short_bos, 0, 0, 1, 1, 1]]
    assert batch["labels"].tolist() == [[X, X, X, X, 6, 7], [X, X, X, X, X, 8]]
    assert batch["query_positions"].tolist() == [1, 2, 9, 10]


def test_bos_quirk_is_a_no_op_with_right_padding() -> None:
    batch = collate([LONG, SHORT], pad_id=EOS, padding_side="right", bos_id=BOS, bos_mask_on_padded_rows=True)
    assert batch["attention_mask"][:, 0].tolist() == [1, 1]


def test_query_positions_hit_exactly_the_placeholder_slots(tiny) -> None:
    tokenizer, _ = tiny
    texts = [
        templates.render_single_turn(("video", "audio"), "What is happening?", "a dog barks"),
        templates.render_single_turn(("image",), "What color?", "red"),
    ]
    samples = [
        encode_conversation(texts[0], tokenizer, [Q, Q], 220),
        encode_conversation(texts[1], tokenizer, [Q], 220),
    ]
    batch = collate(samples, pad_id=EOS, padding_side="left", bos_id=BOS, bos_mask_on_padded_rows=True)
    B, L = batch["input_ids"].shape
    positions = batch["query_positions"]
    assert positions.tolist() == sorted(set(positions.tolist()))
    assert (batch["input_ids"].view(-1) == UNK).nonzero().view(-1).tolist() == positions.tolist()
    assert batch["query_block_sizes"].tolist() == [Q, Q, Q]
    assert batch["query_blocks_per_sample"].tolist() == [2, 1]

    # The splice recipe of the TextBatch docstring puts block m's vectors at block m's slots.
    D = 3
    soft = torch.arange(3 * Q * D, dtype=torch.float).view(3, Q, D)  # (M, Q, D)
    embeds = torch.zeros(B, L, D)
    embeds.view(B * L, D)[positions] = soft[torch.arange(Q) < batch["query_block_sizes"][:, None]]
    row1_start = L - len(samples[1].input_ids) + samples[1].query_spans[0][0]
    assert torch.equal(embeds[1, row1_start : row1_start + Q], soft[2])


def test_positions_grouped_per_modality_for_the_model(tiny) -> None:
    tokenizer, _ = tiny
    modalities = [("video", "audio"), ("audio",), ("video",)]
    samples = [
        encode_conversation(templates.render_single_turn(m, "What?", "red"), tokenizer, [Q] * len(m), 220)
        for m in modalities
    ]
    batch = collate(samples, pad_id=EOS, padding_side="left", bos_id=BOS, bos_mask_on_padded_rows=False)
    grouped = query_positions_by_modality(batch, modalities)
    blocks = batch["query_positions"].view(4, Q)  # batch order: video0, audio0, audio1, video2
    assert set(grouped) == {"video", "audio"}
    assert torch.equal(grouped["video"], blocks[[0, 3]])
    assert torch.equal(grouped["audio"], blocks[[1, 2]])
    with pytest.raises(ValueError, match="blocks per sample"):
        query_positions_by_modality(batch, [("video",), ("audio",), ("video",)])


def test_grouping_refuses_a_truncated_block(tiny) -> None:
    tokenizer, _ = tiny
    text = templates.render_single_turn(("image",), "What?", "red")
    whole = encode_conversation(text, tokenizer, [Q], 220)
    cut = encode_conversation(text, tokenizer, [Q], whole.query_spans[0][0] + 1)
    batch = collate([whole, cut], pad_id=EOS, padding_side="left", bos_id=BOS, bos_mask_on_padded_rows=False)
    with pytest.raises(ValueError, match="max_txt_len"):
        query_positions_by_modality(batch, [("image",), ("image",)])


def test_only_assistant_tokens_are_supervised_in_a_batch(tiny) -> None:
    tokenizer, sp = tiny
    text = templates.render_single_turn(("audio",), "Describe the audio.", "a dog barks")
    batch = collate([encode_conversation(text, tokenizer, [Q], 220)], EOS, "left", BOS, bos_mask_on_padded_rows=False)
    assert batch["labels"][batch["labels"] != X].tolist() == sp.encode("a dog barks\n###")


def test_collate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        collate([LONG], EOS, "middle", BOS, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        collate([], EOS, "left", BOS, False)
