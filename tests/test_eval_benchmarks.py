"""Benchmark readers: official layouts in, exact EvalItems out; malformed entries and missing files named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatbridge.evaluation import benchmarks as bm
from chatbridge.evaluation import synthetic_world as world
from chatbridge.evaluation.benchmarks import READERS, EvalItem
from tests.fixtures import benchmark_files as files

ESC50_CHOICES = ("dog", "rooster", "chirping birds")


def test_karpathy_coco_test_split(tmp_path: Path) -> None:
    assert bm.karpathy_caption(files.karpathy_coco(tmp_path)) == [
        EvalItem(
            "391895",
            (("image", "COCO_val2014_000000391895.jpg"),),
            references=("A man with a red helmet on a small moped on a dirt road. ", "Man riding a motor bike."),
        ),
        EvalItem(
            "184613",
            (("image", "COCO_val2014_000000184613.jpg"),),
            references=("A child holding a flowered umbrella and petting a yak.",),
        ),
    ]


def test_karpathy_other_split_and_flickr_ids(tmp_path: Path) -> None:
    train = bm.karpathy_caption(files.karpathy_coco(tmp_path), split="train")
    assert [item.item_id for item in train] == ["522418"]
    assert bm.karpathy_caption(files.karpathy_flickr(tmp_path)) == [
        EvalItem("7", (("image", "1000092795.jpg"),), references=("Two dogs.",))
    ]
    with pytest.raises(ValueError, match=r"no image in split 'val' \(splits present: \['test', 'train'\]\)"):
        bm.karpathy_caption(files.karpathy_coco(tmp_path), split="val")


def test_nocaps_val_and_test(tmp_path: Path) -> None:
    assert bm.nocaps(files.nocaps_val(tmp_path)) == [
        EvalItem(
            "0", (("image", "0013ea2087020901.jpg"),), references=("A baby sitting on a bed.", "An infant on a blanket")
        ),
        EvalItem("1", (("image", "0023b8a7b3d87bf3.jpg"),), references=("A jellyfish floating in blue water.",)),
    ]
    assert bm.nocaps(files.nocaps_test(tmp_path)) == [EvalItem("4500", (("image", "003a5aaf6d17c917.jpg"),))]


def test_vqa_with_and_without_annotations(tmp_path: Path) -> None:
    questions = files.vqa_questions(tmp_path)
    items = bm.vqa(questions, files.vqa_annotations(tmp_path))
    assert items == [
        EvalItem(
            "42000",
            (("image", "COCO_val2014_000000000042.jpg"),),
            question="What color is the plate?",
            references=("white",) * 9 + ("white and blue",),
        ),
        EvalItem(
            "73001",
            (("image", "COCO_val2014_000000000073.jpg"),),
            question="How many dogs are there?",
            references=("2",) * 7 + ("3",) * 3,
        ),
    ]
    test_items = bm.vqa(questions, image_pattern="COCO_test2015_{image_id:012d}.jpg")
    assert [(item.media, item.references) for item in test_items] == [
        ((("image", "COCO_test2015_000000000042.jpg"),), ()),
        ((("image", "COCO_test2015_000000000073.jpg"),), ()),
    ]


def test_gqa(tmp_path: Path) -> None:
    assert bm.gqa(files.gqa_questions(tmp_path)) == [
        EvalItem("201307251", (("image", "n161313.jpg"),), question="Is it cloudy?", references=("no",)),
        EvalItem("20968379", (("image", "n288870.jpg"),), question="What is the man holding?", references=("racket",)),
    ]


def test_msrvtt_qa_both_shapes(tmp_path: Path) -> None:
    assert bm.msrvtt_qa(files.msrvtt_qa_original(tmp_path)) == [
        EvalItem("158581", (("video", "video7010"),), question="what is a man sitting on?", references=("couch",)),
        EvalItem("158582", (("video", "video7011"),), question="what are people doing?", references=("dance",)),
    ]
    assert bm.msrvtt_qa(files.msrvtt_qa_lavis(tmp_path)) == [
        EvalItem("msrvtt_qa_1", (("video", "video9999"),), question="who is singing?", references=("woman",))
    ]


def test_msvd_qa_with_and_without_mapping(tmp_path: Path) -> None:
    qa, mapping = files.msvd_qa_original(tmp_path)
    assert bm.msvd_qa(qa, video_mapping=mapping) == [
        EvalItem(
            "30933", (("video", "-4wsuPCjDBc_5_15"),), question="what is chewing on a nut?", references=("animal",)
        ),
        EvalItem(
            "30934",
            (("video", "-7KMZQEsJW4_205_208"),),
            question="what does a woman do to an onion?",
            references=("cut",),
        ),
    ]
    assert [item.media for item in bm.msvd_qa(qa)] == [(("video", "vid1301"),), (("video", "vid1302"),)]


def test_vatex_english_only(tmp_path: Path) -> None:
    assert bm.vatex(files.vatex_val(tmp_path)) == [
        EvalItem(
            "Ptf_2VRj-V0_000122_000132",
            (("video", "Ptf_2VRj-V0_000122_000132"),),
            references=("A man mixes paint.", "Someone stirs a bucket"),
        ),
        EvalItem(
            "J_RDMsoebmM_000009_000019", (("video", "J_RDMsoebmM_000009_000019"),), references=("Two kids play drums.",)
        ),
    ]


def test_valor32k_video_and_audio(tmp_path: Path) -> None:
    assert bm.valor32k(files.valor32k_test(tmp_path)) == [
        EvalItem(
            "-0vMhD5Ut6c_000010_000020",
            (("video", "-0vMhD5Ut6c_000010_000020"), ("audio", "-0vMhD5Ut6c_000010_000020")),
            references=("A man talks while a dog barks in a yard.",),
        ),
        EvalItem(
            "0A9ld2Gu6Ow_000030_000040",
            (("video", "0A9ld2Gu6Ow_000030_000040"), ("audio", "0A9ld2Gu6Ow_000030_000040")),
            references=("Drums beat as people cheer in a stadium.",),
        ),
    ]


def test_music_avqa_fills_templates(tmp_path: Path) -> None:
    assert bm.music_avqa(files.music_avqa_test(tmp_path)) == [
        EvalItem(
            "102",
            (("video", "00000823"), ("audio", "00000823")),
            question="How many instruments are sounding in the video?",
            references=("two",),
        ),
        EvalItem(
            "205",
            (("video", "00000824"), ("audio", "00000824")),
            question="Where is the first sounding instrument, left or cello?",
            references=("left",),
        ),
    ]


def test_avsd_last_turn_with_history(tmp_path: Path) -> None:
    media = (("video", "QRTSP"), ("audio", "QRTSP"))
    assert bm.avsd(files.avsd_dialogs(tmp_path)) == [
        EvalItem(
            "QRTSP_2",
            media,
            question="does he talk?",
            references=("no, he stays silent.",),
            history=(("is there sound?", "yes, some sizzling."), ("how many people?", "just one man.")),
        ),
        EvalItem("0A8CF_0", (("video", "0A8CF"), ("audio", "0A8CF")), question="what is he reading?"),
    ]


def test_avsd_every_turn(tmp_path: Path) -> None:
    items = bm.avsd(files.avsd_dialogs(tmp_path), turns="every")
    assert [(item.item_id, item.question, item.references, len(item.history)) for item in items] == [
        ("QRTSP_0", "is there sound?", ("yes, some sizzling.",), 0),
        ("QRTSP_1", "how many people?", ("just one man.",), 1),
        ("QRTSP_2", "does he talk?", ("no, he stays silent.",), 2),
        ("0A8CF_0", "what is he reading?", (), 0),
    ]
    with pytest.raises(ValueError, match="turns should be 'last' or 'every'"):
        bm.avsd(files.avsd_dialogs(tmp_path), turns="first")  # type: ignore[arg-type]


def test_clotho(tmp_path: Path) -> None:
    assert bm.clotho(files.clotho_eval(tmp_path)) == [
        EvalItem(
            "Santa Motor.wav",
            (("audio", "Santa Motor.wav"),),
            references=(
                "A machine whines and squeals.",
                "An engine hums, then stops.",
                "Motor running",
                "A motor runs steadily.",
                "Machinery whirs.",
            ),
        ),
        EvalItem(
            "rain.wav",
            (("audio", "rain.wav"),),
            references=("Rain falls.", "Rain, then thunder.", "Water drips.", "A storm.", "Heavy rain on a roof."),
        ),
    ]


def test_audiocaps_groups_captions_per_clip(tmp_path: Path) -> None:
    path = files.audiocaps_test(tmp_path)
    assert bm.audiocaps(path) == [
        EvalItem(
            "7fmOlUlwoNg_20",
            (("audio", "7fmOlUlwoNg_20"),),
            references=("Constant rattling noise and sharp vibrations", "A rattling and vibrating engine"),
        ),
        EvalItem("6BJ455B1aAs_0", (("audio", "6BJ455B1aAs_0"),), references=("A goat bleats, then a man talks",)),
    ]
    padded = bm.audiocaps(path, media_pattern="Y{youtube_id}_{start_time:06d}")
    assert [item.media for item in padded] == [(("audio", "Y7fmOlUlwoNg_000020"),), (("audio", "Y6BJ455B1aAs_000000"),)]


def test_esc50_choices_and_folds(tmp_path: Path) -> None:
    path = files.esc50_meta(tmp_path)
    assert bm.esc50(path, folds=[1]) == [
        EvalItem(
            "1-100032-A-0.wav",
            (("audio", "1-100032-A-0.wav"),),
            references=("dog",),
            choices=ESC50_CHOICES,
            answer_index=0,
        ),
        EvalItem(
            "1-100038-A-2.wav",
            (("audio", "1-100038-A-2.wav"),),
            references=("chirping birds",),
            choices=ESC50_CHOICES,
            answer_index=2,
        ),
    ]
    assert [(item.item_id, item.answer_index) for item in bm.esc50(path)] == [
        ("1-100032-A-0.wav", 0),
        ("1-100038-A-2.wav", 2),
        ("2-100648-A-1.wav", 1),
    ]


def test_readers_registry_names_every_reader() -> None:
    assert READERS == {
        "karpathy_caption": bm.karpathy_caption,
        "nocaps": bm.nocaps,
        "vqa": bm.vqa,
        "gqa": bm.gqa,
        "msvd_qa": bm.msvd_qa,
        "msrvtt_qa": bm.msrvtt_qa,
        "vatex": bm.vatex,
        "clotho": bm.clotho,
        "audiocaps": bm.audiocaps,
        "esc50": bm.esc50,
        "music_avqa": bm.music_avqa,
        "avsd": bm.avsd,
        "valor32k": bm.valor32k,
        "world_qa": world.world_qa,
        "world_captions": world.world_captions,
    }


@pytest.mark.parametrize("name", sorted(READERS))
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match=f"annotation file not found: {missing}"):
        READERS[name](missing)


def _edit_json(path: Path, edit) -> Path:
    """Rewrites a fixture after `edit` mutates its parsed JSON in place."""
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _set(container, key, value) -> None:
    container[key] = value


def _drop(container, key) -> None:
    del container[key]


@pytest.mark.parametrize(
    ("reader", "write", "edit", "message"),
    [
        (bm.karpathy_caption, files.karpathy_coco, lambda d: _drop(d["images"][2], "filename"),
         r"dataset_coco.json, images\[2\]: missing 'filename'"),
        (bm.karpathy_caption, files.karpathy_coco, lambda d: _set(d["images"][0]["sentences"][1], "raw", 5),
         r"images\[0\].sentences\[1\]: 'raw' should be str, got 5"),
        (bm.nocaps, files.nocaps_val, lambda d: _set(d["annotations"][1], "image_id", 9),
         r"annotations for image ids not in 'images': \['9'\]"),
        (bm.gqa, files.gqa_questions, lambda d: _drop(d["20968379"], "imageId"),
         r"testdev_balanced_questions.json, question '20968379': missing 'imageId'"),
        (bm.msrvtt_qa, files.msrvtt_qa_original, lambda d: _set(d[1], "question", ""),
         r"test_qa.json, item\[1\]: 'question' is empty"),
        (bm.msrvtt_qa, files.msrvtt_qa_original, lambda d: d.append("video7012"),
         r"test_qa.json, item\[2\]: expected a JSON object, got str"),
        (bm.vatex, files.vatex_val, lambda d: _set(d[0], "enCap", ["ok", 3]),
         r"vatex_validation_v1.0.json, item\[0\]: 'enCap' should be a non-empty list of non-empty strings"),
        (bm.valor32k, files.valor32k_test, lambda d: _set(d[1], "video_id", None),
         r"desc_test.json, item\[1\]: 'video_id' should be int or str, got None"),
        (bm.music_avqa, files.music_avqa_test, lambda d: _set(d[1], "templ_values", '["left"]'),
         r"avqa-test.json, item\[1\]: 2 placeholders in .* but templ_values \['left'\]"),
        (bm.music_avqa, files.music_avqa_test, lambda d: _drop(d[0], "anser"),
         r"avqa-test.json, item\[0\]: missing 'anser'"),
        (bm.avsd, files.avsd_dialogs, lambda d: _drop(d["dialogs"][0]["dialog"][1], "answer"),
         r"dialogs\[0\].dialog\[1\]: missing 'answer'"),
        (bm.avsd, files.avsd_dialogs, lambda d: _set(d, "dialogs", {}),
         r"valid_set4DSTC7-AVSD.json: 'dialogs' should be a list, got dict"),
    ],
)  # fmt: skip
def test_malformed_json_entry_is_named(tmp_path: Path, reader, write, edit, message: str) -> None:
    path = _edit_json(write(tmp_path), edit)
    with pytest.raises(ValueError, match=message):
        reader(path)


def test_vqa_malformed_annotations_are_named(tmp_path: Path) -> None:
    questions = files.vqa_questions(tmp_path)
    annotations = _edit_json(
        files.vqa_annotations(tmp_path), lambda d: _set(d["annotations"][0]["answers"][4], "answer", 2)
    )
    with pytest.raises(ValueError, match=r"annotations.json, annotations\[0\].answers\[4\]: 'answer' should be str"):
        bm.vqa(questions, annotations)
    annotations = _edit_json(files.vqa_annotations(tmp_path), lambda d: d["annotations"].pop(0))
    with pytest.raises(ValueError, match=r"annotations.json: no annotation for question_id 73001 \(.*questions\[1\]\)"):
        bm.vqa(questions, annotations)


def test_invalid_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "test_qa.json"
    path.write_text('[{"video_id": 7010,', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        bm.msrvtt_qa(path)


def test_msvd_mapping_problems_are_named(tmp_path: Path) -> None:
    qa, mapping = files.msvd_qa_original(tmp_path)
    mapping.write_text("-4wsuPCjDBc_5_15 vid1301\nbroken line here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"youtube_mapping.txt, line 2: expected '<clip name> vid<n>'"):
        bm.msvd_qa(qa, video_mapping=mapping)
    mapping.write_text("-4wsuPCjDBc_5_15 vid1301\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test_qa.json, item\[1\]: video_id 1302 is not in the video mapping"):
        bm.msvd_qa(qa, video_mapping=mapping)


def test_malformed_csv_rows_are_named(tmp_path: Path) -> None:
    path = files.audiocaps_test(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + "103550,abc,twenty,A dog barks\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.csv, line 5: 'start_time' should be an integer, got 'twenty'"):
        bm.audiocaps(path)
    path = files.clotho_eval(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + "short.wav,only one caption\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"clotho_captions_evaluation.csv, line 4: the number of fields differs"):
        bm.clotho(path)
    path.write_text("file_name,caption_1\nx.wav,hello\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"header lacks columns \['caption_2', 'caption_3', 'caption_4', 'caption_5'\]"
    ):
        bm.clotho(path)


def test_esc50_inconsistent_classes_are_named(tmp_path: Path) -> None:
    path = files.esc50_meta(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + "3-1-A-0.wav,3,0,cat,False,1,A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"esc50.csv, line 5: target 0 is 'cat' here but 'dog' before"):
        bm.esc50(path)
    path = files.esc50_meta(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace(",2,chirping", ",7,chirping"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"targets should be 0..2, got \[0, 1, 7\]"):
        bm.esc50(path)
