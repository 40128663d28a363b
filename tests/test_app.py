"""Tests for app.py, the Gradio demo: a real server on localhost, driven by gradio_client and by headless Chromium.

The model is the tiny-random build with a generation config that forbids special and whitespace-only tokens and a
small token cap, so it always writes a short non-empty (meaningless) transcript: the page's text can be checked
against the pipeline's own output.
"""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tiny_audio.app_screenshot import CHROMIUM, running_app, screenshot

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

MAX_SECONDS = 60
RATE = 16_000


def speech(text: str) -> np.ndarray:
    """espeak-ng speech, or speech-like noise bursts where espeak-ng is missing (the model is random anyway)."""
    if shutil.which("espeak-ng"):
        from tiny_audio.speech_corpus import synthesize

        return synthesize(text)
    rng = np.random.default_rng(len(text))
    bursts = [np.concatenate([rng.standard_normal(RATE // 4) * 0.2, np.zeros(RATE // 10)]) for _ in text.split()]
    return np.concatenate(bursts).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tiny_audio.presets import build

    model, processor = build("tiny-random", min_new_tokens_cap=4, max_new_tokens_per_second=0.25)
    tokenizer = processor.tokenizer
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    model.generation_config.suppress_tokens = blank
    directory = tmp_path_factory.mktemp("tiny_random_app")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("clips")
    said = speech("The quick brown fox jumps over the lazy dog.")
    gap = np.zeros(RATE // 2, dtype=np.float32)
    long = np.concatenate([np.concatenate([said, gap])] * int(np.ceil(40 * RATE / (said.size + gap.size))))
    paths = {
        name: directory / name
        for name in ("short.wav", "long.flac", "too_long.wav", "silent.wav", "empty.wav", "bad.wav")
    }
    sf.write(paths["short.wav"], said, RATE)
    stereo_44k = np.repeat(np.interp(np.arange(0, long.size, RATE / 44_100), np.arange(long.size), long)[:, None], 2, 1)
    sf.write(paths["long.flac"], stereo_44k, 44_100)  # any rate, any channel count, any format soundfile reads
    sf.write(paths["too_long.wav"], np.tile(said, int(MAX_SECONDS * RATE / said.size) + 2), RATE)
    sf.write(paths["silent.wav"], np.zeros(RATE, dtype=np.float32), RATE)
    sf.write(paths["empty.wav"], np.zeros(0, dtype=np.float32), RATE)
    paths["bad.wav"].write_text("this is not audio")
    return paths


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("app_cache")
    with running_app(model_dir, "--max-seconds", str(MAX_SECONDS), "--cache-dir", str(cache)) as url:
        assert (cache / "example.wav").is_file() or not shutil.which("espeak-ng")
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def reference(model_dir):
    """What the pipeline itself says about a clip: the app must show the same."""
    from transformers import pipeline

    pipe = pipeline("automatic-speech-recognition", model=str(model_dir), trust_remote_code=True)
    return lambda path: pipe(str(path), return_timestamps=True)


def transcribe(client, path):
    from gradio_client import handle_file

    job = client.submit(handle_file(str(path)), api_name="/transcribe")
    return job.result(timeout=60), job.outputs()


def test_transcript_streams_and_reports_the_real_time_factor(client, clips, reference):
    (text, segments, status), updates = transcribe(client, clips["short.wav"])
    expected = reference(clips["short.wav"])
    assert text and text == expected["text"]
    assert re.fullmatch(r"Done: \d+\.\d s of audio in \d+\.\d\d s, real-time factor \d+\.\d{3}\.", status), status
    [(start, end, segment)] = segments["data"]
    assert (start, segment) == (0, text) and end == pytest.approx(sf.info(clips["short.wav"]).duration, abs=0.01)
    assert updates[0][2].startswith("Transcribing") and updates[0][0] == ""
    partial = [update[0] for update in updates[1:-1]]
    assert partial and all(update[2].startswith("Transcribing") for update in updates[1:-1])
    assert partial[-1].strip() == text  # the text grew while it was generated


def test_long_audio_comes_back_as_timestamped_segments(client, clips, reference):
    (text, segments, status), _ = transcribe(client, clips["long.flac"])
    expected = reference(clips["long.flac"])
    rows = segments["data"]
    assert len(rows) >= 2 and len(rows) == len(expected["chunks"]) and text == expected["text"]
    assert rows[0][0] == 0 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert rows[-1][1] == pytest.approx(sf.info(clips["long.flac"]).duration, abs=0.05)
    assert f"{len(rows)} segments" in status and "real-time factor" in status


def test_bad_input_is_an_error_message_and_the_server_keeps_serving(client, clips):
    from gradio_client.exceptions import AppError

    expected = {
        "bad.wav": r"file 'bad\.wav': could not decode audio",  # the upload's own name, not a server path
        "silent.wav": r"file 'silent\.wav' is silent",
        "empty.wav": r"file 'empty\.wav' is empty",
        "too_long.wav": rf"\d+\.\d s long; this demo accepts at most {MAX_SECONDS} s",
    }
    for name, message in expected.items():
        with pytest.raises(AppError, match=message) as error:
            transcribe(client, clips[name])
        assert "/tmp" not in str(error.value) and "Traceback" not in str(error.value)
    (text, _, status), _ = transcribe(client, clips["short.wav"])
    assert text and status.startswith("Done")


def test_one_transcription_at_a_time(model_dir, tmp_path):
    from app import build_demo

    demo = build_demo(str(model_dir), cache_dir=tmp_path)
    runs = [fn for fn in demo.fns.values() if fn.name == "transcribe"]
    assert len(runs) == 2  # the Transcribe button and the example clip
    assert {fn.concurrency_id for fn in runs} == {"model"} and demo._queue.default_concurrency_limit == 1


@pytest.mark.parametrize("model", [None, "no/such-model-anywhere"])
def test_missing_model_is_explained_on_the_page(model, tmp_path):
    from app import build_demo

    demo = build_demo(model, cache_dir=tmp_path)
    notes = [block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "model-error"]
    assert (
        len(notes) == 1 and ("No model found" if model is None else f"Could not load the model `{model}`") in notes[0]
    )
    assert not [fn for fn in demo.fns.values() if fn.name == "transcribe"]


def test_model_defaults_to_env_then_outputs_demo(monkeypatch):
    import app

    monkeypatch.setenv("ASR_MODEL", "someone/tiny-audio")
    assert app.default_model() == "someone/tiny-audio"
    monkeypatch.delenv("ASR_MODEL")
    assert app.default_model() == (str(app.DEMO_MODEL) if app.DEMO_MODEL.is_dir() else None)


@pytest.mark.slow
def test_page_in_headless_chromium(server, clips, reference, tmp_path):
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; CI installs it with apt-get install chromium")
        pytest.skip("apt-get install chromium")
    out = tmp_path / "app.png"
    seen = screenshot(server, out, clips["short.wav"])
    assert seen["status"].startswith("Done") and "real-time factor" in seen["status"], seen
    assert seen["transcript"] == reference(clips["short.wav"])["text"]
    assert seen["errors"] == []
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
