"""Training data: datasets from the Hub or a local folder, decoding with per-reason skip counts, batching, collation."""

import ctypes
import ctypes.util
import functools
import io
import logging
import multiprocessing
import random
import zlib
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from datasets import Audio, Dataset, concatenate_datasets, interleave_datasets, load_dataset
from tqdm.auto import tqdm

from configuration_asr import SAMPLING_RATE, spoken_form
from processing_asr import IGNORE_INDEX, ASRProcessor, InvalidAudioError, check_audio, load_audio
from tiny_audio.augmentation import non_speech_examples

logger = logging.getLogger(__name__)

SYNTHETIC_TONES = "synthetic-tones"
TONE_WORDS = "one two three four five six seven eight nine ten red green blue black white cat dog sun moon".split()


class BadDataError(ValueError):
    """Too much of a dataset is unusable for a run to mean anything."""


# The skip count each `InvalidAudioError.reason` goes to in a run's data summary.
SKIP_REASONS = {
    "missing": "undecodable",
    "undecodable": "undecodable",
    "unsupported": "undecodable",
    "empty": "empty_audio",
    "silent": "empty_audio",
    "too_short": "empty_audio",
    "non_finite": "non_finite",
    "out_of_range": "undecodable",
    "too_long": "too_long",
}
# What a run's data summary counts, in the order of `SkipCounter.counts` after the examples seen.
SKIP_KINDS = ("empty_transcript", *dict.fromkeys(SKIP_REASONS.values()))


@dataclass
class SkipCounter:
    """Counts examples seen and skipped per reason; refuses a dataset whose skipped fraction is too high.

    The counts live in shared memory: the dataloader workers that decode a streamed dataset count into the same
    numbers that the main process writes to `training_run.json`."""

    name: str
    max_bad_fraction: float = 0.2
    min_examples: int = 20
    counts: SynchronizedArray = field(
        default_factory=lambda: multiprocessing.Array("q", 1 + len(SKIP_KINDS)), repr=False
    )

    @property
    def seen(self) -> int:
        return self.counts[0]

    @property
    def skipped(self) -> dict[str, int]:
        return {kind: count for kind, count in zip(SKIP_KINDS, self.counts[1:]) if count}

    def record(self, reason: str | None) -> None:
        with self.counts.get_lock():
            self.counts[0] += 1
            if reason is not None:
                self.counts[1 + SKIP_KINDS.index(reason)] += 1
        if reason is not None:
            logger.warning(f"{self.name}: skipped an example ({reason}); skips so far: {self.skipped}")
            if self.seen >= self.min_examples:
                self.check()

    def check(self) -> None:
        bad = sum(self.skipped.values())
        if self.seen and bad / self.seen > self.max_bad_fraction:
            raise BadDataError(
                f"{self.name}: {bad} of {self.seen} examples are unusable ({self.skipped}), more than "
                f"--max_bad_fraction {self.max_bad_fraction}; fix the data or raise the limit"
            )

    def summary(self) -> dict:
        return {"seen": self.seen, "kept": self.seen - sum(self.skipped.values()), "skipped": self.skipped}


def tone_clip(words: list[str], seconds_per_word: float = 0.3) -> np.ndarray:
    """A clip where each word is a two-tone chord of its own: a tiny offline 'language' for smoke runs."""
    t = np.arange(int(seconds_per_word * SAMPLING_RATE)) / SAMPLING_RATE
    pieces = []
    for word in words:
        index = TONE_WORDS.index(word)
        chord = np.sin(2 * np.pi * (300 + 90 * index) * t) + np.sin(2 * np.pi * (1900 + 70 * index) * t)
        pieces += [0.2 * chord * np.hanning(t.size), np.zeros(SAMPLING_RATE // 20)]
    return np.concatenate(pieces).astype(np.float32)


def synthetic_tones(split: str, num_examples: int = 64) -> Dataset:
    """Clips of 2-6 tone-words with their transcripts; each split is seeded differently."""
    rng = random.Random(zlib.crc32(split.encode()))
    rows = []
    for _ in range(num_examples):
        words = rng.choices(TONE_WORDS, k=rng.randint(2, 6))
        rows.append({"audio": {"array": tone_clip(words), "sampling_rate": SAMPLING_RATE}, "text": " ".join(words)})
    return Dataset.from_list(rows)


def local_folder(folder: Path, split: str, streaming: bool):
    """An audiofolder-layout split: `folder/split/metadata.{csv,jsonl}` with a `file_name` column beside the audio.
    As in `datasets`' audiofolder, a folder without split folders is its "train" split alone, so that evaluation
    never scores the training clips by mistake."""
    split_dir = folder / split
    if not split_dir.is_dir():
        if split != "train":
            raise FileNotFoundError(f"no {split!r} split in {folder}: expected a folder {split_dir}")
        split_dir = folder
    for name, builder in (("metadata.csv", "csv"), ("metadata.jsonl", "json")):
        if (split_dir / name).is_file():
            dataset = load_dataset(builder, data_files=str(split_dir / name), split="train", streaming=streaming)
            return dataset.map(lambda row: {"file_name": str(split_dir / row["file_name"])})
    raise FileNotFoundError(f"no metadata.csv or metadata.jsonl in {split_dir}")


def open_dataset(name: str, config: str | None, split: str, audio_column: str, text_column: str, streaming: bool):
    """One dataset split with columns `audio` (anything `load_audio` reads) and `text`."""
    if name == SYNTHETIC_TONES:
        return synthetic_tones(split)
    if Path(name).is_dir():
        dataset = local_folder(Path(name), split, streaming)
        audio_column = "file_name"
    else:
        dataset = load_dataset(name, config, split=split, streaming=streaming)
        dataset = dataset.cast_column(audio_column, Audio(decode=False))  # decoded with soundfile, no torchcodec
    dataset = dataset.select_columns([audio_column, text_column])
    if audio_column != "audio":
        dataset = dataset.rename_column(audio_column, "audio")
    return dataset.rename_column(text_column, "text") if text_column != "text" else dataset


def open_mixture(names: list[str], weights: list[float] | None, seed: int, interleave: bool = True, **kwargs):
    """Several datasets (all with the same column names) interleaved with sampling weights, the smaller ones
    repeated until every one is used up, for training; or, with `interleave=False`, one after the other, each clip
    once, for evaluation."""
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"--dataset_weights needs one value per dataset ({len(names)}), got {len(weights)}")
    datasets = [open_dataset(name, **kwargs) for name in names]
    if len(datasets) == 1:
        return datasets[0]
    if not interleave:
        return concatenate_datasets(datasets)
    probabilities = [w / sum(weights) for w in weights] if weights else None
    return interleave_datasets(datasets, probabilities, seed=seed, stopping_strategy="all_exhausted")


def decode_example(example: dict, index: int, max_seconds: float | None) -> tuple[np.ndarray | None, str | None]:
    """Decoded 16 kHz samples of an example, or None and the reason it is skipped."""
    if not isinstance(example.get("text"), str) or not example["text"].strip():
        return None, "empty_transcript"
    name = f"example {index}"
    try:
        samples = load_audio(example["audio"], name=name)
        check_audio(samples, name, max_seconds=max_seconds)
    except InvalidAudioError as error:
        logger.warning(str(error))
        return None, SKIP_REASONS[error.reason]
    return samples, None


def scan(dataset, counter: SkipCounter, max_seconds: float | None, max_samples: int | None = None) -> Dataset:
    """Decodes a finite dataset once: keeps usable examples with their duration (`length`), counts the rest."""
    kept = []
    total = min(len(dataset), max_samples) if max_samples else len(dataset)
    for index in tqdm(range(total), desc=f"checking {counter.name}"):
        example = dataset[index]
        samples, reason = decode_example(example, index, max_seconds)
        counter.record(reason)
        if samples is not None:
            kept.append(
                {"audio": example["audio"], "text": example["text"].strip(), "length": samples.size / SAMPLING_RATE}
            )
    counter.check()
    logger.info(f"{counter.name}: {counter.summary()}")
    if not kept:
        raise BadDataError(f"{counter.name}: no usable examples ({counter.summary()})")
    return Dataset.from_list(kept)


def non_speech_folder(seed: int) -> Path:
    """Where the non-speech clips of `seed` are written for datasets whose audio column holds file paths."""
    return Path.home() / ".cache" / "tiny_audio" / "non_speech" / f"seed-{seed}"


def add_non_speech(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """`dataset` (from `scan`) plus round(`fraction` * its size) generated non-speech rows with text "".

    An empty transcript trains the model to answer noise, music and tones with the end-of-turn token alone.  The
    new rows' audio takes the form of the dataset's own (file path, encoded bytes or samples) so the columns stay
    one type; `build_encoder_cache` and both collator paths read them like any other row.
    """
    if not 0 <= fraction <= 10:
        raise ValueError(f"--non_speech_fraction must be between 0 and 10, got {fraction}")
    count = round(fraction * len(dataset))
    if count == 0:
        return dataset
    like = dataset[0]["audio"]
    rows = []
    for index, row in enumerate(non_speech_examples(count, seed)):
        samples = row["audio"]["array"]
        if isinstance(like, str):
            path = non_speech_folder(seed) / f"{index:06d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, samples, SAMPLING_RATE, subtype="PCM_16")
            audio = str(path)
        elif isinstance(like, dict) and "bytes" in like:
            buffer = io.BytesIO()
            sf.write(buffer, samples, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
            audio = {"bytes": buffer.getvalue(), "path": f"non_speech_{index:06d}.flac"}
        else:
            audio = {"array": samples, "sampling_rate": SAMPLING_RATE}
        rows.append({"audio": audio, "text": "", "length": samples.size / SAMPLING_RATE})
    logger.info(f"added {count} non-speech clips (empty transcripts) to {len(dataset)} training examples")
    return concatenate_datasets([dataset, Dataset.from_list(rows, features=dataset.features)])


class DecodedStream(torch.utils.data.IterableDataset):
    """A streamed dataset decoded on the fly, grouped by duration in a bounded buffer so padding stays small."""

    def __init__(self, dataset, counter: SkipCounter, max_seconds: float, batch_size: int, buffer_batches: int = 50):
        self.dataset, self.counter, self.max_seconds = dataset, counter, max_seconds
        self.batch_size, self.buffer_size = batch_size, batch_size * buffer_batches

    def _flush(self, buffer: list[dict], rng: random.Random):
        buffer.sort(key=lambda example: example["length"])
        batches = [buffer[i : i + self.batch_size] for i in range(0, len(buffer), self.batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            yield from batch

    def __iter__(self):
        rng, buffer = random.Random(0), []
        for index, example in enumerate(self.dataset):
            samples, reason = decode_example(example, index, self.max_seconds)
            self.counter.record(reason)
            if samples is None:
                continue
            buffer.append(
                {
                    "audio": {"array": samples, "sampling_rate": SAMPLING_RATE},
                    "text": example["text"].strip(),
                    "length": samples.size / SAMPLING_RATE,
                }
            )
            if len(buffer) >= self.buffer_size:
                yield from self._flush(buffer, rng)
                buffer = []
        if torch.utils.data.get_worker_info() is None:  # (a worker's counts may hold only part of the stream)
            self.counter.check()  # the whole stream read: a short one may never have reached `min_examples`
        yield from self._flush(buffer, rng)


def spec_augment(features: torch.Tensor, lengths: torch.Tensor, rng: torch.Generator, time_masks=2, freq_masks=2):
    """SpecAugment-style masking in place: up to 10% of each clip's frames and 15% of mel bins per mask."""
    for row, length in enumerate(lengths.tolist()):
        for _ in range(time_masks):
            width = int(torch.randint(0, max(1, length // 10), (1,), generator=rng))
            start = int(torch.randint(0, max(1, length - width), (1,), generator=rng))
            features[row, :, start : start + width] = 0
        for _ in range(freq_masks):
            width = int(torch.randint(0, max(1, features.shape[1] * 15 // 100), (1,), generator=rng))
            start = int(torch.randint(0, features.shape[1] - width, (1,), generator=rng))
            features[row, start : start + width, :] = 0
    return features


def spoken_tokens(tokenizer, text: str) -> list[int]:
    """LLM token ids of the spoken form of `text`: what stage 0 learns to read, and what the LLM reads in training."""
    return tokenizer(spoken_form(text), add_special_tokens=False)["input_ids"]


@dataclass
class ASRCollator:
    """Examples -> model batch: features padded to the longest clip of the batch (never 30 s), labels on the
    transcript only. Examples with a `cache_index` use that entry of `encoder_cache` instead of their audio. With
    `teacher_readings`, `reading_ids` hold each transcript's spoken form, for a model whose LLM reads a `TokenReadout`.
    """

    processor: ASRProcessor
    encoder_cache: list | None = None
    spec_augment: bool = False
    seed: int = 0
    teacher_readings: bool = False

    def __post_init__(self):
        self.rng = torch.Generator().manual_seed(self.seed)

    def __call__(self, examples: list[dict]) -> dict:
        if "cache_index" in examples[0]:
            batch = self._cached_batch(examples)
        else:
            batch = dict(self.processor(audio=[e["audio"] for e in examples], text=[e["text"] for e in examples]))
            if self.spec_augment:
                spec_augment(batch["input_features"], batch["input_features_mask"].sum(-1), self.rng)
        if self.teacher_readings:
            batch["reading_ids"] = self._readings(examples, batch["input_ids"])
        return batch

    def _readings(self, examples: list[dict], input_ids: torch.Tensor) -> torch.Tensor:
        """The spoken form of each transcript in LLM tokens, cut to its clip's audio tokens, padded with -100."""
        audio_tokens = (input_ids == self.processor.audio_token_id).sum(-1).tolist()
        rows = [spoken_tokens(self.processor.tokenizer, e["text"])[:n] for e, n in zip(examples, audio_tokens)]
        longest = max(map(len, rows))
        return torch.tensor([row + [IGNORE_INDEX] * (longest - len(row)) for row in rows], dtype=torch.long)

    def _cached_batch(self, examples: list[dict]) -> dict:
        cached = [self.encoder_cache[e["cache_index"]] for e in examples]
        rows = [
            self.processor.tokenize(c["num_samples"], e["text"], e["cache_index"]) for c, e in zip(cached, examples)
        ]
        batch = {key: torch.tensor(value) for key, value in self.processor.pad_tokens(rows).items()}
        hidden = torch.nn.utils.rnn.pad_sequence([c["hidden_states"] for c in cached], batch_first=True).float()
        lengths = torch.tensor([c["hidden_states"].shape[0] for c in cached])
        batch["mm_encoder_outputs"] = {"audio": (hidden, lengths)}
        return batch


@torch.no_grad()
def build_encoder_cache(model, processor: ASRProcessor, dataset: Dataset, batch_size: int = 16) -> list[dict]:
    """Runs the frozen encoder layers once over a finite dataset, on the encoder's device; entry i holds example i's
    output (fp16, in CPU memory)."""
    order = np.argsort(dataset["length"])
    cache = [None] * len(dataset)
    for start in tqdm(range(0, len(order), batch_size), desc="caching encoder outputs"):
        indices = [int(i) for i in order[start : start + batch_size]]
        clips = [load_audio(dataset[i]["audio"]) for i in indices]
        batch = processor(audio=clips).to(model.audio_encoder.conv1.weight.device)
        frames = batch["input_features_mask"].sum(-1)
        hidden, lengths = model.audio_encoder.forward_frozen(batch["input_features"], frames)
        for row, index in enumerate(indices):
            cache[index] = {"hidden_states": hidden[row, : lengths[row]].half().cpu(), "num_samples": clips[row].size}
        del batch, hidden
        release_freed_heap()
    return cache


def release_freed_heap():
    """Hands freed heap memory back to the system, where the C library can (glibc's `malloc_trim`).

    Each batch's large temporary tensors are freed between small cache entries that stay; glibc keeps those holes
    and the process grows by far more than the cache holds, until a long run's cache no longer fits in memory.
    """
    trim = malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def malloc_trim():
    """The C library's `malloc_trim`, looked up once (finding the library runs a subprocess); None without one."""
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None


def length_grouped_batches(lengths: list[float], batch_size: int, seed: int, mega_batches: int = 50):
    """Endless random batches of indices with similar lengths (shuffle, then sort within mega-batches)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size * mega_batches):
            group = sorted(order[start : start + batch_size * mega_batches], key=lengths.__getitem__)
            batches = [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
            rng.shuffle(batches)
            yield from batches
