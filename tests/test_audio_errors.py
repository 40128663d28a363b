"""One audio-validation path: every `InvalidAudioError` carries a reason, which the processor, the pipeline's
streamed checks and the training data's skip counts all use."""

import pickle
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from conftest import noise

from pipeline_asr import ASRPipeline, file_blocks
from processing_asr import InvalidAudioError, audio_file, check_audio, checked_blocks, load_audio
from tiny_audio.data import SKIP_REASONS, decode_example


def nan_at(seconds: float, position: float) -> np.ndarray:
    samples = noise(seconds)
    samples[int(position * 16_000)] = np.nan
    return samples


@pytest.mark.parametrize(
    ("source", "reason", "message"),
    [
        (42, "unsupported", "unsupported input type int"),
        ({"sampling_rate": 16_000}, "unsupported", "needs an 'array'"),
        (np.array(["a", "b"]), "unsupported", "expected numeric samples"),
        (np.zeros((2, 2, 2), dtype=np.float32), "unsupported", "expected 1-D"),
        ("missing.wav", "missing", "no such file"),
        ({"array": noise(0.5)}, "unsupported", "needs their 'sampling_rate'"),
        (b"definitely not audio", "undecodable", r"^audio bytes: could not decode audio \(Format not recognised\.\)$"),
    ],
)
def test_loading_errors_carry_their_reason(tmp_path, source, reason, message):
    if isinstance(source, str):
        source = tmp_path / source
    with pytest.raises(InvalidAudioError, match=message) as error:
        load_audio(source)
    assert error.value.reason == reason


@pytest.mark.parametrize("rate", [0, -8000, "16k", True])
def test_a_sampling_rate_that_is_not_a_positive_number_is_refused(rate):
    with pytest.raises(InvalidAudioError, match="sampling_rate must be a positive number") as error:
        load_audio(noise(0.5), sampling_rate=rate)
    assert error.value.reason == "unsupported"


@pytest.mark.parametrize(
    ("samples", "reason", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty", "clip is empty"),
        (np.zeros(16_000, dtype=np.float32), "silent", "clip is silent"),
        (nan_at(2.0, 1.5), "non_finite", r"clip contains NaN or Inf samples \(first at 1.50 s\)"),
        (noise(0.005), "too_short", "clip is too short: 80 samples"),
        (noise(2.0), "too_long", "clip is 2.0 s long, the limit is 1 s"),
        (noise(0.5) * 1000, "out_of_range", r"clip has samples up to \d+, expected float samples in \[-1, 1\]"),
    ],
)
def test_check_errors_carry_their_reason(samples, reason, message):
    with pytest.raises(InvalidAudioError, match=message) as error:
        check_audio(samples, "clip", max_seconds=1)
    assert error.value.reason == reason


@pytest.mark.parametrize("size", [160, 200])
def test_a_clip_too_short_for_whisper_features_is_a_clear_error(tiny_random, size):
    """Whisper's features reflect half a window (200 samples) at each edge: shorter clips are too short."""
    model, processor = tiny_random
    for transcribe in (processor, ASRPipeline(model=model, processor=processor)):
        with pytest.raises(InvalidAudioError, match=f"too short: {size} samples, at least 201") as error:
            transcribe(noise(size / 16_000))
        assert error.value.reason == "too_short"
    assert processor(audio=noise(201 / 16_000))["input_features"].shape[-1] == 1


def test_an_error_of_the_caller_inside_an_open_audio_file_is_not_called_a_decoding_error(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(0.5), 16_000)
    with pytest.raises(RuntimeError, match="the caller's own bug"), audio_file(path):
        raise RuntimeError("the caller's own bug")


def test_a_processor_call_without_clips_is_a_clear_error(tiny_random):
    _, processor = tiny_random
    for audio in (None, []):
        with pytest.raises(ValueError, match="one clip or a non-empty list of clips"):
            processor(audio=audio)


def test_reason_survives_pickling_and_must_be_known():
    error = pickle.loads(pickle.dumps(InvalidAudioError("clip is silent", "silent")))
    assert (str(error), error.reason) == ("clip is silent", "silent")
    with pytest.raises(ValueError, match="unknown InvalidAudioError reason 'quiet'"):
        InvalidAudioError("clip is quiet", "quiet")


def test_streamed_check_names_the_position_in_the_whole_recording():
    blocks = [noise(10.0, seed=0), noise(10.0, seed=1), nan_at(10.0, 2.25)]
    passed = []
    with pytest.raises(InvalidAudioError, match=r"first at 22.25 s") as error:
        for block in checked_blocks(blocks):
            passed.append(block.size)
    assert error.value.reason == "non_finite" and passed == [160_000, 160_000]
    for blocks, reason in (([np.zeros(0, dtype=np.float32)] * 2, "empty"), ([np.zeros(800, np.float32)] * 3, "silent")):
        with pytest.raises(InvalidAudioError, match="audio is " + reason) as error:
            list(checked_blocks(blocks))
        assert error.value.reason == reason


def test_pipeline_names_the_nan_position_in_a_long_file(tiny_random, tmp_path):
    model, processor = tiny_random
    path = tmp_path / "long.wav"
    sf.write(path, nan_at(65.0, 47.5), 16_000, subtype="FLOAT")
    with pytest.raises(InvalidAudioError, match=r"file '.*long.wav' contains NaN or Inf samples \(first at 47.50 s\)"):
        ASRPipeline(model=model, processor=processor)(str(path))


def test_files_stream_without_being_decoded_whole(tmp_path):
    path = tmp_path / "long.flac"
    seconds, rate = 90, 44_100
    sf.write(path, np.stack([noise(seconds, seed=c, rate=rate) for c in range(2)], axis=1), rate)
    whole_file_bytes = seconds * rate * 2 * 4  # float32 stereo, before any float64 or resampled copy
    tracemalloc.start()
    try:
        total = sum(block.size for block in file_blocks(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(total - seconds * 16_000) < 50
    assert peak < whole_file_bytes / 2, (
        f"peak {peak / 1e6:.0f} MB while streaming a {whole_file_bytes / 1e6:.0f} MB file"
    )


def test_training_skip_counts_come_from_the_reason(tmp_path):
    assert set(SKIP_REASONS) == set(InvalidAudioError.REASONS)
    cases = {
        "empty_audio": {"array": np.zeros(16_000, dtype=np.float32), "sampling_rate": 16_000},
        "non_finite": {"array": nan_at(1.0, 0.5), "sampling_rate": 16_000},
        "too_long": {"array": noise(3.0), "sampling_rate": 16_000},
        "undecodable": {"path": str(tmp_path / "missing.wav")},
    }
    for expected, audio in cases.items():
        assert decode_example({"audio": audio, "text": "one"}, 0, max_seconds=2.0) == (None, expected)
    samples, reason = decode_example({"audio": {"array": noise(1.0), "sampling_rate": 16_000}, "text": "one"}, 0, 2.0)
    assert reason is None and samples.size == 16_000
