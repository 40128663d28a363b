"""Build a small synthetic English speech corpus with espeak-ng.

Sentences come from Debian's `fortunes` package and are spoken by several
espeak-ng English voices at random speeds and pitches.  The result is an
audiofolder dataset::

    OUT/{train,validation,test}/metadata.csv   file_name,text,voice,speed,pitch,duration
    OUT/{train,validation,test}/*.flac         16 kHz mono
    OUT/corpus.json                            arguments and counts, written last

Test sentences never occur in train or validation, and the HELD_OUT_VOICES
speak only in the test split.  Everything is drawn from one seeded RNG, and a
rerun with the same arguments on a complete OUT does nothing.

    python -m tiny_audio.speech_corpus data/speech --num-train 6000 --workers 8
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

SAMPLE_RATE = 16_000
INSTALL_HINT = "espeak-ng is not installed; install it with `apt-get install espeak-ng`"
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORMAT_VERSION = 1

TRAIN_VOICES = (
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
HELD_OUT_VOICES = ("en-gb-x-gbcwmd", "en-us-nyc+f5", "en-029+f1")
SPEED_RANGE = (130, 200)  # words per minute, inclusive
PITCH_RANGE = (30, 70)  # espeak-ng pitch 0-99, inclusive
MIN_WORDS, MAX_WORDS = 4, 16
SPLITS = ("train", "validation", "test")
COLUMNS = ("file_name", "text", "voice", "speed", "pitch", "duration")

CLEAN_SENTENCE = re.compile(r"[A-Z0-9][A-Za-z0-9 ,;'!?.-]*[.!?]")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "no", "mt", "i.e", "e.g"}


# --------------------------------------------------------------------------- audio


def espeak_binary() -> str:
    """Path of the espeak-ng executable, or a clear error saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(INSTALL_HINT)
    return path


def synthesize(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng; return float32 mono audio at 16 kHz."""
    cmd = [espeak_binary(), "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), text]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed on {text!r} (voice {voice}): {stderr}")
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    if not np.any(audio):
        raise RuntimeError(f"espeak-ng produced silence for {text!r} (voice {voice})")
    return np.ascontiguousarray(audio, dtype=np.float32)


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power pink (1/f) noise made by shaping white noise in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=num_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mix pink noise into `audio` at `snr_db` (relative to the speech power), clipped to [-1, 1]."""
    speech = audio[np.abs(audio) > 1e-4]
    power = float(np.mean(speech**2)) if speech.size else 0.0
    noise = pink_noise(len(audio), rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- sentences


def fortune_files(directory: Path = FORTUNE_DIR) -> list[Path]:
    """The text fortune files in `directory` (skipping .dat indexes and .u8 links)."""
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix not in {".dat", ".u8"}]
    if not files:
        raise RuntimeError(f"no fortune files in {directory}; install them with `apt-get install fortunes`")
    return files


def read_fortunes(path: Path) -> list[str]:
    """The fortunes of one '%'-separated file, with attribution and all-caps lines removed."""
    fortunes = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    return [" ".join(line for line in fortune.splitlines() if keep_line(line)) for fortune in fortunes]


def keep_line(line: str) -> bool:
    """False for attributions ("-- Mark Twain") and all-caps headings."""
    stripped = line.strip()
    return not stripped.startswith("-") and not (stripped.isupper() and len(stripped) > 1)


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences at . ! ? (not after abbreviations or initials)."""
    sentences, current = [], []
    for word in text.replace('"', " ").split():
        current.append(word)
        stem = word.rstrip(".!?").lower()
        if word[-1] in ".!?" and stem not in ABBREVIATIONS and not (len(stem) == 1 and stem.isalpha()):
            sentences.append(" ".join(current))
            current = []
    return sentences


def is_clean(sentence: str) -> bool:
    """A 4-16 word sentence of plain letters, digits and basic punctuation, not shouted."""
    words = sentence.split()
    letters = [c for c in sentence if c.isalpha()]
    return (
        MIN_WORDS <= len(words) <= MAX_WORDS
        and CLEAN_SENTENCE.fullmatch(sentence) is not None
        and "--" not in sentence
        and re.search(r"[.!?]{2}", sentence) is None
        and sum(c.isupper() for c in letters) <= 0.3 * len(letters)
    )


def load_sentences(directory: Path = FORTUNE_DIR) -> list[str]:
    """Distinct clean sentences from every fortune file, in a fixed order."""
    seen: dict[str, str] = {}
    for path in fortune_files(directory):
        for fortune in read_fortunes(path):
            for sentence in split_sentences(fortune):
                if is_clean(sentence):
                    seen.setdefault(sentence.lower(), sentence)
    return list(seen.values())


def vocabulary(sentences: list[str]) -> set[str]:
    """Lower-cased words of `sentences`, punctuation stripped."""
    words = (w.strip(",;.!?'-").lower() for s in sentences for w in s.split())
    return {w for w in words if w}


# --------------------------------------------------------------------------- corpus plan


@dataclass(frozen=True)
class Clip:
    """One utterance to render: where it goes, what is said and how."""

    split: str
    file_name: str
    text: str
    voice: str
    speed: int
    pitch: int
    noise_snr_db: float | None = None
    noise_seed: int = 0


def split_voices(split: str) -> tuple[str, ...]:
    """Voices used in `split`: test puts the held-out voices first, then the training ones."""
    return HELD_OUT_VOICES + TRAIN_VOICES if split == "test" else TRAIN_VOICES


def plan_corpus(
    sentences: list[str],
    counts: dict[str, int],
    seed: int,
    noise_snr_db: float | None = None,
) -> dict[str, list[Clip]]:
    """Assign sentences, voices, speeds and pitches to every clip, reproducibly from `seed`.

    Test and validation sentences are distinct and unused elsewhere; train cycles
    through the remaining sentences (repeats get other voices and prosody).
    Voices go round-robin so even tiny splits cover them.
    """
    rng = np.random.default_rng(seed)
    order = [sentences[i] for i in rng.permutation(len(sentences))]
    n_test, n_val = counts["test"], counts["validation"]
    pool = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    if len(pool["test"]) < n_test or len(pool["validation"]) < n_val or (counts["train"] and not pool["train"]):
        raise ValueError(f"only {len(sentences)} sentences: too few for {counts}")
    plan = {}
    for split in SPLITS:
        voices = split_voices(split)
        plan[split] = [
            Clip(
                split=split,
                file_name=f"{i:06d}.flac",
                text=pool[split][i % len(pool[split])],
                voice=voices[i % len(voices)],
                speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                noise_snr_db=noise_snr_db,
                noise_seed=int(rng.integers(2**31)),
            )
            for i in range(counts[split])
        ]
    return plan


# --------------------------------------------------------------------------- rendering


def render_clip(clip: Clip, out: Path) -> float:
    """Synthesize `clip` into OUT/<split>/<file_name>; return its duration in seconds."""
    audio = synthesize(clip.text, clip.voice, clip.speed, clip.pitch)
    if clip.noise_snr_db is not None:
        audio = add_noise(audio, clip.noise_snr_db, np.random.default_rng(clip.noise_seed))
    sf.write(out / clip.split / clip.file_name, audio, SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


def installed_voices() -> tuple[set[str], set[str]]:
    """Language names and variant names known to this espeak-ng."""

    def listing(*args: str) -> str:
        return subprocess.run([espeak_binary(), *args], capture_output=True, text=True, check=True).stdout

    languages = set()
    for line in listing("--voices").splitlines()[1:]:
        languages.add(line.split()[1])
        languages.update(re.findall(r"\((\S+) \d+\)", line))
    return languages, set(re.findall(r"!v/(\S+)", listing("--voices=variant")))


def check_voices(voices: tuple[str, ...]) -> None:
    """Fail early if a voice is not installed, speaks nothing or sounds like another one.

    espeak-ng silently falls back to some other voice for unknown names, so the
    names are checked against its voice list before anything is synthesized.
    """
    languages, variants = installed_voices()
    seen: dict[bytes, str] = {}
    for voice in voices:
        language, _, variant = voice.partition("+")
        if language not in languages or (variant and variant not in variants):
            raise RuntimeError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices=en`)")
        fingerprint = synthesize("Testing one two three.", voice).tobytes()
        if fingerprint in seen:
            raise RuntimeError(f"espeak-ng voices {seen[fingerprint]!r} and {voice!r} sound identical")
        seen[fingerprint] = voice


def write_metadata(path: Path, clips: list[Clip], durations: list[float]) -> None:
    """Write an audiofolder metadata.csv for one split."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for clip, duration in zip(clips, durations):
            writer.writerow([clip.file_name, clip.text, clip.voice, clip.speed, clip.pitch, f"{duration:.3f}"])


def read_manifest(out: Path) -> dict | None:
    """OUT/corpus.json, or None when the corpus was never completed."""
    path = out / "corpus.json"
    return json.loads(path.read_text()) if path.exists() else None


def is_complete(out: Path, settings: dict) -> bool:
    """True when OUT holds a finished corpus built with exactly `settings`."""
    manifest = read_manifest(out)
    return (
        manifest is not None
        and manifest.get("settings") == settings
        and all((out / split / "metadata.csv").exists() for split in SPLITS)
    )


def build_corpus(
    out: str | Path,
    num_train: int = 6000,
    num_validation: int = 200,
    num_test: int = 200,
    seed: int = 0,
    noise_snr_db: float | None = None,
    workers: int | None = None,
) -> dict:
    """Build (or reuse, if already complete with the same settings) the corpus in `out`.

    Returns the manifest that is stored in OUT/corpus.json.
    """
    out = Path(out)
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    settings = {"format_version": FORMAT_VERSION, "counts": counts, "seed": seed, "noise_snr_db": noise_snr_db}
    if is_complete(out, settings):
        print(f"{out}: complete corpus with these settings already there, nothing to do")
        return read_manifest(out)

    espeak_binary()
    check_voices(TRAIN_VOICES + HELD_OUT_VOICES)
    sentences = load_sentences()
    print(f"{len(sentences)} distinct sentences, vocabulary of {len(vocabulary(sentences))} words")
    plan = plan_corpus(sentences, counts, seed, noise_snr_db)

    (out / "corpus.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)

    clips = [clip for split in SPLITS for clip in plan[split]]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = pool.map(render_clip, clips, [out] * len(clips), chunksize=16)
        durations = list(tqdm(results, total=len(clips), desc="synthesizing", unit="clip"))
    elapsed = time.perf_counter() - start
    print(f"{len(clips)} clips in {elapsed:.1f} s ({60 * len(clips) / max(elapsed, 1e-9):.0f} clips/minute)")

    by_split = iter(durations)
    split_durations = {split: [next(by_split) for _ in plan[split]] for split in SPLITS}
    for split in SPLITS:
        write_metadata(out / split / "metadata.csv", plan[split], split_durations[split])

    manifest = {
        "settings": settings,
        "sample_rate": SAMPLE_RATE,
        "train_voices": list(TRAIN_VOICES),
        "held_out_voices": list(HELD_OUT_VOICES),
        "num_sentences": len(sentences),
        "hours": {split: round(sum(d) / 3600, 3) for split, d in split_durations.items()},
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-snr-db", type=float, default=None, help="add pink noise at this SNR")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes")
    args = parser.parse_args(argv)
    build_corpus(
        args.out,
        num_train=args.num_train,
        num_validation=args.num_validation,
        num_test=args.num_test,
        seed=args.seed,
        noise_snr_db=args.noise_snr_db,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
