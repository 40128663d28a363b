"""Build a small synthetic English speech corpus from several TTS engines, with acoustic augmentation.

Sentences come from Debian's `fortunes` package.  Each clip is spoken by one engine of `tiny_audio.tts`
(the neural voices of hibari and piper carry most clips; flite, espeak-ng and Kokoro add others) at a random speed, and
AUGMENT_FRACTION of the clips then get a seeded `tiny_audio.augmentation` recipe (speed, pitch, noise,
babble, music, reverberation, telephone band).  The result is an audiofolder dataset::

    OUT/{train,validation,test}/metadata.csv   file_name,text,engine,voice,speed,pitch,augmentation,duration
    OUT/{train,validation,test}/*.flac         16 kHz mono
    OUT/corpus.json                            arguments, engines used and counts, written last

Test sentences never occur in train or validation, and every engine's held-out voices speak only in the test
split (nor does augmentation bring a training voice near one).  LONG_FRACTION of the train and validation clips read
two or three sentences in a row (up to ~15 s), so that a model also learns to keep transcribing past one sentence.
Everything is drawn from one seeded RNG, and a rerun with the same arguments on a complete OUT does nothing.  Piper
alone draws noise of its own, inside its ONNX graph, so its clips differ in their samples when they are synthesized
again (the neural-voice cache keeps them).  An engine that is not installed is skipped with a logged message
(espeak-ng is required).

    python -m tiny_audio.speech_corpus data/speech --num-train 6000 --workers 8
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from tiny_audio.augmentation import Augmentation, augment, draw_augmentation
from tiny_audio.tts import ENGINES, SAMPLE_RATE, Espeak, espeak_binary, get_engine, synthesize

logger = logging.getLogger(__name__)

FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORMAT_VERSION = 4

# Share of the clips each engine speaks (renormalized over the installed ones).  The neural voices carry over to
# people best, so hibari and piper speak most clips (README: "What moved it"); Kokoro costs the most CPU per clip, so
# it keeps a small share that holds `make corpus` within minutes.
ENGINE_SHARES = {"espeak": 15, "flite": 25, "hibari": 41, "piper": 18, "kokoro": 1}
AUGMENT_FRACTION = 0.6
LONG_FRACTION = 0.3
SENTENCES_PER_LONG_CLIP = (2, 3)
SPEED_RANGE = (0.85, 1.2)  # times each engine's normal rate
BABBLE_VOICES = 3  # espeak-ng speakers behind a "babble" clip
MIN_WORDS, MAX_WORDS = 4, 16
SPLITS = ("train", "validation", "test")
COLUMNS = ("file_name", "text", "engine", "voice", "speed", "pitch", "augmentation", "duration")

NOT_HEARD = re.compile(r"[^a-z0-9\s]")
CLEAN_SENTENCE = re.compile(r"[A-Z0-9][A-Za-z0-9 ,;'!?.-]*[.!?]")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "no", "mt", "i.e", "e.g"}


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
    """Clean sentences from every fortune file, in a fixed order, each heard once: sentences that sound the same
    ("its" and "it's", "!" and ".") are one, so that no test sentence is also read in training."""
    heard: dict[str, str] = {}
    for path in fortune_files(directory):
        for fortune in read_fortunes(path):
            for sentence in split_sentences(fortune):
                if is_clean(sentence):
                    heard.setdefault(" ".join(NOT_HEARD.sub("", sentence.lower()).split()), sentence)
    return list(heard.values())


def vocabulary(sentences: list[str]) -> set[str]:
    """Lower-cased words of `sentences`, punctuation stripped."""
    words = (w.strip(",;.!?'-").lower() for s in sentences for w in s.split())
    return {w for w in words if w}


# --------------------------------------------------------------------------- corpus plan


@dataclass(frozen=True)
class Clip:
    """One utterance to render: where it goes, what is said, by which engine and voice, and what happens to it."""

    split: str
    file_name: str
    text: str
    engine: str
    voice: str
    speed: float = 1.0
    pitch: float = 0.0
    seed: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    babble: tuple[tuple[str, str], ...] = ()  # (espeak voice, sentence) pairs mixed in as babble noise


def available_engines(shares: dict[str, float]) -> dict[str, float]:
    """`shares` without the engines that are not installed (each skipped with a logged reason)."""
    usable = {}
    for name, share in shares.items():
        reason = get_engine(name).missing()
        if reason:
            logger.warning(f"TTS engine {name} skipped: {reason}")
        elif share > 0:
            usable[name] = share
    if not usable:
        raise RuntimeError(f"none of the TTS engines {list(shares)} is installed")
    return usable


def engine_schedule(shares: dict[str, float], count: int) -> list[str]:
    """`count` engine names in proportion to `shares`, spread out (smooth weighted round robin)."""
    total, credit, schedule = sum(shares.values()), dict.fromkeys(shares, 0.0), []
    for _ in range(count):
        for name in credit:
            credit[name] += shares[name]
        chosen = max(credit, key=credit.get)
        credit[chosen] -= total
        schedule.append(chosen)
    return schedule


def split_voices(engine: str, split: str) -> tuple[str, ...]:
    """An engine's voices in `split`: test puts its held-out voices first, then the training ones."""
    tts = get_engine(engine)
    return tts.held_out_voices + tts.train_voices if split == "test" else tts.train_voices


def near_held_out_voice(engine: str, voice: str, recipe: Augmentation) -> bool:
    """Whether `recipe`'s speed or pitch change brings a training `voice` of a single-voice engine (whose other
    voices are tape shifts of it) within a semitone of one of its held-out voices, which training must not hear."""
    speaker = get_engine(engine)
    shifts = getattr(speaker, "SHIFTS", None)
    if not shifts:
        return False
    heard = shifts[voice] + 12 * math.log2(recipe.speed) + recipe.pitch
    return any(abs(heard - shifts[held_out]) < 1 for held_out in speaker.held_out_voices)


def plan_corpus(
    sentences: list[str],
    counts: dict[str, int],
    seed: int,
    shares: dict[str, float] | None = None,
    augment_fraction: float = AUGMENT_FRACTION,
    long_fraction: float = LONG_FRACTION,
) -> dict[str, list[Clip]]:
    """Assign sentences, engines, voices, speeds, pitches and augmentations to every clip, reproducibly.

    Test and validation sentences are distinct and unused elsewhere; each split reads its pool in order, every
    sentence once before any repeats (a repeat gets another voice and prosody), so the corpus holds as many distinct
    sentences, and words, as its audio can.  A `long_fraction` of train and validation clips read the next two or
    three sentences together; test clips stay single sentences.  Engines follow `shares` in a spread-out order and
    each engine's voices go round-robin, so even small splits cover them.
    """
    shares = shares or ENGINE_SHARES
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
    babble_pool = pool["train"] or order
    plan = {}
    for split in SPLITS:
        turns = dict.fromkeys(shares, 0)
        plan[split], read = [], 0
        for i, engine in enumerate(engine_schedule(shares, counts[split])):
            voices = split_voices(engine, split)
            voice = voices[turns[engine] % len(voices)]
            turns[engine] += 1
            pitch_range = get_engine(engine).pitch_range
            recipe = draw_augmentation(rng, augment_fraction)
            while split != "test" and near_held_out_voice(engine, voice, recipe):
                recipe = draw_augmentation(rng, augment_fraction)
            sentences_read = 1
            if split != "test" and rng.random() < long_fraction:
                sentences_read = int(rng.integers(SENTENCES_PER_LONG_CLIP[0], SENTENCES_PER_LONG_CLIP[1] + 1))
            babble = ()
            if recipe.noise == "babble":
                babble = tuple(
                    (str(rng.choice(Espeak.train_voices)), babble_pool[int(rng.integers(len(babble_pool)))])
                    for _ in range(BABBLE_VOICES)
                )
            plan[split].append(
                Clip(
                    split=split,
                    file_name=f"{i:06d}.flac",
                    text=" ".join(pool[split][(read + j) % len(pool[split])] for j in range(sentences_read)),
                    engine=engine,
                    voice=voice,
                    speed=round(float(rng.uniform(*SPEED_RANGE)), 2),
                    pitch=round(float(rng.uniform(-pitch_range, pitch_range)), 1) if pitch_range else 0.0,
                    seed=int(rng.integers(2**31)),
                    augmentation=recipe,
                    babble=babble,
                )
            )
            read += sentences_read
    return plan


# --------------------------------------------------------------------------- rendering


def render_clip(clip: Clip, out: Path) -> float:
    """Synthesize and augment `clip` into OUT/<split>/<file_name>; return its duration in seconds."""
    audio = get_engine(clip.engine).speak(clip.text, clip.voice, clip.speed, clip.pitch, clip.seed)
    if clip.augmentation != Augmentation():
        babble = [synthesize(text, voice) for voice, text in clip.babble]
        audio = augment(audio, clip.augmentation, babble)
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
            writer.writerow(
                [
                    clip.file_name,
                    clip.text,
                    clip.engine,
                    clip.voice,
                    f"{clip.speed:.2f}",
                    f"{clip.pitch:.1f}",
                    clip.augmentation.describe(),
                    f"{duration:.3f}",
                ]
            )


def read_corpus_record(out: Path) -> dict | None:
    """OUT/corpus.json, or None when the corpus was never completed."""
    path = out / "corpus.json"
    return json.loads(path.read_text()) if path.exists() else None


def is_complete(out: Path, settings: dict) -> bool:
    """True when OUT holds a finished corpus built with exactly `settings`."""
    manifest = read_corpus_record(out)
    return (
        manifest is not None
        and manifest.get("settings") == settings
        and all((out / split / "metadata.csv").exists() for split in SPLITS)
    )


def build_corpus(
    out: str | Path,
    num_train: int = 3000,
    num_validation: int = 100,
    num_test: int = 200,
    seed: int = 0,
    engines: dict[str, float] | None = None,
    augment_fraction: float = AUGMENT_FRACTION,
    long_fraction: float = LONG_FRACTION,
    workers: int | None = None,
) -> dict:
    """Build (or reuse, if already complete with the same settings) the corpus in `out`.

    `engines` maps engine names to their share of the clips (default ENGINE_SHARES); engines that are not
    installed are left out, and the settings record the ones used.  Returns the manifest of OUT/corpus.json.
    """
    out = Path(out)
    espeak_binary()
    shares = available_engines(engines or ENGINE_SHARES)
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    settings = {
        "format_version": FORMAT_VERSION,
        "counts": counts,
        "seed": seed,
        "engines": shares,
        "augment_fraction": augment_fraction,
        "long_fraction": long_fraction,
    }
    if is_complete(out, settings):
        print(f"{out}: complete corpus with these settings already there, nothing to do")
        return read_corpus_record(out)

    check_voices(Espeak.train_voices + Espeak.held_out_voices)
    sentences = load_sentences()
    print(f"{len(sentences)} distinct sentences, vocabulary of {len(vocabulary(sentences))} words")
    plan = plan_corpus(sentences, counts, seed, shares, augment_fraction, long_fraction)

    (out / "corpus.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)

    clips = [clip for split in SPLITS for clip in plan[split]]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = pool.map(render_clip, clips, [out] * len(clips), chunksize=8)
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
        "voices": {
            name: {"train": list(ENGINES[name].train_voices), "held_out": list(ENGINES[name].held_out_voices)}
            for name in shares
        },
        "clips_per_engine": {name: sum(c.engine == name for c in clips) for name in shares},
        "augmented": sum(c.augmentation != Augmentation() for c in clips),
        "num_sentences": len(sentences),
        "build_seconds": round(elapsed, 1),
        "hours": {split: round(sum(d) / 3600, 3) for split, d in split_durations.items()},
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def parse_shares(text: str) -> dict[str, float]:
    """`espeak:40,flite:25` -> {"espeak": 40.0, "flite": 25.0}."""
    shares = {}
    for item in text.split(","):
        name, _, share = item.partition(":")
        try:
            shares[name.strip()] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--engines wants NAME:SHARE pairs, got {item!r}") from None
        try:
            get_engine(name.strip())
        except ValueError as error:  # argparse would print only "invalid parse_shares value"
            raise argparse.ArgumentTypeError(str(error)) from None
    return shares


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-validation", type=int, default=100)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    default_shares = ",".join(f"{name}:{share}" for name, share in ENGINE_SHARES.items())
    parser.add_argument("--engines", type=parse_shares, default=None, help=f"NAME:SHARE,... (default {default_shares})")
    parser.add_argument("--augment-fraction", type=float, default=AUGMENT_FRACTION, help="share of augmented clips")
    parser.add_argument(
        "--long-fraction", type=float, default=LONG_FRACTION, help="share of train/validation clips of 2-3 sentences"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes")
    args = parser.parse_args(argv)
    build_corpus(
        args.out,
        num_train=args.num_train,
        num_validation=args.num_validation,
        num_test=args.num_test,
        seed=args.seed,
        engines=args.engines,
        augment_fraction=args.augment_fraction,
        long_fraction=args.long_fraction,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
