"""Readers for the evaluation benchmarks' annotation files, exactly as their authors distribute them.

Each reader turns one benchmark's official file(s) into a list of `EvalItem`s, so that a user points at the
downloaded annotations and needs no conversion step. Media are named as the media files are ("COCO_val2014_
000000000042.jpg", "video7010", "Santa Motor.wav"); finding them on disk is the caller's job. A malformed entry raises
`ValueError` naming the file and the entry (list index, CSV line or key); a missing file raises `FileNotFoundError`
naming the path. `READERS` maps each format name to its reader.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatbridge.config import Modality
from chatbridge.errors import UserError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class EvalItem:
    """One evaluation query: its media, the question (if any) and what a correct answer looks like.

    Attributes:
        item_id: unique within the benchmark (question id, image id, clip name...).
        media: (modality, media id as the file names it) pairs, in prompt order.
        question: the question; None for captioning and classification.
        references: reference captions, all annotator answers (VQA: the 10), or the single answer.
        choices: multiple-choice options (e.g. the ESC-50 class names).
        answer_index: index of the correct option in `choices`.
        history: earlier (question, answer) turns of a dialogue (AVSD).
        question_type: the question's type where a benchmark declares types (scores are reported per type).
        chance: the accuracy of a uniform guesser on this question's type, where declared.
        slot_chance: the same for each attribute of a multi-attribute answer, averaged over its attributes.
    """

    item_id: str
    media: tuple[tuple[Modality, str], ...]
    question: str | None = None
    references: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    history: tuple[tuple[str, str], ...] = ()
    question_type: str | None = None
    chance: float | None = None
    slot_chance: float | None = None


# ---------------------------------------------------------------------------------------------------------------
# File access and field checks
# ---------------------------------------------------------------------------------------------------------------


def _existing(path: PathLike) -> Path:
    """The path, or FileNotFoundError naming it (before any parsing, so the message says what is missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    return path


def _load_json(path: PathLike) -> Any:
    """Parsed JSON; a syntax error becomes ValueError naming the file."""
    path = _existing(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error


def _json_list(path: PathLike) -> list[Any]:
    """The file's top-level list."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _json_lists(path: PathLike, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, list[Any]]:
    """The lists under the `required` keys, and the `optional` ones present, of the file's top-level object."""
    data = _load_json(path)
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise UserError(f"{path}: expected a JSON object with keys {list(required)}")
    lists = {key: data[key] for key in (*required, *optional) if key in data}
    for key, value in lists.items():
        if not isinstance(value, list):
            raise UserError(f"{path}: {key!r} should be a list, got {type(value).__name__}")
    return lists


def _records(rows: Iterable[Any], prefix: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """(where, record) pairs, `where` = "<prefix>[<index>]" for error messages; entries must be JSON objects."""
    for index, row in enumerate(rows):
        where = f"{prefix}[{index}]"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _read_csv(path: PathLike, columns: Sequence[str]) -> Iterable[tuple[str, dict[str, str]]]:
    """(where, row) pairs of a CSV with a header; checks the header has `columns` and each row its field count."""
    with _existing(path).open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = [column for column in columns if column not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: header lacks columns {missing} (header: {reader.fieldnames})")
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if None in row or None in row.values():
                raise UserError(f"{where}: the number of fields differs from the header's {len(reader.fieldnames)}")
            yield where, row


def _get(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key], checked to be of `kind` (bools are not ints)."""
    if key not in record:
        raise UserError(f"{where}: missing {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{where}: {key!r} should be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    """Names a type check for messages ("int or str")."""
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _text(record: dict[str, Any], key: str, where: str) -> str:
    """A non-empty string field (captions, questions, answers, file names)."""
    value = _get(record, key, str, where)
    if not value.strip():
        raise UserError(f"{where}: {key!r} is empty")
    return value


def _ident(record: dict[str, Any], key: str, where: str) -> str:
    """An id field, int or string, as a string."""
    return str(_get(record, key, (int, str), where))


def _texts(record: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """A list of non-empty strings (a caption list), or a single string as a one-element tuple."""
    value = _get(record, key, (list, str), where)
    values = [value] if isinstance(value, str) else value
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise UserError(f"{where}: {key!r} should be a non-empty list of non-empty strings, got {value!r}")
    return tuple(values)


def _int_cell(row: dict[str, str], key: str, where: str) -> int:
    """An integer CSV cell."""
    try:
        return int(row[key])
    except ValueError:
        raise UserError(f"{where}: {key!r} should be an integer, got {row[key]!r}") from None


def _cell(row: dict[str, str], key: str, where: str) -> str:
    """A non-empty CSV cell."""
    if not row[key].strip():
        raise UserError(f"{where}: {key!r} is empty")
    return row[key]


# ---------------------------------------------------------------------------------------------------------------
# Image benchmarks
# ---------------------------------------------------------------------------------------------------------------


def karpathy_caption(path: PathLike, split: str = "test") -> list[EvalItem]:
    """COCO / Flickr30k captioning with Karpathy's splits (`dataset_coco.json`, `dataset_flickr30k.json`).

    Layout: `{"images": [{"filename": "COCO_val2014_000000391895.jpg", "split": "train"|"val"|"test"|"restval",
    "sentences": [{"raw": "A man ...", "tokens": [...], ...}], "imgid": 0, "cocoid": 391895, ...}], "dataset": ...}`
    (Flickr30k has no "cocoid"). The item id is "cocoid" when present (the COCO image id that COCO-format results use),
    else "imgid"; references are the "raw" sentences, to be tokenised by the metric.
    """
    items, splits = [], set()
    for where, image in _records(_json_lists(path, ["images"])["images"], f"{path}, images"):
        splits.add(_text(image, "split", where))
        if image["split"] != split:
            continue
        sentences = _get(image, "sentences", list, where)
        references = tuple(_text(s, "raw", at) for at, s in _records(sentences, f"{where}.sentences"))
        if not references:
            raise UserError(f"{where}: no sentences")
        item_id = _ident(image, "cocoid" if "cocoid" in image else "imgid", where)
        items.append(EvalItem(item_id, (("image", _text(image, "filename", where)),), references=references))
    if not items:
        raise UserError(f"{path}: no image in split {split!r} (splits present: {sorted(splits)})")
    return items


def nocaps(path: PathLike) -> list[EvalItem]:
    """nocaps captioning (`nocaps_val_4500_captions.json`, `nocaps_test_image_info.json`).

    Layout (COCO captions format): `{"images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "domain":
    "in-domain"|"near-domain"|"out-domain", "open_images_id": ..., ...}], "annotations": [{"image_id": 0, "id": 0,
    "caption": "..."}]}`; the test file has no "annotations", so its references are empty (scores come from EvalAI).
    """
    lists = _json_lists(path, ["images"], ["annotations"])
    captions: dict[str, list[str]] = {}
    for where, annotation in _records(lists.get("annotations", []), f"{path}, annotations"):
        captions.setdefault(_ident(annotation, "image_id", where), []).append(_text(annotation, "caption", where))
    items = []
    for where, image in _records(lists["images"], f"{path}, images"):
        image_id = _ident(image, "id", where)
        references = tuple(captions.pop(image_id, ()))
        items.append(EvalItem(image_id, (("image", _text(image, "file_name", where)),), references=references))
    if captions:
        raise UserError(f"{path}: annotations for image ids not in 'images': {sorted(captions)[:5]}")
    return items


def vqa(
    questions_path: PathLike,
    annotations_path: PathLike | None = None,
    image_pattern: str = "COCO_val2014_{image_id:012d}.jpg",
) -> list[EvalItem]:
    """VQA v2 and OK-VQA: the official questions file plus, except for test splits, the annotations file.

    Questions (`v2_OpenEnded_mscoco_val2014_questions.json`, `OpenEnded_mscoco_val2014_questions.json`):
    `{"questions": [{"image_id": 42, "question": "...", "question_id": 420000}], "data_subtype": "val2014", ...}`.
    Annotations (`v2_mscoco_val2014_annotations.json`, `mscoco_val2014_annotations.json`): `{"annotations":
    [{"question_id": 420000, "answers": [{"answer": "...", "answer_id": 1, ...}] * 10, ...}]}`.
    References are the 10 annotator answers, in file order, for `vqa_accuracy`. The image file name is
    `image_pattern.format(image_id=...)`; use "COCO_test2015_{image_id:012d}.jpg" for test-dev/test.
    """
    answers = _vqa_answers(annotations_path) if annotations_path is not None else {}
    items = []
    questions = _json_lists(questions_path, ["questions"])["questions"]
    for where, question in _records(questions, f"{questions_path}, questions"):
        question_id = _get(question, "question_id", int, where)
        if annotations_path is not None and question_id not in answers:
            raise UserError(f"{annotations_path}: no annotation for question_id {question_id} ({where})")
        image = image_pattern.format(image_id=_get(question, "image_id", int, where))
        items.append(
            EvalItem(
                str(question_id),
                (("image", image),),
                question=_text(question, "question", where),
                references=answers.get(question_id, ()),
            )
        )
    return items


def _vqa_answers(path: PathLike) -> dict[int, tuple[str, ...]]:
    """question_id -> the annotators' answers of a VQA annotations file."""
    answers = {}
    for where, annotation in _records(_json_lists(path, ["annotations"])["annotations"], f"{path}, annotations"):
        entries = _records(_get(annotation, "answers", list, where), f"{where}.answers")
        given = tuple(_get(entry, "answer", str, at) for at, entry in entries)
        if not given:
            raise UserError(f"{where}: 'answers' is empty")
        answers[_get(annotation, "question_id", int, where)] = given
    return answers


def gqa(path: PathLike, image_pattern: str = "{image_id}.jpg") -> list[EvalItem]:
    """GQA (`testdev_balanced_questions.json`, `val_balanced_questions.json`, ...).

    Layout: `{"201307251": {"imageId": "n161313", "question": "...", "answer": "no", "fullAnswer": "...", ...}}`; the
    challenge's test/submission files have no "answer", so their references are empty. The short "answer" is the
    reference (GQA accuracy is exact match on it).
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of question id -> question, got {type(data).__name__}")
    items = []
    for question_id, question in data.items():
        where = f"{path}, question {question_id!r}"
        if not isinstance(question, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(question).__name__}")
        image = image_pattern.format(image_id=_text(question, "imageId", where))
        references = (_text(question, "answer", where),) if "answer" in question else ()
        items.append(
            EvalItem(
                question_id, (("image", image),), question=_text(question, "question", where), references=references
            )
        )
    return items


# ---------------------------------------------------------------------------------------------------------------
# Video benchmarks
# ---------------------------------------------------------------------------------------------------------------


def msrvtt_qa(path: PathLike) -> list[EvalItem]:
    """MSRVTT-QA (`test_qa.json`); see `_video_qa` for the accepted row shapes. Integer video ids n name "video{n}"."""
    return _video_qa(path, lambda number: f"video{number}")


def msvd_qa(path: PathLike, video_mapping: PathLike | None = None) -> list[EvalItem]:
    """MSVD-QA (`test_qa.json`); see `_video_qa` for the accepted row shapes.

    The original release numbers videos (`"video_id": 1301`) and ships `youtube_mapping.txt`, lines of
    "<clip name> vid<n>" ("-4wsuPCjDBc_5_15 vid1"), because the MSVD clips are named by clip name: pass that file as
    `video_mapping` to get clip names as media ids, else integer ids become "vid{n}".
    """
    if video_mapping is None:
        return _video_qa(path, lambda number: f"vid{number}")
    names = _msvd_names(video_mapping)
    return _video_qa(path, names.get)


def _msvd_names(path: PathLike) -> dict[int, str]:
    """video number -> clip name, from MSVD-QA's `youtube_mapping.txt`."""
    names = {}
    for line_number, line in enumerate(_existing(path).read_text(encoding="utf-8").splitlines(), start=1):
        match = re.fullmatch(r"\s*(\S+)\s+vid(\d+)\s*", line)
        if match is None and line.strip():
            raise UserError(f"{path}, line {line_number}: expected '<clip name> vid<n>', got {line!r}")
        if match is not None:
            names[int(match.group(2))] = match.group(1)
    return names


def _video_qa(path: PathLike, name_of: Callable[[int], str | None]) -> list[EvalItem]:
    """Open-ended video QA lists, in the two shapes the benchmarks circulate in.

    Original release (Xu et al. 2017): `[{"answer": "...", "id": 0, "question": "...", "video_id": 7010}]` (MSRVTT-QA
    rows also carry "category_id"); integer video ids are named by `name_of`, string ones are kept. LAVIS/ALPRO
    re-release: `[{"video": "video7010.mp4", "question": "...", "answer": "...", "question_id": ...}]`; the media id
    is "video" without its extension. The item id is "question_id" when present, else "id".
    """
    items = []
    for where, row in _records(_json_list(path), f"{path}, item"):
        items.append(
            EvalItem(
                _ident(row, "question_id" if "question_id" in row else "id", where),
                (("video", _video_qa_media(row, name_of, where)),),
                question=_text(row, "question", where),
                references=(_text(row, "answer", where),),
            )
        )
    return items


def _video_qa_media(row: dict[str, Any], name_of: Callable[[int], str | None], where: str) -> str:
    """The video's media id from either row shape."""
    if "video" in row:
        return os.path.splitext(_text(row, "video", where))[0]
    video_id = _get(row, "video_id", (int, str), where)
    if isinstance(video_id, str):
        return video_id
    name = name_of(video_id)
    if name is None:
        raise UserError(f"{where}: video_id {video_id} is not in the video mapping")
    return name


def vatex(path: PathLike) -> list[EvalItem]:
    """VATEX captioning, English captions (`vatex_validation_v1.0.json`, `vatex_public_test_english_v1.1.json`).

    Layout: `[{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [10 captions], "chCap": [10 captions]}]`; "chCap" is
    ignored, and a file without captions (the private test) gives empty references. The media id is "videoID",
    which is how the VATEX clips ("<youtube id>_<start>_<end>") are named.
    """
    items = []
    for where, row in _records(_json_list(path), f"{path}, item"):
        references = _texts(row, "enCap", where) if "enCap" in row else ()
        video = _text(row, "videoID", where)
        items.append(EvalItem(video, (("video", video),), references=references))
    return items


def valor32k(path: PathLike) -> list[EvalItem]:
    """VALOR-32K audio-visual captioning (`desc_test.json`): `[{"video_id": "...", "desc": "..."}]`.

    Each clip is both watched and heard, so the media are its video and its audio (same id). "desc" may also be a
    list of captions.
    """
    items = []
    for where, row in _records(_json_list(path), f"{path}, item"):
        video = _ident(row, "video_id", where)
        items.append(EvalItem(video, (("video", video), ("audio", video)), references=_texts(row, "desc", where)))
    return items


def music_avqa(path: PathLike) -> list[EvalItem]:
    """MUSIC-AVQA open-ended audio-visual QA (`avqa-test.json`).

    Layout: `[{"video_id": "00000823", "question_id": 102, "type": "[\\"Audio\\", \\"Counting\\"]",
    "question_content": "Is the <Object> in the video always playing?", "templ_values": "[\\"cello\\"]",
    "question_deleted": 0, "anser": "yes"}]` ("anser" is the official, misspelled key). Each `<...>` placeholder is
    filled, in order, from "templ_values" (a list literal in a string), as the official loader does; unused values
    are ignored as there too. The media are the clip's video and its audio.
    """
    items = []
    for where, row in _records(_json_list(path), f"{path}, item"):
        video = _ident(row, "video_id", where)
        question = _fill_template(_text(row, "question_content", where), _get(row, "templ_values", str, where), where)
        items.append(
            EvalItem(
                _ident(row, "question_id", where),
                (("video", video), ("audio", video)),
                question=question,
                references=(_text(row, "anser", where),),
            )
        )
    return items


def _fill_template(question: str, values_literal: str, where: str) -> str:
    """MUSIC-AVQA's templated question with its `<Object>`, `<LL>`, ... placeholders replaced by the values."""
    try:
        values = ast.literal_eval(values_literal)
    except (ValueError, SyntaxError):
        raise UserError(f"{where}: 'templ_values' should be a list literal, got {values_literal!r}") from None
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise UserError(f"{where}: 'templ_values' should list strings, got {values_literal!r}")
    placeholders = re.findall(r"<[^<>\s]+>", question)
    if len(placeholders) > len(values):
        raise UserError(f"{where}: {len(placeholders)} placeholders in {question!r} but templ_values {values!r}")
    fill = iter(values)
    return re.sub(r"<[^<>\s]+>", lambda _: next(fill), question)


def avsd(path: PathLike, turns: Literal["last", "every"] = "last") -> list[EvalItem]:
    """AVSD audio-visual scene-aware dialogue, DSTC7/DSTC8 (`valid_set4DSTC7-AVSD.json`, `test_set4DSTC7-AVSD.json`).

    Layout: `{"type": ..., "version": ..., "dialogs": [{"image_id": "QRTSP", "summary": "...", "caption": "...",
    "dialog": [{"question": "...", "answer": "..."}] * 10}]}` ("image_id" names the Charades video). `turns="last"`
    asks the last turn with the earlier ones as history (the DSTC setting); `"every"` asks each turn. The item id is
    "<image_id>_<turn index>"; an answer withheld as "__UNDISCLOSED__" (the challenge test set) gives no reference.
    """
    if turns not in ("last", "every"):
        raise UserError(f"turns should be 'last' or 'every', got {turns!r}")
    items = []
    for where, dialog in _records(_json_lists(path, ["dialogs"])["dialogs"], f"{path}, dialogs"):
        video = _ident(dialog, "image_id", where)
        pairs = [
            (_text(turn, "question", turn_where), _get(turn, "answer", str, turn_where))
            for turn_where, turn in _records(_get(dialog, "dialog", list, where), f"{where}.dialog")
        ]
        if not pairs:
            raise UserError(f"{where}: empty 'dialog'")
        for index in range(len(pairs)) if turns == "every" else (len(pairs) - 1,):
            question, answer = pairs[index]
            references = () if answer == "__UNDISCLOSED__" else (answer,)
            media: tuple[tuple[Modality, str], ...] = (("video", video), ("audio", video))
            items.append(EvalItem(f"{video}_{index}", media, question, references, history=tuple(pairs[:index])))
    return items


# ---------------------------------------------------------------------------------------------------------------
# Audio benchmarks
# ---------------------------------------------------------------------------------------------------------------


def clotho(path: PathLike) -> list[EvalItem]:
    """Clotho audio captioning (`clotho_captions_evaluation.csv`, v1 and v2.1).

    Layout: a CSV with header `file_name,caption_1,caption_2,caption_3,caption_4,caption_5`; captions containing
    commas are quoted. The media id is the file name ("Santa Motor.wav").
    """
    items = []
    columns = ("file_name", *(f"caption_{n}" for n in range(1, 6)))
    for where, row in _read_csv(path, columns):
        name = _cell(row, "file_name", where)
        references = tuple(_cell(row, column, where) for column in columns[1:])
        items.append(EvalItem(name, (("audio", name),), references=references))
    return items


def audiocaps(path: PathLike, media_pattern: str = "{youtube_id}_{start_time}") -> list[EvalItem]:
    """AudioCaps captioning (`test.csv`, `val.csv`): one row per caption, grouped here per clip.

    Layout: a CSV with header `audiocap_id,youtube_id,start_time,caption` (test: 5 rows per clip). AudioCaps clips
    are the 10 s from `start_time` of a YouTube video and are saved under download-tool-specific names, so the media
    id is `media_pattern.format(youtube_id=..., start_time=<int>)`: the default gives "7fmOlUlwoNg_20"; e.g.
    "{youtube_id}_{start_time:06d}" gives "7fmOlUlwoNg_000020" and "Y{youtube_id}" AudioSet-style names. The media
    id is also the item id; clips keep their first-appearance order.
    """
    captions: dict[str, list[str]] = {}
    for where, row in _read_csv(path, ("audiocap_id", "youtube_id", "start_time", "caption")):
        start = _int_cell(row, "start_time", where)
        media = media_pattern.format(youtube_id=_cell(row, "youtube_id", where), start_time=start)
        captions.setdefault(media, []).append(_cell(row, "caption", where))
    return [EvalItem(media, (("audio", media),), references=tuple(refs)) for media, refs in captions.items()]


def esc50(path: PathLike, folds: Sequence[int] | None = None) -> list[EvalItem]:
    """ESC-50 environmental sound classification (`meta/esc50.csv`), as 50-way multiple choice.

    Layout: a CSV with header `filename,fold,target,category,esc10,src_file,take` ("1-100032-A-0.wav,1,0,dog,True,
    100032,A"). The choices are the 50 category names ordered by target id with "_" read as a space ("chirping
    birds"), so `answer_index` is the target; the reference is the class name. `folds` selects folds 1-5 (default:
    all, the usual zero-shot protocol).
    """
    rows = [_esc50_row(where, row) for where, row in _read_csv(path, ("filename", "fold", "target", "category"))]
    choices = _esc50_classes(path, rows)
    return [
        EvalItem(name, (("audio", name),), references=(choices[target],), choices=choices, answer_index=target)
        for _, name, fold, target, _ in rows
        if folds is None or fold in folds
    ]


def _esc50_row(where: str, row: dict[str, str]) -> tuple[str, str, int, int, str]:
    """(where, filename, fold, target, category) of one `esc50.csv` row."""
    fold, target = _int_cell(row, "fold", where), _int_cell(row, "target", where)
    return where, _cell(row, "filename", where), fold, target, _cell(row, "category", where)


def _esc50_classes(path: PathLike, rows: Sequence[tuple[str, str, int, int, str]]) -> tuple[str, ...]:
    """Class names by target id; every id 0..n-1 must be present with one consistent name."""
    names: dict[int, str] = {}
    for where, _, _, target, category in rows:
        if names.setdefault(target, category) != category:
            raise UserError(f"{where}: target {target} is {category!r} here but {names[target]!r} before")
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{path}: targets should be 0..{len(names) - 1}, got {sorted(names)}")
    return tuple(names[target].replace("_", " ") for target in range(len(names)))


READERS: dict[str, Callable[..., list[EvalItem]]] = {
    "karpathy_caption": karpathy_caption,
    "nocaps": nocaps,
    "vqa": vqa,
    "gqa": gqa,
    "msvd_qa": msvd_qa,
    "msrvtt_qa": msrvtt_qa,
    "vatex": vatex,
    "clotho": clotho,
    "audiocaps": audiocaps,
    "esc50": esc50,
    "music_avqa": music_avqa,
    "avsd": avsd,
    "valor32k": valor32k,
}
