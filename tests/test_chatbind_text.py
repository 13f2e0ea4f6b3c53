"""ChatBind's text side: added tokens, LLaVA v0/v1 tokenisation and label masks, chat templates, the LLaVA dataset
(docs/reference/chatbind.md §2.5, §4, §5).

The label tests re-implement the reference's masking literally (LLaVA's `_mask_targets` and `preprocess_v1`, with
every separately tokenised string carrying its BOS) and compare it with ours on the same tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from chatbridge.config_loading import load_config
from chatbridge.data.batch import IGNORE_INDEX
from chatbridge.data.datasets.base import DataContext
from chatbridge.data.llava_tokenize import encode_llava_v0, encode_llava_v1, tokenize_with_media
from chatbridge.data.templates import LLAVA_V0_SYSTEM, LLAVA_V1_SYSTEM
from chatbridge.models.llm import load_tokenizer
from chatbridge.registry import CHAT_TEMPLATES, DATASETS, load_builtin_components

V0_TOKENS = ["[PAD]", "<im_patch>", "<im_start>", "<im_end>"]
MEDIUM = "<im_start><im_patch><im_end>"
CONVERSATION = [
    {"from": "human", "value": "<query>\nWhat colour is the shape?"},
    {"from": "gpt", "value": "It is red."},
    {"from": "human", "value": "And where is it?"},
    {"from": "gpt", "value": "At the top, on a dark background."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    return load_tokenizer(tiny_llm_dir, V0_TOKENS)


def _expanded(conversation):
    return [{**m, "value": m["value"].replace("<query>", MEDIUM)} for m in conversation]


def reference_v0(conversation, tokenizer):
    """LLaVA-May's v0 `preprocess`: `_add_speaker_and_signal`, `_tokenize_fn` lengths, `_mask_targets`."""
    header = LLAVA_V0_SYSTEM + "\n\n"
    turns = [f"### {'Human' if m['from'] == 'human' else 'Assistant'}: {m['value']}\n" for m in conversation]
    input_ids = tokenizer(header + "".join(turns) + "### ").input_ids
    lengths = [len(tokenizer(text).input_ids) for text in [header, *turns]]
    target = list(input_ids)
    cur = lengths[0]
    target[:cur] = [IGNORE_INDEX] * cur
    for length, message in zip(lengths[1:], conversation, strict=True):
        if message["from"] == "human":
            target[cur + 2 : cur + length] = [IGNORE_INDEX] * len(target[cur + 2 : cur + length])
        cur += length
    return input_ids, target


def reference_v1(conversation, tokenizer):
    """LLaVA-May's `preprocess_v1` with `vicuna_v1_1` (pad = unk)."""
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    text = LLAVA_V1_SYSTEM + " "
    for number, m in enumerate(conversation):
        text += f"{roles[m['from']]}: {m['value']}" + (" " if number % 2 == 0 else "</s>")
    input_ids = tokenizer(text).input_ids
    target = list(input_ids)
    total = sum(token != tokenizer.unk_token_id for token in input_ids)
    cur = 1
    target[:cur] = [IGNORE_INDEX]
    for round_text in text.split("</s>"):
        if round_text == "":
            break
        parts = round_text.split(" ASSISTANT: ")
        if len(parts) != 2:
            break
        parts[0] += " ASSISTANT: "
        round_len = len(tokenizer(round_text).input_ids)
        instruction = len(tokenizer(parts[0]).input_ids) - 2
        target[cur : cur + instruction] = [IGNORE_INDEX] * len(target[cur : cur + instruction])
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    if cur != total:
        target = [IGNORE_INDEX] * len(target)
    return input_ids, target


def test_added_tokens_get_the_references_ids_and_swallow_adjacent_whitespace(tokenizer):
    base = tokenizer.vocab_size
    assert tokenizer.convert_tokens_to_ids(V0_TOKENS) == [base, base + 1, base + 2, base + 3]  # v0 order (§2.5)
    spaced = tokenizer.encode(f"shape.\n{MEDIUM}\nWhat", add_special_tokens=False)
    tight = tokenizer.encode(f"shape.{MEDIUM}What", add_special_tokens=False)
    assert spaced == tight  # "\n" next to an added token disappears, as with the 4.28 slow tokenizer
    assert tokenizer.convert_ids_to_tokens(spaced).count("<im_patch>") == 1


def test_one_slot_per_medium_at_its_im_patch(tokenizer):
    ids, spans = tokenize_with_media("Look: <query> and <query>.", tokenizer, [1, 1])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[start] for start, _ in spans] == ["<im_patch>", "<im_patch>"]
    assert all(tokens[start - 1] == "<im_start>" and tokens[start + 1] == "<im_end>" for start, _ in spans)


def test_v0_labels_are_the_references(tokenizer):
    ours = encode_llava_v0(CONVERSATION, tokenizer, [1], max_len=1000)
    input_ids, target = reference_v0(_expanded(CONVERSATION), tokenizer)
    assert [tokenizer.bos_token_id, *ours.input_ids] == input_ids
    assert [IGNORE_INDEX, *ours.labels] == target
    supervised = tokenizer.decode([token for token in ours.labels if token != IGNORE_INDEX])
    assert "It is red." in supervised and "At the top" in supervised and "colour" not in supervised


def test_v1_labels_are_the_references(tiny_llm_dir):
    tokenizer = load_tokenizer(tiny_llm_dir, V0_TOKENS[1:])
    ours = encode_llava_v1(CONVERSATION, tokenizer, [1], max_len=1000)
    input_ids, target = reference_v1(_expanded(CONVERSATION), tokenizer)
    assert [tokenizer.bos_token_id, *ours.input_ids] == input_ids
    assert [IGNORE_INDEX, *ours.labels] == target
    assert any(label != IGNORE_INDEX for label in ours.labels)
    broken = [*CONVERSATION[:3], {"from": "gpt", "value": "At</s> the top."}]  # rounds no longer add up
    assert set(encode_llava_v1(broken, tokenizer, [1], max_len=1000).labels) == {IGNORE_INDEX}


VERSIONS = [("llava_v0", encode_llava_v0, V0_TOKENS), ("llava_v1", encode_llava_v1, V0_TOKENS[1:])]


@pytest.mark.parametrize(("template", "encode", "added"), VERSIONS)
def test_chat_turns_have_the_training_ids(tiny_llm_dir, template, encode, added):
    """Turn 1 equals the training sample up to its answer; turn 2 follows the answer exactly as in training."""
    load_builtin_components()
    tokenizer, chat = load_tokenizer(tiny_llm_dir, added), CHAT_TEMPLATES.get(template)()
    training = encode(CONVERSATION, tokenizer, [1], 1000).input_ids
    first = chat.encode(chat.render_turn(["image"], "What colour is the shape?", True), tokenizer, [1])
    second = chat.encode(chat.render_turn([], "And where is it?", False), tokenizer, [])
    assert training[: len(first.input_ids)] == first.input_ids
    assert first.labels == [IGNORE_INDEX] * len(first.input_ids)
    # the answer as the model generates it: its first piece carries the space ("▁It"), then the stop text
    answer = len(tokenizer.encode("It is red." + chat.answer_suffix, add_special_tokens=False))
    start = len(first.input_ids) + answer
    assert training[start : start + len(second.input_ids)] == second.input_ids


def test_llava_dataset_reads_the_llava_format(tmp_path, tiny_llm_dir):
    load_builtin_components()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "images" / "000000000001.jpg")
    rows = [
        {
            "id": "a",
            "image": "000000000001.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                {"from": "gpt", "value": "Red."},
            ],
        },
        {
            "id": "b",
            "image": "000000000001.jpg",
            "conversations": [{"from": "human", "value": "No tag here."}, {"from": "gpt", "value": "?"}],
        },
    ]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    config = load_config(
        "train_configs/chatbind_tiny_pretrain.yaml",
        [f"model.llm.path={tiny_llm_dir}", "model.encoders.imagebind.checkpoint=null"],
        require_paths=False,
    )
    dataset = config.datasets["image_captions"]
    dataset.annotations, dataset.image_root, dataset.skip_bad_rows = (
        str(tmp_path / "chat.json"),
        str(tmp_path / "images"),
        True,
    )
    context = DataContext(load_tokenizer(tiny_llm_dir, config.model.llm.added_tokens), config.model)
    source = DATASETS.get("llava_json")("images", dataset, context)
    assert len(source) == 1 and source.bad_rows == {"bad media tags": 1}
    sample = source.load(0, True, torch.Generator())
    assert sample.media[0].tensor.shape == (3, 32, 32) and sample.encoded.media_spans[0][1] == 1
    tokens = context.tokenizer.convert_ids_to_tokens(sample.encoded.input_ids)
    assert tokens[sample.encoded.media_spans[0][0]] == "<im_patch>"
    plain = DataContext(load_tokenizer(tiny_llm_dir), config.model)  # a tokenizer without LLaVA's tokens
    with pytest.raises(ValueError, match="model.llm.added_tokens"):
        DATASETS.get("llava_json")("images", dataset, plain)
