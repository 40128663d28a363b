"""The `automatic-speech-recognition` pipeline: inputs, long audio, batching, bad input, loading from a fresh process."""

import io
import textwrap
import threading

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from conftest import noise, run_like_a_user
from transformers import AutoModel, AutoProcessor, GenerationConfig, pipeline

from pipeline_asr import ASRPipeline, file_blocks, split_at_quiet_points
from processing_asr import load_audio


@pytest.fixture(scope="module")
def asr(tiny_random):
    model, processor = tiny_random
    return ASRPipeline(model=model, processor=processor)


def write(path, samples, rate, **kwargs):
    sf.write(path, samples, rate, **kwargs)
    return str(path)


@pytest.mark.parametrize(
    ("suffix", "rate", "channels", "subtype"),
    [
        (".wav", 44_100, 2, "PCM_16"),
        (".flac", 22_050, 1, "PCM_16"),
        (".ogg", 48_000, 2, "VORBIS"),
        (".mp3", 16_000, 1, None),
    ],
)
def test_transcribes_audio_files(asr, tmp_path, suffix, rate, channels, subtype):
    """Any format, rate and channel count: decoded, mixed to mono and resampled to 16 kHz before the model."""
    samples = np.stack([noise(1.2, seed=c, rate=rate) for c in range(channels)], axis=1)
    path = write(tmp_path / f"clip{suffix}", samples, rate, **({"subtype": subtype} if subtype else {}))
    decoded, decoded_rate = sf.read(path, dtype="float32", always_2d=True)
    mono_16k = soxr.resample(decoded.mean(1), decoded_rate, 16_000)
    np.testing.assert_allclose(load_audio(path), mono_16k, atol=1e-4)
    assert asr(path) == asr({"array": mono_16k, "sampling_rate": 16_000})


def test_every_input_form_gives_the_same_transcript(asr, tmp_path):
    clip = noise(1.5, seed=3)
    pcm16 = (clip * 32767).astype(np.int16)
    path = write(tmp_path / "clip.wav", pcm16, 16_000, subtype="PCM_16")
    expected = asr(pcm16.astype(np.float32) / 32768)["text"]
    forms = [
        path,
        open(path, "rb").read(),
        pcm16,
        torch.from_numpy(pcm16.astype(np.float32) / 32768),
        {"array": pcm16.astype(np.float32) / 32768, "sampling_rate": 16_000},
        {"raw": pcm16, "sampling_rate": 16_000},
        {"raw": pcm16.tolist(), "sampling_rate": 16_000},  # Python ints: int64
        pcm16.astype(np.int32),
        np.stack([pcm16, pcm16]),  # (channels, samples) stereo
    ]
    for form in forms:
        assert asr(form)["text"] == expected


@pytest.mark.parametrize(
    ("dtype", "bits"), [(np.int16, 16), (np.int32, 16), (np.int64, 16), (np.int32, 24), (np.int32, 32), (np.int64, 32)]
)
def test_integer_pcm_is_read_at_its_own_width_in_any_dtype(dtype, bits):
    clip = noise(0.5, seed=5)
    pcm = np.round(clip * 2 ** (bits - 1)).astype(dtype)
    np.testing.assert_allclose(load_audio(pcm), clip, atol=2.0 ** (1 - bits), rtol=0)


def test_any_sample_rate_is_resampled(asr):
    clip = noise(2.0, rate=8_000)
    assert load_audio({"array": clip, "sampling_rate": 8_000}).size == 32_000
    assert asr({"array": clip, "sampling_rate": 8_000}) == asr(soxr.resample(clip, 8_000, 16_000))


@pytest.mark.parametrize("prefill", ["padded batch", "clip by clip"])
def test_batch_size_four_matches_batch_size_one(asr, prefill):
    generate_kwargs = {"clip_by_clip_min_width": 0} if prefill == "clip by clip" else {}  # a wide model on a CPU
    clips = [noise(s, seed=i) for i, s in enumerate((0.3, 2.2, 6.1, 1.4, 45.0))]
    assert asr(clips, batch_size=4, generate_kwargs=generate_kwargs) == asr(clips, batch_size=1)


@pytest.mark.parametrize("prefill", ["padded batch", "clip by clip"])
def test_beam_search_in_a_batch_matches_one_clip_at_a_time(asr, prefill):
    """Each clip keeps its own duration cap across its beams; a wide model on a CPU, which prefills a greedy batch
    clip by clip, decodes beams from the padded batch."""
    beams = {"num_beams": 3, **({"clip_by_clip_min_width": 0} if prefill == "clip by clip" else {})}
    clips = [noise(s, seed=i) for i, s in enumerate((0.3, 2.2, 6.1))]
    one_by_one = [asr(clip, generate_kwargs=beams) for clip in clips]
    assert asr(clips, batch_size=3, generate_kwargs=beams) == one_by_one


def test_a_list_runs_longest_first_and_keeps_its_order(asr, tmp_path, monkeypatch):
    seconds = (0.3, 2.2, 6.1, 1.4)
    clips = [noise(s, seed=i) for i, s in enumerate(seconds)]
    clips[1] = write(tmp_path / "clip.wav", clips[1], 16_000)  # a file's duration comes from its header
    one_by_one = [asr(clip) for clip in clips]
    batch_frames = []
    generate = asr.model.generate

    def recording_generate(**inputs):
        batch_frames.append(inputs["input_features_mask"].sum(-1).tolist())
        return generate(**inputs)

    monkeypatch.setattr(asr.model, "generate", recording_generate)
    assert asr(clips, batch_size=2) == one_by_one
    frames = [round(s * 100) for s in sorted(seconds, reverse=True)]
    assert batch_frames == [frames[:2], frames[2:]]


def test_long_audio_is_split_at_quiet_points_with_timestamps(asr):
    speech = noise(75.0, seed=9)
    speech[int(24.0 * 16_000) : int(24.6 * 16_000)] = 0  # a pause the splitter should find
    result = asr(speech, return_timestamps=True, max_new_tokens=3)
    pieces = list(split_at_quiet_points([speech], 30 * 16_000, 20 * 16_000))
    assert 24.0 <= pieces[0][1].size / 16_000 <= 24.6
    assert sum(piece.size for _, piece in pieces) == speech.size
    assert all(piece.size <= 30 * 16_000 for _, piece in pieces)
    timestamps = [chunk["timestamp"] for chunk in result["chunks"]]
    assert all(end - start <= 30 for start, end in timestamps)
    assert result["text"] == " ".join(chunk["text"] for chunk in result["chunks"])


def test_files_are_streamed_in_bounded_blocks(tmp_path):
    path = write(tmp_path / "long.flac", noise(65.0, rate=44_100), 44_100)
    sizes = [block.size for block in file_blocks(path)]
    assert len(sizes) >= 7 and max(sizes) <= 10.5 * 16_000
    assert abs(sum(sizes) - 65 * 16_000) < 50


@pytest.mark.parametrize(
    ("bad_input", "message"),
    [
        (np.zeros(0, dtype=np.float32), "audio is empty"),
        (np.zeros(16_000, dtype=np.float32), "silent"),
        (np.array([0.1, np.nan] * 8000, dtype=np.float32), "NaN or Inf"),
        (np.array([0.1, np.inf] * 8000, dtype=np.float32), "NaN or Inf"),
        (42, "unsupported input type int"),
        ({"sampling_rate": 16_000}, "needs an 'array'"),
        (np.array(["a", "b"]), "expected numeric samples"),
        (np.zeros((2, 2, 2), dtype=np.float32), "expected 1-D"),
        (b"", "audio input is empty"),
        (b"definitely not audio", "could not decode audio"),
        (None, "audio input is None"),
        (noise(0.0003), "too short: 5 samples"),
        ({"array": noise(1.0)}, "needs their 'sampling_rate'"),
        ({"array": noise(1.0), "sampling_rate": None}, "needs their 'sampling_rate'"),
        ({"array": noise(1.0), "sampling_rate": -8000}, "sampling_rate must be a positive number, got -8000"),
        (np.stack([noise(1.0)] * 12), r"at most 8 channels, got shape \(12, 16000\)"),
        (noise(1.0) * 32767, r"expected float samples in \[-1, 1\]"),
    ],
)
def test_bad_input_gets_a_clear_error(asr, bad_input, message):
    with pytest.raises(ValueError, match=message):
        asr(bad_input)


def test_input_kinds_that_are_not_errors(asr):
    clip = noise(1.0)
    expected = asr(clip, max_new_tokens=3)
    assert (
        asr(torch.from_numpy(clip).bfloat16(), max_new_tokens=3)["text"]
        == asr(torch.from_numpy(clip).bfloat16().float().numpy(), max_new_tokens=3)["text"]
    )
    assert asr(np.stack([clip, clip], axis=1), max_new_tokens=3) == expected  # (samples, channels)
    assert asr([]) == []


def test_generate_kwargs_may_name_the_end_and_padding_tokens(asr):
    """The caller's `eos_token_id` and `pad_token_id` replace the processor's, in `generate` and in the transcript."""
    clip = noise(1.0, seed=6)
    inputs = asr.processor(audio=clip)
    free = asr.model.generate(**inputs, max_new_tokens=8, eos_token_id=-1, pad_token_id=0)
    tokens = free[0, inputs["input_ids"].shape[1] :].tolist()
    end = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])  # a token not written before
    expected = asr.processor.decode(tokens[:end], skip_special_tokens=True).strip()
    generate_kwargs = {"eos_token_id": tokens[end], "pad_token_id": 0}
    assert asr(clip, max_new_tokens=8, loop_guard=False, generate_kwargs=generate_kwargs)["text"] == expected
    config = GenerationConfig(max_new_tokens=8, do_sample=False, **generate_kwargs)
    assert asr(clip, loop_guard=False, generate_kwargs={"generation_config": config})["text"] == expected


def test_a_transcript_streamer_streams_every_piece_and_ends_with_the_call(asr):
    streamer = asr.transcript_streamer(timeout=60)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            asr(noise(20.0, seed=3), chunk_length_s=8, max_new_tokens=4, streamer=streamer, return_timestamps=True)
        )
    )
    worker.start()
    streamed = "".join(streamer)  # ends when the call does, not after the first of its three pieces
    worker.join()
    assert len(result["chunks"]) == 3 and all(chunk["text"] for chunk in result["chunks"])
    assert streamed.split() == result["text"].split() and result["chunks"][-1]["text"] in streamed
    failing = asr.transcript_streamer(timeout=60)
    with pytest.raises(ValueError, match="silent"):
        asr(np.zeros(16_000, dtype=np.float32), streamer=failing)
    assert list(failing) == []  # closed by the failed call: a reader never waits for text that will not come


@pytest.mark.parametrize("chunk_length_s", [0, 0.1, -1, 60])
def test_a_chunk_length_outside_one_to_thirty_seconds_is_a_clear_error(asr, chunk_length_s):
    with pytest.raises(ValueError, match=rf"chunk_length_s must lie in \[1, 30\] seconds, got {chunk_length_s}"):
        asr(noise(1.0), chunk_length_s=chunk_length_s)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"return_timestamps": "word"}, "return_timestamps='word' is not supported: True gives each piece's start"),
        ({"generate_kwargs": {"num_return_sequences": 2}}, "one transcript per clip: num_return_sequences must be 1"),
    ],
)
def test_options_the_pipeline_cannot_honour_are_a_clear_error(asr, options, message):
    with pytest.raises(ValueError, match=message):
        asr(noise(1.0), **options)


def test_bad_files_get_a_clear_error(asr, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt.*could not decode audio"):
        asr(str(text_file))
    with pytest.raises(ValueError, match=r"missing.wav.*no such file"):
        asr(str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="a folder, not a file"):
        asr(str(tmp_path))
    truncated = io.BytesIO()
    sf.write(truncated, noise(1.0), 16_000, format="WAV")
    (tmp_path / "truncated.wav").write_bytes(truncated.getvalue()[:30])
    with pytest.raises(ValueError, match="truncated.wav"):
        asr(str(tmp_path / "truncated.wav"))


@pytest.mark.slow
def test_smoke_checkpoint_loads_in_a_fresh_process_outside_the_repo(smoke_dir, tmp_path):
    """The issue's acceptance: from a directory outside the repo with nothing of it importable."""
    script = textwrap.dedent(
        f"""
        import importlib.util, numpy as np, soundfile as sf
        assert importlib.util.find_spec("modeling_asr") is None  # nothing of the repo is importable
        from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
        model_dir = {str(smoke_dir)!r}
        asr = pipeline("automatic-speech-recognition", model=model_dir, trust_remote_code=True)
        rng = np.random.default_rng(0)
        stereo = (rng.standard_normal((44_100 * 2, 2)) * 0.1).astype(np.float32)
        sf.write("stereo.wav", stereo, 44_100)
        print("wav", asr("stereo.wav"))
        print("8k", asr({{"array": (rng.standard_normal(16_000) * 0.1).astype(np.float32), "sampling_rate": 8_000}}))
        print("short", asr((rng.standard_normal(4_800) * 0.1).astype(np.float32)))
        long = asr((rng.standard_normal(16_000 * 75) * 0.1).astype(np.float32), return_timestamps=True)
        assert long["chunks"] and long["chunks"][-1]["timestamp"][1] == 75.0, long
        clips = [(rng.standard_normal(int(16_000 * s)) * 0.1).astype(np.float32) for s in (0.5, 3.0, 7.5, 1.2)]
        assert asr(clips, batch_size=4) == asr(clips, batch_size=1)
        assert type(AutoModel.from_pretrained(model_dir, trust_remote_code=True)).__name__ == "ASRModel"
        assert type(AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)).__name__ == "ASRProcessor"
        assert AutoConfig.from_pretrained(model_dir, trust_remote_code=True).model_type == "tiny_audio"
        print("OK")
        """
    )
    run_like_a_user(script, tmp_path)


def test_a_model_or_pipeline_loaded_as_remote_code_saves_a_folder_that_pipeline_loads(asr, tmp_path):
    """Remote code runs from a cache that holds the model's own modules only, not the pipeline beside them."""
    asr.model.save_pretrained(tmp_path / "model")
    asr.processor.save_pretrained(tmp_path / "model")
    remote_model = AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True)
    remote_model.save_pretrained(tmp_path / "resaved")
    AutoProcessor.from_pretrained(tmp_path / "model", trust_remote_code=True).save_pretrained(tmp_path / "resaved")
    remote = pipeline("automatic-speech-recognition", model=str(tmp_path / "resaved"), trust_remote_code=True)
    remote.save_pretrained(tmp_path / "from_pipeline")
    again = pipeline("automatic-speech-recognition", model=str(tmp_path / "from_pipeline"), trust_remote_code=True)
    clip = noise(1.0, seed=7)
    assert again(clip, max_new_tokens=4) == remote(clip, max_new_tokens=4) == asr(clip, max_new_tokens=4)


def test_pieces_follow_the_models_chunk_length_unless_the_call_sets_one(asr, monkeypatch):
    """A model trained on short clips transcribes pieces of its own `chunk_length_s`; a call can still choose."""
    speech = noise(20.0, seed=11)
    monkeypatch.setattr(asr.model.config, "chunk_length_s", 8.0)
    pieces = asr(speech, return_timestamps=True, max_new_tokens=2)["chunks"]
    assert len(pieces) == 3 and all(end - start <= 8.0 for start, end in (p["timestamp"] for p in pieces))
    pieces = asr(speech, return_timestamps=True, max_new_tokens=2, chunk_length_s=30)["chunks"]
    assert [p["timestamp"] for p in pieces] == [(0.0, 20.0)]
