"""A saved model loads quickly with the Hub unreachable and `HF_HUB_OFFLINE` unset: one short probe, then the mirror."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import noise
from transformers import AutoConfig, AutoModelForCausalLM, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from configuration_asr import MIRROR_ENV
from pipeline_asr import ASRPipeline
from tiny_audio.presets import MODEL_PRESETS, build, build_offline_tokenizer

AUDIO_ID, TEXT_ID = "tiny-audio-test/whisper", "tiny-audio-test/llm"


def save_mirror(root):
    """Tiny random bases laid out like `tiny_audio.offline_bases` lays out the real ones."""
    audio_settings = dict(MODEL_PRESETS["tiny-random"]["audio_config"])
    del audio_settings["model_type"]
    WhisperModel(WhisperConfig(**audio_settings)).save_pretrained(root / AUDIO_ID)
    WhisperFeatureExtractor(feature_size=audio_settings["num_mel_bins"]).save_pretrained(root / AUDIO_ID)
    text_config = AutoConfig.for_model(**MODEL_PRESETS["tiny-random"]["text_config"])
    AutoModelForCausalLM.from_config(text_config).save_pretrained(root / TEXT_ID)
    build_offline_tokenizer(text_config.vocab_size).save_pretrained(root / TEXT_ID)


@pytest.mark.slow
def test_unreachable_hub_falls_back_to_the_mirror_after_one_probe(tmp_path, monkeypatch):
    mirror, checkpoint = tmp_path / "mirror", tmp_path / "checkpoint"
    save_mirror(mirror)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    # HF_HUB_OFFLINE=1 in this process; the projector width left to default to the LLM's
    model, processor = build("tiny", audio_model_id=AUDIO_ID, text_model_id=TEXT_ID, projector_hidden_size=None)
    # The base configs are loaded before the config is built, so what derives from them is right from the start.
    assert model.config.projector_hidden_size == model.config.text_config.hidden_size == 64
    assert model.config.audio_config.d_model == model.audio_encoder.config.d_model == 64
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    clip = noise(2.0, seed=3)
    np.save(tmp_path / "clip.npy", clip)
    expected = ASRPipeline(model=model.eval(), processor=processor)(clip)["text"]

    script = textwrap.dedent(f"""
        import json
        import numpy as np
        from transformers import pipeline
        asr = pipeline("automatic-speech-recognition", model={str(checkpoint)!r}, trust_remote_code=True)
        print(json.dumps({{"text": asr(np.load("clip.npy"))["text"]}}))
    """)
    # A Hub that accepts connections and never answers: every request waits for its timeout.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent_hub:
        env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(
            HF_ENDPOINT=f"http://127.0.0.1:{silent_hub.getsockname()[1]}",
            HF_HOME=str(tmp_path / "hf"),
            PYTHONPATH="",
            **{MIRROR_ENV: str(mirror)},
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    # one bounded probe for both base models, then offline: no request waits on the silent Hub
    assert result.stderr.count("does not answer; working offline") == 1
    assert output["text"] == expected
