"""The training annotations of the synthetic world: captions, facts, and the stage-1 and stage-2 rows.

Stage-1 files follow VALOR's ``pretrain_txt_mapper.json`` (docs/reference/chatbridge.md §4.3), stage-2 files the
MULTIS format (§4.4). Every sentence is a template filled with an item's attributes, so a model that learned the
world answers them exactly. The rows deliberately vary the format the loaders accept (``desc`` or ``caption`` keys,
single captions or lists, one question per row or parallel lists) so that every variant is exercised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from chatbridge.synthetic.items import (
    COLOURS,
    COUNT_TIMES,
    COUNT_WORDS,
    DIRECTIONS,
    PITCHES,
    POSITIONS,
    SHAPES,
    TIMBRES,
    WHERE,
    AudioItem,
    ImageItem,
    Split,
    VideoItem,
    pick,
)


@dataclass(frozen=True)
class Fact:
    """One question about one attribute of an item, with its answers."""

    attribute: str
    """What the question asks for (a key of ``ATTRIBUTE_VALUES``); held-out question types are named by it."""
    question: str
    short: str
    """One-word answer for short QA."""
    sentence: str
    """Full-sentence answer for conversations."""


ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "start_colour": tuple(COLOURS),
    "direction": tuple(DIRECTIONS),
    "colour_change": ("yes", "no"),
    "end_colour": tuple(COLOURS),
    "count": tuple(COUNT_WORDS.values()),
    "pitch": tuple(PITCHES),
    "timbre": tuple(TIMBRES.values()),
}
"""Every short answer a fact's attribute can have: the choices a uniform guesser picks from."""


def image_captions(item: ImageItem) -> list[str]:
    where = WHERE[item.position]
    return [
        f"a {item.colour} {item.shape} {where}",
        f"a {item.shape} coloured {item.colour} {where} of the picture",
        f"a {item.colour} {item.shape} {where}, on a plain dark background",
    ]


def video_captions(item: VideoItem) -> list[str]:
    colour, end, shape, direction = item.colour, item.end_colour, item.shape, item.direction
    changes = end != colour
    return [
        f"a {colour} {shape} moving {direction}" + (f" that turns {end}" if changes else ""),
        f"a {colour} {shape} travels {direction} across the frame"
        + (f" and changes to {end} halfway" if changes else ""),
        f"a {shape} slides {direction}" + (f", changing from {colour} to {end}" if changes else f" and stays {colour}"),
    ]


def audio_captions(item: AudioItem) -> list[str]:
    count, noun, timbre = COUNT_WORDS[item.count], "beep" if item.count == 1 else "beeps", TIMBRES[item.timbre]
    return [
        f"{count} {item.pitch} {noun}",
        f"{count} {item.pitch}-pitched {timbre} {noun}",
        f"a {timbre} tone beeping {COUNT_TIMES[item.count]} at a {item.pitch} pitch",
    ]


def describe(item: ImageItem | VideoItem | AudioItem) -> str:
    """A caption naming every attribute a question may ask about: what a real LLM would be told in words."""
    if isinstance(item, ImageItem):
        return image_captions(item)[0]
    if isinstance(item, VideoItem):
        caption = video_captions(item)[0]
        return caption if item.end_colour != item.colour else f"{caption} and stays {item.colour}"
    return audio_captions(item)[1]


def beep_phrase(count: int) -> str:
    return f"{COUNT_WORDS[count]} beep" + ("" if count == 1 else "s")


def image_facts(item: ImageItem) -> list[Fact]:
    return [
        Fact("colour", "what colour is the shape?", item.colour, f"The {item.shape} is {item.colour}."),
        Fact("shape", "what shape is shown?", item.shape, f"It is a {item.shape}."),
        Fact(
            "position",
            "where is the shape?",
            item.position,
            f"The {item.shape} is {WHERE[item.position]} of the image.",
        ),
    ]


def video_facts(item: VideoItem) -> list[Fact]:
    changes = item.end_colour != item.colour
    change_sentence = f"Yes, it turns {item.end_colour} halfway." if changes else f"No, it stays {item.colour}."
    return [
        Fact("start_colour", "what colour is the shape at the start?", item.colour, f"It starts out {item.colour}."),
        Fact("shape", "what shape is moving?", item.shape, f"A {item.shape} is moving."),
        Fact("direction", "which direction does the shape move?", item.direction, f"It moves {item.direction}."),
        Fact("colour_change", "does the shape change colour?", "yes" if changes else "no", change_sentence),
        Fact("end_colour", "what colour is the shape at the end?", item.end_colour, f"It ends up {item.end_colour}."),
    ]


def audio_facts(item: AudioItem) -> list[Fact]:
    timbre = TIMBRES[item.timbre]
    return [
        Fact("count", "how many beeps are there?", COUNT_WORDS[item.count], f"I hear {beep_phrase(item.count)}."),
        Fact("pitch", "are the beeps high or low?", item.pitch, f"The beeps are {item.pitch}-pitched."),
        Fact("timbre", "do the beeps sound pure or buzzy?", timbre, f"They sound {timbre}."),
    ]


def _describe(request: str, caption: str) -> Fact:
    return Fact("caption", request, caption, caption[0].upper() + caption[1:] + ".")


def _turns(tags: str, facts: Sequence[Fact]) -> list[dict]:
    """LLaVA-format messages; the modality tags open the first human message, as in LLaVA."""
    turns = []
    for index, fact in enumerate(facts):
        question = fact.question[0].upper() + fact.question[1:]
        turns.append({"from": "human", "value": tags + question if index == 0 else question})
        turns.append({"from": "gpt", "value": fact.sentence})
    return turns


def _pick_facts(rng: np.random.Generator, facts: Sequence[Fact]) -> list[Fact]:
    """Two or three distinct facts in random order: the 2-3 turns of one conversation."""
    count = int(rng.integers(2, 4))
    return [facts[int(index)] for index in rng.permutation(len(facts))[:count]]


def _caption_field(rng: np.random.Generator, index: int, captions: list[str], key: str) -> dict:
    """Every tenth row carries the whole caption list (our loaders accept lists), the rest one random caption."""
    return {key: captions if index % 10 == 9 else pick(rng, captions)}


def id_stem(media_id: str) -> str:
    """A media id without its file suffix, the stem of question and conversation ids."""
    return media_id.removesuffix(".png")


# ----------------------------------------------------------------------------------------------- stage 1


def _stage1_rows(rng: np.random.Generator, items: Sequence, captions_of: Callable[..., list[str]]) -> list[dict]:
    """VALOR rows: mostly ``desc``, ``caption`` on rows 2 and 5 of every ten, a caption list on row 9."""
    rows = []
    for index, item in enumerate(items):
        key = "caption" if index % 10 in (2, 5) else "desc"
        rows.append({"video_id": item.id, **_caption_field(rng, index, captions_of(item), key)})
    return rows


def stage1_annotations(rng: np.random.Generator, split: Split) -> dict[str, list[dict]]:
    """The three stage-1 caption files; VALOR names every media id ``video_id``."""
    return {
        "stage1/image": _stage1_rows(rng, split.images, image_captions),
        "stage1/video": _stage1_rows(rng, split.videos, video_captions),
        "stage1/audio": _stage1_rows(rng, split.audios, audio_captions),
    }


# ----------------------------------------------------------------------------------------------- stage 2


def _qa_rows(items: Sequence, id_key: str, facts_of: Callable[..., list[Fact]]) -> list[dict]:
    """One row per fact; every tenth item instead gets one row with parallel question/answer lists."""
    rows = []
    for index, item in enumerate(items):
        facts = facts_of(item)
        if index % 10 == 9:
            questions, answers = [fact.question for fact in facts], [fact.short for fact in facts]
            rows.append(
                {"question_id": f"{id_stem(item.id)}_q", id_key: item.id, "question": questions, "answer": answers}
            )
            continue
        for number, fact in enumerate(facts):
            qa = {"question": fact.question, "answer": fact.short}
            rows.append({"question_id": f"{id_stem(item.id)}_q{number}", id_key: item.id, **qa})
    return rows


def _cap_rows(rng: np.random.Generator, items: Sequence, id_key: str, captions_of: Callable) -> list[dict]:
    return [
        {id_key: item.id, **_caption_field(rng, index, captions_of(item), "caption")}
        for index, item in enumerate(items)
    ]


def _conv_rows(rng: np.random.Generator, items: Sequence, id_key: str, tag: str, facts_of: Callable) -> list[dict]:
    return [
        {
            "id": f"{id_stem(item.id)}_conv",
            id_key: item.id,
            "conversations": _turns(tag, _pick_facts(rng, facts_of(item))),
        }
        for item in items
    ]


def _image_describe_facts(item: ImageItem) -> list[Fact]:
    return [*image_facts(item), _describe("describe the image briefly.", image_captions(item)[0])]


def _video_describe_facts(item: VideoItem) -> list[Fact]:
    return [*video_facts(item), _describe("what happens in the video?", video_captions(item)[0])]


def _audio_describe_facts(item: AudioItem) -> list[Fact]:
    return [*audio_facts(item), _describe("what do you hear?", audio_captions(item)[0])]


def _av_caption(rng: np.random.Generator, video: VideoItem, audio: AudioItem) -> str:
    return f"{pick(rng, video_captions(video))}, with {pick(rng, audio_captions(audio))}"


def _av_rows(rng: np.random.Generator, split: Split) -> tuple[list[dict], list[dict]]:
    """tva captioning and conversation rows; each conversation asks about both the video and its audio."""
    captions, conversations = [], []
    for video, audio in zip(split.videos, split.backgrounds, strict=False):  # only the first videos have audio
        captions.append({"video_id": video.id, "caption": _av_caption(rng, video, audio)})
        facts = [pick(rng, video_facts(video)), pick(rng, audio_facts(audio))]
        if rng.random() < 0.5:
            facts.append(_describe("describe what you see and hear.", _av_caption(rng, video, audio)))
        order = [facts[int(index)] for index in rng.permutation(len(facts))]
        conversations.append(
            {"id": f"{video.id}_avconv", "video_id": video.id, "conversations": _turns("<video>\n<audio>\n", order)}
        )
    return captions, conversations


def stage2_annotations(rng: np.random.Generator, split: Split) -> dict[str, list[dict]]:
    """MULTIS files; ids are ``image_id`` for images and ``video_id`` for videos and audio, as the loader reads.

    The joint video+audio files (``av_cap``, ``av_conv``) exist only when training videos have background audio
    (``WorldSizes.videos_with_audio``), which the default world never has: there, answering about a video and a
    sound in one prompt can only come from aligning each modality on its own.
    """
    av_cap, av_conv = _av_rows(rng, split)
    files = {
        "stage2/image_cap": _cap_rows(rng, split.images, "image_id", image_captions),
        "stage2/image_qa": _qa_rows(split.images, "image_id", image_facts),
        "stage2/image_conv": _conv_rows(rng, split.images, "image_id", "<image>\n", _image_describe_facts),
        "stage2/video_cap": _cap_rows(rng, split.videos, "video_id", video_captions),
        "stage2/video_qa": _qa_rows(split.videos, "video_id", video_facts),
        "stage2/video_conv": _conv_rows(rng, split.videos, "video_id", "<video>\n", _video_describe_facts),
        "stage2/audio_cap": _cap_rows(rng, split.audios, "video_id", audio_captions),
        "stage2/audio_qa": _qa_rows(split.audios, "video_id", audio_facts),
        "stage2/audio_conv": _conv_rows(rng, split.audios, "video_id", "<audio>\n", _audio_describe_facts),
    }
    if split.backgrounds:
        files |= {"stage2/av_cap": av_cap, "stage2/av_conv": av_conv}
    return files
