"""Tests for speech_corpus: espeak-ng synthesis, the fortune sentence source and corpus building with several
engines and augmentation."""

import csv
import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from tiny_audio import speech_corpus as msc
from tiny_audio import tts
from tiny_audio.augmentation import Augmentation

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")
needs_fortunes = pytest.mark.skipif(not msc.FORTUNE_DIR.is_dir(), reason="apt-get install fortunes")

# every engine in every split; Kokoro, many times slower than the others, once per split
ALL_ENGINES = ",".join(f"{name}:{1 if name == 'kokoro' else 2}" for name in tts.ENGINES)
TINY = {"num_train": 10, "num_validation": 5, "num_test": 10, "seed": 3, "workers": 2, "engines": ALL_ENGINES}


def tiny_args(out, **overrides):
    """CLI arguments for a tiny corpus."""
    opts = {**TINY, **overrides}
    return [str(out)] + [f"--{key.replace('_', '-')}={value}" for key, value in opts.items()]


def read_metadata(split_dir):
    """Rows of a split's metadata.csv as dicts."""
    with (split_dir / "metadata.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", autouse=True)
def private_tts_cache(tmp_path_factory):
    """Neural engines cache into a fresh folder (shared by this module's builds, as by a user's rebuilds)."""
    previous = os.environ.get("TINY_AUDIO_TTS_CACHE")
    os.environ["TINY_AUDIO_TTS_CACHE"] = str(tmp_path_factory.mktemp("tts_cache"))
    yield
    if previous is None:
        del os.environ["TINY_AUDIO_TTS_CACHE"]
    else:
        os.environ["TINY_AUDIO_TTS_CACHE"] = previous


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny corpus built through the command-line entry point."""
    out = tmp_path_factory.mktemp("corpus")
    msc.main(tiny_args(out))
    return out


# --------------------------------------------------------------------------- synthesis


@needs_espeak
def test_synthesize_returns_speech_at_16k():
    short = msc.synthesize("Hello there.")
    long = msc.synthesize("Hello there, this sentence is quite a lot longer than the first one.")
    for audio in (short, long):
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert np.sqrt(np.mean(audio**2)) > 0.01
        assert np.abs(audio).max() <= 1.0
    assert 0.3 * msc.SAMPLE_RATE < len(short) < len(long)


@needs_espeak
def test_speed_and_voice_change_the_audio():
    slow = msc.synthesize("One two three four five.", speed=130)
    fast = msc.synthesize("One two three four five.", speed=200)
    assert len(slow) > len(fast)
    other = msc.synthesize("One two three four five.", voice="en-gb-x-rp", speed=130)
    assert len(other) != len(slow) or not np.allclose(other, slow)


@needs_espeak
def test_every_voice_speaks_and_voices_differ():
    msc.check_voices(msc.Espeak.train_voices + msc.Espeak.held_out_voices)
    assert len(msc.Espeak.held_out_voices) >= 2


@needs_espeak
def test_unknown_voice_is_caught():
    # espeak-ng falls back to its default voice for unknown names instead of failing
    with pytest.raises(RuntimeError, match="no voice 'no-such-voice'"):
        msc.check_voices(("en", "no-such-voice"))
    with pytest.raises(RuntimeError, match="no voice 'en-us\\+nope'"):
        msc.check_voices(("en-us+nope",))
    with pytest.raises(RuntimeError, match="sound identical"):
        msc.check_voices(("en", "en-gb"))


def fake_espeak(directory, script):
    """Put a fake espeak-ng running `script` into `directory`."""
    path = directory / "espeak-ng"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def test_espeak_failure_names_the_sentence(monkeypatch, tmp_path):
    fake_espeak(tmp_path, "echo 'boom' >&2; exit 1")
    monkeypatch.setenv("PATH", str(tmp_path))
    clip = msc.Clip("train", "000000.flac", "A doomed sentence.", "espeak", "en-us")
    with pytest.raises(RuntimeError, match="A doomed sentence.*boom"):
        msc.render_clip(clip, tmp_path)


def test_silent_espeak_output_is_an_error(monkeypatch, tmp_path):
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(2205, dtype=np.float32), 22050, subtype="PCM_16")
    fake_espeak(tmp_path, f"exec /bin/cat {silence}")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="silence.*Quiet please"):
        msc.synthesize("Quiet please.")


def test_missing_espeak_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        msc.synthesize("Hello.")
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        msc.build_corpus(tmp_path / "out", num_train=1, num_validation=1, num_test=1)


def test_missing_espeak_via_which(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        msc.espeak_binary()


# --------------------------------------------------------------------------- sentences


@needs_fortunes
def test_sentence_source_is_big_and_clean():
    sentences = msc.load_sentences()
    vocab = msc.vocabulary(sentences)
    print(f"{len(sentences)} sentences, {len(vocab)} words")
    assert len(sentences) >= 5000
    assert len(vocab) >= 3000
    assert len({s.lower() for s in sentences}) == len(sentences)
    assert all(msc.is_clean(s) and s == " ".join(s.split()) for s in sentences)
    assert all(4 <= len(s.split()) <= 16 for s in sentences)


@pytest.mark.parametrize(
    "sentence, clean",
    [
        ("A bug in the code is worth two in the documentation.", True),
        ("Don't let that stop you; if you don't bet, you can't win.", True),
        ("-- Mark Twain, on the weather.", False),
        ("THIS IS A SHOUTED HEADLINE.", False),
        ("See http://www.debian.org for details.", False),
        ("Send mail to root@localhost right now.", False),
        ("Too short.", False),
        ("This one has no end punctuation at all", False),
        ("Help me (please) with this thing.", False),
        ("Wait for it... and there it is.", False),
    ],
)
def test_is_clean(sentence, clean):
    assert msc.is_clean(sentence) is clean


def test_split_sentences_keeps_abbreviations_and_drops_quotes():
    text = 'Mr. Smith went to Washington.  He said "Hello there!" to J. Edgar Hoover.'
    assert msc.split_sentences(text) == [
        "Mr. Smith went to Washington.",
        "He said Hello there!",
        "to J. Edgar Hoover.",
    ]


def test_attribution_and_all_caps_lines_are_dropped(tmp_path):
    (tmp_path / "quotes").write_text(
        "WISDOM OF THE AGES\nNever buy from a rich salesman.\n\t\t-- Goldberg\n%\nOne more short fortune here.\n"
    )
    (tmp_path / "quotes.dat").write_bytes(b"\x00\x01")
    assert msc.load_sentences(tmp_path) == ["Never buy from a rich salesman.", "One more short fortune here."]


# --------------------------------------------------------------------------- corpus


@needs_espeak
@needs_fortunes
def test_sentences_that_sound_the_same_are_one(tmp_path):
    (tmp_path / "fortunes").write_text(
        "The genius has its limits.\n%\nThe genius has it's limits!\n%\nI am a computer.\n%\nI am a computer!\n"
    )
    assert msc.load_sentences(tmp_path) == ["The genius has its limits.", "I am a computer."]


def test_augmentation_never_brings_a_training_voice_near_a_held_out_one():
    """hibari's and piper's held-out voices are their one voice tape-shifted by 2 semitones; a training clip's
    speed or pitch change must not land within a semitone of it."""
    plan = msc.plan_corpus(msc.load_sentences(), {"train": 600, "validation": 50, "test": 5}, seed=0)
    heard = [clip for clip in plan["train"] + plan["validation"] if clip.engine in ("hibari", "piper")]
    assert len({clip.voice for clip in heard}) == 4 and sum(clip.augmentation.pitch != 0 for clip in heard) > 10
    assert not any(msc.near_held_out_voice(clip.engine, clip.voice, clip.augmentation) for clip in heard)
    assert msc.near_held_out_voice("piper", "joe", Augmentation(speed=0.9))  # -1.8 semitones: joe-2 within 0.2
    assert not msc.near_held_out_voice("piper", "joe+2", Augmentation(speed=0.9))
    assert not msc.near_held_out_voice("espeak", "en-us", Augmentation(pitch=-2.0))  # its held-out voices are others


def test_an_unknown_engine_name_is_a_clear_command_line_error(capsys):
    with pytest.raises(SystemExit):
        msc.main(["out", "--engines", "espeak:10,pipr:5"])
    assert "unknown TTS engine 'pipr'" in capsys.readouterr().err


def test_corpus_layout_and_metadata(corpus):
    manifest = json.loads((corpus / "corpus.json").read_text())
    assert manifest["settings"]["counts"] == {"train": 10, "validation": 5, "test": 10}
    for split, count in manifest["settings"]["counts"].items():
        rows = read_metadata(corpus / split)
        assert len(rows) == count
        assert list(rows[0]) == list(msc.COLUMNS)
        assert sorted(p.name for p in (corpus / split).iterdir()) == sorted(
            [r["file_name"] for r in rows] + ["metadata.csv"]
        )
        for row in rows:
            info = sf.info(corpus / split / row["file_name"])
            assert (info.samplerate, info.channels) == (16_000, 1)
            assert abs(info.duration - float(row["duration"])) < 1e-3
            engine = tts.get_engine(row["engine"])
            assert row["voice"] in engine.train_voices + engine.held_out_voices
            assert msc.SPEED_RANGE[0] <= float(row["speed"]) <= msc.SPEED_RANGE[1]
            assert abs(float(row["pitch"])) <= engine.pitch_range
            assert all(msc.is_clean(sentence) for sentence in msc.split_sentences(row["text"]))  # 1-3 sentences


@needs_espeak
@needs_fortunes
def test_test_split_is_unseen(corpus):
    rows = {split: read_metadata(corpus / split) for split in msc.SPLITS}
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    assert not texts["test"] & (texts["train"] | texts["validation"])
    assert not texts["validation"] & texts["train"]
    engines = json.loads((corpus / "corpus.json").read_text())["settings"]["engines"]
    assert "espeak" in engines and "flite" in engines
    for name in engines:
        held_out = set(tts.get_engine(name).held_out_voices)
        speakers = {
            split: {r["voice"] for r in split_rows if r["engine"] == name} for split, split_rows in rows.items()
        }
        assert speakers["train"] and speakers["test"] & held_out, name  # every engine keeps a voice for test
        assert not (speakers["train"] | speakers["validation"]) & held_out, name


@needs_espeak
@needs_fortunes
def test_engines_and_augmentations_are_recorded(corpus):
    manifest = json.loads((corpus / "corpus.json").read_text())
    rows = [row for split in msc.SPLITS for row in read_metadata(corpus / split)]
    used = {row["engine"] for row in rows}
    assert used == set(manifest["settings"]["engines"]) == set(manifest["clips_per_engine"])
    assert sum(manifest["clips_per_engine"].values()) == len(rows)
    augmented = [row["augmentation"] for row in rows if row["augmentation"]]
    assert 0.3 * len(rows) < len(augmented) < 0.9 * len(rows) and manifest["augmented"] == len(augmented)
    assert all(
        key.split("=")[0] in ("speed", "pitch", "reverb", "noise", "telephone") for a in augmented for key in a.split()
    )


def test_engine_schedule_follows_the_shares_and_spreads_them():
    schedule = msc.engine_schedule({"espeak": 45, "flite": 25, "hibari": 20, "piper": 8, "kokoro": 2}, 100)
    assert [schedule.count(name) for name in ("espeak", "flite", "hibari", "piper", "kokoro")] == [45, 25, 20, 8, 2]
    assert set(schedule[:15]) >= {"espeak", "flite", "hibari", "piper"}


@needs_espeak
@needs_fortunes
def test_missing_engine_is_skipped_with_a_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tts.Piper, "missing", lambda self: "pip install piper-tts==1.8.0")
    with caplog.at_level(logging.WARNING):
        manifest = msc.build_corpus(
            tmp_path, num_train=3, num_validation=1, num_test=2, workers=1, engines={"espeak": 1, "piper": 1}
        )
    assert "TTS engine piper skipped: pip install piper-tts==1.8.0" in caplog.text
    assert manifest["settings"]["engines"] == {"espeak": 1}
    assert {row["engine"] for row in read_metadata(tmp_path / "train")} == {"espeak"}
    monkeypatch.setattr(tts.Espeak, "missing", lambda self: "apt-get install espeak-ng")
    with pytest.raises(RuntimeError, match="none of the TTS engines"):
        msc.available_engines({"espeak": 1, "piper": 1})


@needs_espeak
@needs_fortunes
def test_same_seed_same_metadata(corpus, tmp_path):
    msc.main(tiny_args(tmp_path / "again", workers=1))
    for split in msc.SPLITS:
        assert (tmp_path / "again" / split / "metadata.csv").read_bytes() == (
            corpus / split / "metadata.csv"
        ).read_bytes()
    plan_a = msc.plan_corpus(msc.load_sentences(), {"train": 20, "validation": 5, "test": 5}, seed=3)
    plan_b = msc.plan_corpus(msc.load_sentences(), {"train": 20, "validation": 5, "test": 5}, seed=4)
    assert plan_a == msc.plan_corpus(msc.load_sentences(), {"train": 20, "validation": 5, "test": 5}, seed=3)
    assert plan_a != plan_b


@needs_fortunes
def test_some_train_and_validation_clips_read_several_sentences_and_test_clips_one():
    sentences = msc.load_sentences()
    plan = msc.plan_corpus(sentences, {"train": 200, "validation": 50, "test": 50}, seed=0)
    known = set(sentences)
    for split, clips in plan.items():
        several = [clip for clip in clips if clip.text not in known]
        if split == "test":
            assert not several
        else:
            assert 0.15 < len(several) / len(clips) < 0.45  # LONG_FRACTION = 0.3
    assert not any(
        clip.text not in known
        for clip in msc.plan_corpus(sentences, {"train": 50, "validation": 5, "test": 5}, seed=0, long_fraction=0.0)[
            "train"
        ]
    )


@needs_fortunes
def test_train_clips_read_each_sentence_once_before_any_repeats():
    sentences = msc.load_sentences()
    train = msc.plan_corpus(sentences, {"train": 300, "validation": 5, "test": 5}, seed=0)["train"]
    known = set(sentences)
    read = [sentence for clip in train for sentence in sentences_of(clip.text, known)]
    assert len(read) > 1.2 * len(train)  # long clips read two or three sentences each
    assert len(set(read)) == len(read)


def sentences_of(text: str, known: set[str]) -> list[str]:
    """The known sentences a clip's text joins, found greedily from the left."""
    words, found, start = text.split(), [], 0
    for end in range(1, len(words) + 1):
        if " ".join(words[start:end]) in known:
            found.append(" ".join(words[start:end]))
            start = end
    assert start == len(words), f"{text!r} is not a run of known sentences"
    return found


@needs_espeak
@needs_fortunes
def test_second_run_is_cached(corpus, monkeypatch):
    stamps = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}

    def render_clip(*args):
        raise AssertionError("a complete corpus was synthesized again")

    monkeypatch.setattr(msc, "render_clip", render_clip)
    msc.main(tiny_args(corpus))
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == stamps


@needs_espeak
@needs_fortunes
def test_incomplete_or_changed_corpus_is_rebuilt(tmp_path):
    out = tmp_path / "corpus"
    only_espeak = {"workers": 1, "engines": {"espeak": 1}}
    msc.build_corpus(out, num_train=4, num_validation=1, num_test=2, **only_espeak)
    (out / "corpus.json").unlink()  # as if interrupted before finishing
    (out / "train" / "stale.flac").write_bytes(b"")
    msc.build_corpus(out, num_train=4, num_validation=1, num_test=2, **only_espeak)
    assert not (out / "train" / "stale.flac").exists()
    assert len(read_metadata(out / "train")) == 4

    msc.build_corpus(out, num_train=3, num_validation=1, num_test=2, augment_fraction=1.0, **only_espeak)
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["settings"]["augment_fraction"] == 1.0
    assert all(row["augmentation"] for row in read_metadata(out / "train"))
    assert len(read_metadata(out / "train")) == 3
    assert len(list((out / "train").glob("*.flac"))) == 3
