"""Non-speech clips with empty transcripts: the processor's target, the data layer and a training run."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset

from tiny_audio.augmentation import NON_SPEECH_KINDS, non_speech_clip, non_speech_examples
from tiny_audio.data import ASRCollator, add_non_speech, build_encoder_cache, synthetic_tones
from tiny_audio.presets import build
from train_trainer import main


@pytest.fixture(scope="module")
def tiny_random():
    return build("tiny-random")


@pytest.mark.parametrize("transcript", ["", "   "])
def test_empty_transcript_targets_the_end_of_turn_token_alone(tiny_random, transcript):
    _, processor = tiny_random
    row = processor.tokenize(16_000, transcript)
    prompt = processor.tokenize(16_000)["input_ids"]
    assert row["input_ids"] == prompt + [processor.end_of_turn_token_id]
    assert [t for t in row["labels"] if t != -100] == [processor.end_of_turn_token_id]
    spoken = processor.tokenize(16_000, "one two")
    assert len([t for t in spoken["labels"] if t != -100]) > 1
    with pytest.raises(TypeError, match="sample 3 is a int"):
        processor.tokenize(16_000, 5, index=3)


@pytest.mark.parametrize("kind", NON_SPEECH_KINDS)
def test_every_non_speech_kind_is_seeded_bounded_and_finite(kind):
    audio, name = non_speech_clip(7, kind)
    again, same_name = non_speech_clip(7, kind)
    other, _ = non_speech_clip(8, kind)
    assert name == same_name and name.split(":")[0] in (kind, "noise")
    assert np.array_equal(audio, again) and not np.array_equal(audio, other)
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert 1.0 <= audio.size / 16_000 <= 10.0
    assert 0 < np.abs(audio).max() <= 0.5
    with pytest.raises(ValueError, match="unknown non-speech kind 'speech'"):
        non_speech_clip(1, "speech")


def test_non_speech_examples_cycle_through_the_kinds():
    rows = non_speech_examples(len(NON_SPEECH_KINDS) + 1, seed=3)
    assert all(row["text"] == "" and row["audio"]["sampling_rate"] == 16_000 for row in rows)
    assert rows[0]["kind"].startswith("noise:") and rows[-1]["kind"].startswith("noise:")  # the cycle restarts
    assert len({row["kind"].split(":")[0] for row in rows}) >= 5  # music/drums fall back to noise without samples
    assert np.array_equal(non_speech_examples(2, seed=3)[1]["audio"]["array"], rows[1]["audio"]["array"])


def test_add_non_speech_keeps_the_audio_form_of_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    arrays = Dataset.from_list([{**row, "length": 1.0} for row in synthetic_tones("train", 8)])
    mixed = add_non_speech(arrays, 0.5, seed=1)
    assert len(mixed) == 12 and mixed["text"][8:] == [""] * 4
    assert mixed[8]["length"] == len(mixed[8]["audio"]["array"]) / 16_000

    paths = Dataset.from_list([{"audio": "/nowhere/a.flac", "text": "a", "length": 1.0}] * 4)
    mixed = add_non_speech(paths, 0.5, seed=1)
    written = sf.read(mixed[5]["audio"])[0]
    assert len(mixed) == 6 and abs(written.size / 16_000 - mixed[5]["length"]) < 1e-6

    assert add_non_speech(paths, 0.0, seed=1) is paths
    with pytest.raises(ValueError, match="non_speech_fraction"):
        add_non_speech(paths, -1.0, seed=1)


def test_cached_collator_handles_non_speech_rows(tiny_random):
    model, processor = tiny_random
    speech = Dataset.from_list([{**row, "length": 1.0} for row in synthetic_tones("train", 2)])
    dataset = add_non_speech(speech, 1.0, seed=0)
    cache = build_encoder_cache(model, processor, dataset)
    rows = [{**dataset[i], "cache_index": i} for i in range(len(dataset))]
    batch = ASRCollator(processor, cache)(rows)
    labels = batch["labels"][2:]  # the two non-speech rows
    assert (labels != -100).sum(-1).tolist() == [1, 1]
    assert (labels[labels != -100] == processor.end_of_turn_token_id).all()
    with torch.no_grad():
        assert model(**batch).loss.item() > 0


def test_training_with_non_speech_clips(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    metrics = main(
        [
            "--preset",
            "tiny-random",
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--ctc_warmup_steps",
            "2",
            "--ctc_batch_size",
            "4",
            "--cache_encoder_outputs",
            "true",
            "--non_speech_fraction",
            "0.25",
            "--eval_split_name",
            "",
        ]
    )
    assert np.isfinite(metrics["train_loss"])
    assert "added 16 non-speech clips (empty transcripts) to 64 training examples" in caplog.text
