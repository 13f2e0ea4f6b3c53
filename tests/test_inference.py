"""The generation engine: batched = one by one, streamed = not streamed, cached turns = re-run turns, stops, seeds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from chatbridge.config_apps import GenerationSettings
from chatbridge.data.templates import render_single_turn
from chatbridge.data.tokenize import encode_conversation
from chatbridge.inference import session as session_module
from chatbridge.inference.engine import InferenceEngine, Request
from chatbridge.inference.generation import StopOnText, cut_at_stop
from chatbridge.inference.media import MediaFile, MediaInputError, MediaReader, media_files
from chatbridge.inference.session import ChatSession, ContextOverflow
from chatbridge.models.llm import load_tokenizer
from chatbridge.synthetic.world import SCALES, ensure_world
from tests.conftest import REPO
from tests.tiny_sizes import SMALL

GREEDY = GenerationSettings(max_new_tokens=12, stop="###")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world") / "world", sizes=SCALES["tiny"]).root


@pytest.fixture
def engine(tiny_model, tiny_train_config, tiny_llm_dir) -> InferenceEngine:
    reader = MediaReader(tiny_train_config.processor, tiny_train_config.model)
    return InferenceEngine(tiny_model, load_tokenizer(tiny_llm_dir), reader, GREEDY)


def image(world, number: int) -> MediaFile:
    return MediaFile(world / "images" / f"img_{number:05d}.png", "image")


def requests(world) -> list[Request]:
    """Prompts of different lengths and media (none, one image, a video with its sound track, image + audio)."""
    return [
        Request("what is it?", [image(world, 0)]),
        Request(
            "describe what you see and hear in this clip, please, in detail",
            media_files(videos=[world / "frames" / "vid_00001"], audios=[world / "audios" / "aud_00002.wav"]),
        ),
        Request("hello there"),
        Request("and this one?", [image(world, 3), MediaFile(world / "audios" / "aud_00000.wav", "audio")]),
    ]


def test_batched_greedy_equals_one_prompt_at_a_time(engine, world):
    batch = requests(world)
    together = engine.generate(batch)
    alone = [engine.generate([request])[0] for request in batch]
    assert together == alone
    assert any(len(answer) > 0 for answer in together)  # the tiny random LM says something


def test_streamed_text_equals_the_answer(engine, world):
    plain = ChatSession(engine).ask("what is it?", [image(world, 1)])
    session = ChatSession(engine)
    pieces = list(session.ask_stream("what is it?", [image(world, 1)]))
    assert "".join(pieces).strip() == plain.answer == session.last.answer
    assert len(pieces) >= 1


def test_a_cached_second_turn_equals_the_turn_rerun_from_scratch(engine, world, monkeypatch):
    seen_caches = []
    original = session_module.generate_from_embeds

    def spy(*args, **kwargs):
        seen_caches.append(args[5] if len(args) > 5 else kwargs.get("cache"))
        return original(*args, **kwargs)

    monkeypatch.setattr(session_module, "generate_from_embeds", spy)
    cached = ChatSession(engine)
    cached.ask("what is it?", [image(world, 2)])
    second = cached.ask("and its colour?")
    assert seen_caches[0] is None and seen_caches[1] is not None  # the second turn really reused the cache
    from_scratch = ChatSession(engine)
    from_scratch.ask("what is it?", [image(world, 2)])
    from_scratch.cache = None  # forget the cache: the whole history is computed again
    assert from_scratch.ask("and its colour?").answer == second.answer
    assert from_scratch.last.prompt_tokens == second.prompt_tokens


def test_first_turn_tokens_equal_the_training_tokenisation_up_to_the_answer(engine, world):
    media = engine.encode_media([image(world, 0)])
    prompt = engine.turn_prompt("what colour is the shape?", media, first=True).encoded
    training = encode_conversation(
        render_single_turn(("image",), "what colour is the shape?", "red"), engine.tokenizer, [4], max_txt_len=500
    )
    assert training.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert training.media_spans == prompt.media_spans
    first_target = next(i for i, label in enumerate(training.labels) if label != -100)
    assert first_target == len(prompt.input_ids)  # the answer starts right where the prompt ends


def test_the_stop_text_ends_each_sequence_of_a_batch_on_its_own(tiny_llm_dir):
    tokenizer = load_tokenizer(tiny_llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm_dir).eval()
    stop_ids = tokenizer.encode("a###", add_special_tokens=False)

    class ForceStopOnRowZero:  # row 0 writes "a###" and must stop; row 1 never does
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1]
            forced = scores.clone()
            if step < len(stop_ids):
                forced[0] = -1e9
                forced[0, stop_ids[step]] = 0
            forced[:, tokenizer.eos_token_id] = -1e9
            forced[1, stop_ids] = -1e9
            return forced

    embeds = llm.get_input_embeddings()(torch.tensor([[1, 5, 6], [1, 7, 8]]))
    with torch.no_grad():
        out = llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(2, 3, dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
            logits_processor=[ForceStopOnRowZero()],
            stopping_criteria=[StopOnText(tokenizer, "###")],
            pad_token_id=tokenizer.pad_token_id,
        )
    row0, row1 = out.tolist()
    assert row0[: len(stop_ids)] == stop_ids and set(row0[len(stop_ids) :]) <= {tokenizer.pad_token_id}
    assert len(row1) == 10 and tokenizer.pad_token_id not in row1  # row 1 ran to max_new_tokens
    assert cut_at_stop(tokenizer.decode(row0, skip_special_tokens=True), "###") == "a"


def test_a_seed_makes_sampling_repeatable(engine, world):
    sampling = dataclasses.replace(GREEDY, do_sample=True, temperature=1.5, top_p=1.0, seed=7)
    batch = requests(world)[:2]
    first = engine.generate(batch, sampling)
    torch.rand(10)  # whatever ran in between
    assert engine.generate(batch, sampling) == first
    others = {tuple(engine.generate(batch, dataclasses.replace(sampling, seed=seed))) for seed in range(4)}
    assert len(others) > 1  # the seed matters


def test_beam_search_runs_after_a_greedy_turn_and_the_next_turn_recomputes(engine, world):
    session = ChatSession(engine)
    session.ask("what is it?", [image(world, 0)])
    assert session.cache is not None
    session.settings = dataclasses.replace(GREEDY, num_beams=3)
    pieces: list[str] = []
    beam = session.ask("and now?", on_text=pieces.append)  # the greedy turn's cache must not reach beam search
    assert session.cache is None  # a beam cache holds beams, not the conversation
    assert pieces == [beam.answer]  # beam search cannot stream: its answer comes whole
    session.settings = GREEDY
    assert isinstance(session.ask("and then?").answer, str)


def test_overflow_drops_the_oldest_text_never_media_and_says_so(engine, world):
    session = ChatSession(engine, dataclasses.replace(GREEDY, max_new_tokens=4))
    session.ask("what is it?", [image(world, 0)])
    session.ask("and its colour, said in a long sentence with many words?")
    limit = session.length() + 4  # the history and one answer fit, but not another question too
    session.settings = dataclasses.replace(session.settings, max_context=limit)
    result = session.ask("and now?")
    assert result.notice is not None and f"to fit the {limit}-token context" in result.notice
    assert session.turns[0].question is None and len(session.turns[0].media) == 1  # text gone, medium kept
    assert result.prompt_tokens + 4 <= limit


def test_overflow_refused_when_asked_to(engine, world):
    session = ChatSession(engine, dataclasses.replace(GREEDY, max_new_tokens=4))
    session.ask("what is it?", [image(world, 0)])
    limit = session.length() + 4
    session.settings = dataclasses.replace(session.settings, max_context=limit, overflow="refuse")
    with pytest.raises(ContextOverflow, match=rf"needs \d+ positions .* but the context holds {limit}"):
        session.ask("and its colour, said in a long sentence with many words?")
    assert len(session.turns) == 1  # the refused turn left nothing behind


def test_faithful_mode_reruns_the_reference_rendering(engine, world):
    session = ChatSession(engine, dataclasses.replace(GREEDY, faithful=True))
    session.ask("what is it?", [image(world, 0)])
    session.ask("and now?")
    assert session.cache is None and session.cached_ids == []


@pytest.mark.parametrize(
    ("name", "content", "modality", "message"),
    [
        ("broken.png", b"not an image", "image", r"broken.png: cannot use it as image: it cannot be decoded"),
        ("notes.txt", b"hello", "image", r"notes.txt: unsupported image type '.txt'"),
        ("empty.wav", b"", "audio", r"empty.wav: cannot use it as audio: it is empty"),
        ("missing.wav", None, "audio", r"missing.wav: no such file"),
    ],
)
def test_a_bad_file_gives_a_message_naming_it(engine, tmp_path, name, content, modality, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaInputError, match=message):
        engine.generate([Request("what is it?", [MediaFile(path, modality)])])


def test_an_oversized_file_is_refused_before_reading(tiny_train_config, world):
    reader = MediaReader(tiny_train_config.processor, tiny_train_config.model, max_megabytes=0.0001)
    with pytest.raises(MediaInputError, match=r"img_00000.png: .* MB is over the 0.0001 MB limit"):
        reader.read(image(world, 0))


def test_low_memory_loading_is_refused_on_cpu_with_one_line():
    from chatbridge.config import LLMConfig
    from chatbridge.models.llm import low_memory_arguments

    with pytest.raises(ValueError, match=r"^model.llm.quantization: low-memory loading needs a CUDA device"):
        low_memory_arguments(LLMConfig(quantization="8bit"))
    assert low_memory_arguments(LLMConfig()) == {}


def test_chat_cli_reports_a_corrupt_file_in_one_line(tmp_path, tiny_llm_dir, tiny_model, tiny_config):
    from chatbridge.config import TrainConfig
    from chatbridge.models.loading import save_chatbridge_checkpoint

    save_chatbridge_checkpoint(tiny_model, TrainConfig(model=tiny_config), tmp_path / "ckpt")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    command = [
        sys.executable,
        str(REPO / "chat.py"),
        "--cfg-path",
        str(REPO / "eval_configs" / "chatbridge_tiny_eval.yaml"),
        "--image",
        str(tmp_path / "bad.png"),
        "--question",
        "what?",
        "--options",
        *SMALL,
        f"model.llm.path={tiny_llm_dir}",
        f"model.checkpoint={tmp_path / 'ckpt'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bad.png'}: cannot use it as image: it cannot be decoded "
        "(UnidentifiedImageError: cannot identify image file '" + str(tmp_path / "bad.png") + "')"
    )
