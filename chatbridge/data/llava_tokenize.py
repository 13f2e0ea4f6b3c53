"""LLaVA text -> token ids, `<im_patch>` slots and label masks, as ChatBind trained (docs/reference/chatbind.md §4).

One rule makes ids: the rendered text, with each `<query>` expanded to `<im_start>` + `<im_patch>` x n + `<im_end>`,
is tokenised as ONE string by the LLM's tokenizer, whose added tokens split the text and swallow the whitespace
next to them (`chatbridge.models.llm.load_tokenizer`, §4.5). Training samples (`encode_llava_v0`,
`encode_llava_v1`) and chat prompts (`encode_llava_prompt`) both go through `tokenize_with_media`, so a chat's first
turn has exactly the ids of a training sample up to its answer. The medium's slots are its `<im_patch>` positions.

Labels reproduce the reference literally, heuristics included: v0's "+2" per human turn with one BOS counted per
separately tokenised turn (§4.3), and v1's per-round lengths with the whole sample masked when they do not add up
(§4.4). As everywhere in this package, ids and labels exclude the BOS that `collate` prepends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from transformers import PreTrainedTokenizer

from chatbridge.data.batch import IGNORE_INDEX
from chatbridge.data.templates import (
    IM_END,
    IM_PATCH,
    IM_START,
    LLAVA_V0_SYSTEM,
    LLAVA_V1_END,
    LLAVA_V1_ROLES,
    QUERY_PLACEHOLDER,
    llava_v0_turns,
    render_llava_v0,
    render_llava_v1,
)
from chatbridge.data.tokenize import EncodedSample

Conversation = Sequence[Mapping[str, str]]
"""LLaVA messages `{"from": "human" | "gpt", "value": ...}`, media marked by `<query>`."""


def expand_media(text: str, soft_tokens: Iterator[int]) -> str:
    """Each `<query>` of `text` -> `<im_start>` + `<im_patch>` x n + `<im_end>`, n taken from `soft_tokens` in order."""
    pieces = text.split(QUERY_PLACEHOLDER)
    expanded = [pieces[0]]
    for piece in pieces[1:]:
        expanded.append(IM_START + IM_PATCH * next(soft_tokens) + IM_END + piece)
    return "".join(expanded)


def tokenize_with_media(
    text: str, tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (no BOS) and the (start, length) of each medium's `<im_patch>` run.

    Raises:
        ValueError: the number of `<query>` differs from the number of media, or the tokenizer does not know the
            media tokens (load it with `model.llm.added_tokens`).
    """
    if text.count(QUERY_PLACEHOLDER) != len(soft_tokens_per_medium):
        found = text.count(QUERY_PLACEHOLDER)
        raise ValueError(f"text has {found} {QUERY_PLACEHOLDER} but {len(soft_tokens_per_medium)} media: {text!r}")
    patch = media_token_id(tokenizer, IM_PATCH)
    ids = tokenizer.encode(expand_media(text, iter(soft_tokens_per_medium)), add_special_tokens=False)
    spans, position = [], 0
    for count in soft_tokens_per_medium:
        position = ids.index(patch, position)
        spans.append((position, count))
        position += count
    return ids, spans


def media_token_id(tokenizer: PreTrainedTokenizer, token: str) -> int:
    """The id of an added media token; raises ValueError naming the fix when the tokenizer lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no {token}: list LLaVA's tokens in model.llm.added_tokens and load the tokenizer "
            "with chatbridge.models.llm.load_llm_tokenizer"
        )
    return token_id


def encode_llava_prompt(
    text: str, tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int], answer_marker: str
) -> EncodedSample:
    """A chat prompt: ids as training makes them; only text after the last `answer_marker` is supervised.

    A prompt ends with the marker, so nothing is; a prompt followed by a candidate answer (likelihood scoring)
    supervises that answer.

    Raises:
        ValueError: as `tokenize_with_media`, or the text before the answer is not a token prefix of the whole.
    """
    ids, spans = tokenize_with_media(text, tokenizer, soft_tokens_per_medium)
    cut = text.rfind(answer_marker)
    answer = text[cut + len(answer_marker) :] if cut >= 0 else ""
    if not answer:
        return EncodedSample(ids, [IGNORE_INDEX] * len(ids), spans)
    prompt = text[: len(text) - len(answer)]
    prompt_ids, _ = tokenize_with_media(prompt, tokenizer, soft_tokens_per_medium)
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the answer after {answer_marker!r} changes the prompt's tokens: {text!r}")
    labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
    return EncodedSample(ids, labels, spans)


def encode_llava_v0(
    conversation: Conversation, tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int], max_len: int
) -> EncodedSample:
    """A v0 training sample (LLaVA's `preprocess` with `_mask_targets`, §4.3).

    The header and each turn are tokenised separately, each with its own BOS: the header's length is masked, then
    a human turn of length l starting at `cur` has `[cur + 2, cur + l)` masked, and every turn moves `cur` on by l.
    Assistant turns (with their "### Assistant: " prefix) and the closing "### " stay supervised.
    """
    ids, spans = tokenize_with_media(render_llava_v0(conversation), tokenizer, soft_tokens_per_medium)
    counts = iter(soft_tokens_per_medium)
    target = [tokenizer.bos_token_id, *ids]
    cur = _length_with_bos(LLAVA_V0_SYSTEM + "\n\n", tokenizer, counts)
    target[:cur] = [IGNORE_INDEX] * cur
    for speaker, turn in llava_v0_turns(conversation):
        length = _length_with_bos(turn, tokenizer, counts)
        if speaker == "human":
            _mask(target, cur + 2, cur + length)
        cur += length
    return _truncated(ids, target[1:], spans, max_len)


def encode_llava_v1(
    conversation: Conversation, tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int], max_len: int
) -> EncodedSample:
    """A v1 training sample (LLaVA's `preprocess_v1`, §4.4).

    The text is split at "</s>" into rounds and each round at " ASSISTANT: "; from `cur = 1` (BOS), each round
    masks `len(tok(instruction + " ASSISTANT: ")) - 2` tokens and moves on by `len(tok(round))` (its own BOS
    standing in for the "</s>" the split removed). The rest is masked. If the rounds do not add up to the sample's
    length (counting every id but `<unk>`, the reference's pad), the whole sample is masked, as the reference did.
    """
    text = render_llava_v1(conversation)
    ids, spans = tokenize_with_media(text, tokenizer, soft_tokens_per_medium)
    separator = f" {LLAVA_V1_ROLES['gpt']}: "
    counts = list(soft_tokens_per_medium)
    target = [IGNORE_INDEX, *ids]
    cur = 1
    for round_text in text.split(LLAVA_V1_END):
        parts = round_text.split(separator)
        if not round_text or len(parts) != 2:
            break
        used = round_text.count(QUERY_PLACEHOLDER)
        instruction = _length_with_bos(parts[0] + separator, tokenizer, iter(counts)) - 2
        _mask(target, cur, cur + instruction)
        cur += _length_with_bos(round_text, tokenizer, iter(counts[:used]))
        counts = counts[used:]
    _mask(target, cur, len(target))
    real = sum(token != tokenizer.unk_token_id for token in [tokenizer.bos_token_id, *ids][: max_len + 1])
    if cur < max_len + 1 and cur != real:
        target = [IGNORE_INDEX] * len(target)
    return _truncated(ids, target[1:], spans, max_len)


def _length_with_bos(text: str, tokenizer: PreTrainedTokenizer, soft_tokens: Iterator[int]) -> int:
    """Tokens of `text` tokenised alone, with BOS (what the reference measured), its media expanded."""
    return 1 + len(tokenizer.encode(expand_media(text, soft_tokens), add_special_tokens=False))


def _mask(target: list[int], start: int, stop: int) -> None:
    """`target[start:stop] = IGNORE_INDEX`, clipped to the list as a slice assignment in torch would be."""
    for index in range(max(start, 0), min(stop, len(target))):
        target[index] = IGNORE_INDEX


def _truncated(ids: list[int], labels: list[int], spans: list[tuple[int, int]], max_len: int) -> EncodedSample:
    """Cut to `max_len` positions (after BOS); a cut through a medium's tokens is an error, not a silent loss."""
    if spans and spans[-1][0] + spans[-1][1] + 1 > max_len:  # + 1: its `<im_end>`
        raise ValueError(
            f"model.max_txt_len = {max_len} cuts a medium's tokens (the last ends at position "
            f"{spans[-1][0] + spans[-1][1] + 1}); raise model.max_txt_len"
        )
    return EncodedSample(ids[:max_len], labels[:max_len], spans)
