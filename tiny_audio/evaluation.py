"""Word error rate, real-time factor and non-speech hallucination of a model, through the same pipeline users call.

    python -m tiny_audio.evaluation --model outputs/demo --dataset_name outputs/speech_corpus --split test
    python -m tiny_audio.evaluation --model outputs/demo --manifest ../shared/speech
    python -m tiny_audio.evaluation --whisper --model openai/whisper-tiny.en --manifest ../shared/speech

A manifest folder holds `manifest.jsonl`, one JSON object per line with `file` (relative to the folder) and `text`;
its clips may have any format, rate and length (longer than 30 s: the pipeline splits them). Every run also
transcribes a fixed non-speech set (noise, tones, and music loops when Debian's `sonic-pi-samples` is installed) and
reports how many words the model makes up there. `--train_corpus` adds where the errors are: the share of reference
words substituted, deleted and inserted, and how often the words a model gets wrong occur in that corpus's training
transcripts (a readout of whole tokens can only write words it was trained on). On a split of a `speech_corpus`
folder, `--by_condition` adds the WER of each engine, of held-out and training voices, and of clean and augmented
clips. The last line printed is the JSON summary.

    python -m tiny_audio.evaluation --model outputs/demo --manifest ../shared/speech --train_corpus outputs/speech_corpus
    python -m tiny_audio.evaluation --model outputs/demo --dataset_name outputs/speech_corpus --by_condition
"""

import argparse
import csv
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import jiwer
import numpy as np
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from configuration_asr import SAMPLING_RATE, from_pretrained_or_mirror
from pipeline_asr import ASRPipeline
from processing_asr import load_audio
from tiny_audio.augmentation import SONIC_PI_DIR, coloured_noise, sonic_pi_samples
from tiny_audio.data import SkipCounter, open_dataset, scan
from tiny_audio.speech_corpus import read_corpus_record

normalize = EnglishTextNormalizer({})
NON_SPEECH_SECONDS = 6.0
# `error_breakdown`'s bins of how often a reference word occurs in the training transcripts: name -> fewest times
TRAINING_COUNT_BINS = {"unseen": 0, "once": 1, "2-4": 2, "5-19": 5, "20+": 20}


def normalized_pairs(references: list[str], hypotheses: list[str]) -> tuple[list[str], list[str]]:
    """References and hypotheses after Whisper's English normalizer, without the references that normalise to
    nothing."""
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no non-empty references to score")
    return [r for r, _ in pairs], [h for _, h in pairs]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English normalizer (references that normalise to nothing are left out)."""
    return jiwer.wer(*normalized_pairs(references, hypotheses))


def training_count_bin(count: int) -> str:
    """The `TRAINING_COUNT_BINS` name for a word that the training transcripts hold `count` times."""
    return [name for name, fewest in TRAINING_COUNT_BINS.items() if count >= fewest][-1]


def error_breakdown(references: list[str], hypotheses: list[str], training_counts: Counter) -> dict:
    """Where the word errors are, after the English normalizer: substitutions, deletions and insertions per reference
    word, and for each `TRAINING_COUNT_BINS` bin of how often a reference word occurs in `training_counts`, its share
    of the reference words and the share of those that were substituted or deleted."""
    alignment = jiwer.process_words(*normalized_pairs(references, hypotheses))
    words, wrong = Counter(), Counter()
    for reference, chunks in zip(alignment.references, alignment.alignments):
        for chunk in chunks:
            for word in reference[chunk.ref_start_idx : chunk.ref_end_idx]:
                name = training_count_bin(training_counts[word])
                words[name] += 1
                wrong[name] += chunk.type != "equal"
    total = sum(words.values())
    return {
        "substituted": alignment.substitutions / total,
        "deleted": alignment.deletions / total,
        "inserted": alignment.insertions / total,
        "by_training_count": {
            name: {"share": words[name] / total, "wrong": wrong[name] / words[name] if words[name] else 0.0}
            for name in TRAINING_COUNT_BINS
        },
    }


def training_word_counts(corpus: str | Path) -> Counter:
    """How often each normalized word occurs in the transcripts of a local corpus's train split."""
    train = open_dataset(str(corpus), None, "train", "audio", "text", False)
    return Counter(word for text in train["text"] for word in normalize(text).split())


def clip_conditions(corpus: str | Path, split: str) -> dict[str, list[str]]:
    """The conditions of each clip of a `speech_corpus` split, by file name: its engine, whether its voice is held out
    of training, and whether it is augmented (from the split's metadata.csv and the corpus's corpus.json)."""
    corpus = Path(corpus)
    record = read_corpus_record(corpus)
    if record is None:
        raise FileNotFoundError(f"{corpus}: no corpus.json; conditions need a folder built by tiny_audio.speech_corpus")
    voices = record["voices"]
    held_out = {(engine, voice) for engine, entry in voices.items() for voice in entry["held_out"]}
    with open(corpus / split / "metadata.csv", newline="") as file:
        return {
            row["file_name"]: [
                f"engine {row['engine']}",
                "held-out voice" if (row["engine"], row["voice"]) in held_out else "training voice",
                "augmented" if row["augmentation"] else "clean",
            ]
            for row in csv.DictReader(file)
        }


def condition_breakdown(examples: list[dict], hypotheses: list[str], conditions: dict[str, list[str]]) -> dict:
    """WER and clip count of each condition (`clip_conditions`) over `examples` of that split: which voices and
    which kinds of audio a synthetic test's errors come from."""
    groups = defaultdict(lambda: ([], []))
    for example, hypothesis in zip(examples, hypotheses, strict=True):
        name = Path(example["audio"]).name
        if name not in conditions:
            raise ValueError(f"{example['audio']}: not listed in the split's metadata.csv")
        for condition in conditions[name]:
            groups[condition][0].append(example["text"])
            groups[condition][1].append(hypothesis)
    return {
        condition: {"clips": len(references), "wer": word_error_rate(references, texts)}
        for condition, (references, texts) in sorted(groups.items())
    }


def read_manifest(folder: str | Path) -> list[dict]:
    """The examples (`audio`: file path, `text`) listed in `folder/manifest.jsonl`; other fields are ignored."""
    manifest = Path(folder) / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder}: no manifest.jsonl (one JSON object with 'file' and 'text' per line)")
    examples = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{manifest}:{number}: not a JSON object ({error})") from error
        if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("file", "text")):
            raise ValueError(f"{manifest}:{number}: needs string fields 'file' and 'text', got {line[:200]!r}")
        path = Path(folder) / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{manifest}:{number}: no such audio file {path}")
        examples.append({"audio": str(path), "text": entry["text"]})
    if not examples:
        raise ValueError(f"{manifest}: no entries")
    return examples


def score(asr, examples, batch_size: int = 8, **call_kwargs) -> dict:
    """WER, RTFx and samples of `asr` (an ASR pipeline, or a `WhisperTranscriber`) on `examples`, dicts with
    `audio` (anything `load_audio` reads) and `text`; the pipeline batches clips of similar length."""
    clips = [load_audio(example["audio"]) for example in examples]
    start = time.perf_counter()
    outputs = asr(clips, batch_size=batch_size, **call_kwargs)
    wall_seconds = time.perf_counter() - start
    hypotheses = [output["text"].strip() for output in outputs]
    return {
        "wer": word_error_rate([example["text"] for example in examples], hypotheses),
        "rtfx": sum(clip.size for clip in clips) / SAMPLING_RATE / wall_seconds,
        "samples": len(clips),
        "hypotheses": hypotheses,
    }


def evaluate_model(model, processor, examples, batch_size: int = 8, **call_kwargs) -> dict:
    """`score` of an `ASRModel` through this repository's `ASRPipeline`."""
    return score(ASRPipeline(model=model, processor=processor), examples, batch_size, **call_kwargs)


class WhisperTranscriber:
    """A plain Whisper checkpoint with its own decoder (the baseline our encoder comes from), called like an ASR
    pipeline on 16 kHz English clips. A batch with a clip longer than 30 s goes through Whisper's sequential long-form
    decoding; transformers' pipeline cannot batch such clips, and its 30 s chunking dropped whole sentences."""

    def __init__(self, model_id: str):
        self.processor = from_pretrained_or_mirror(WhisperProcessor, model_id)
        self.model = from_pretrained_or_mirror(WhisperForConditionalGeneration, model_id).eval()
        # the test sets are English: a multilingual checkpoint left to detect the language drifts into others
        self.language = {"language": "en"} if self.model.generation_config.is_multilingual else {}

    @torch.no_grad()
    def __call__(self, clips: list[np.ndarray], batch_size: int = 16) -> list[dict]:
        texts = []
        for start in range(0, len(clips), batch_size):
            batch = clips[start : start + batch_size]
            long_form = max(clip.size for clip in batch) > self.processor.feature_extractor.n_samples
            options = {"truncation": False, "padding": "longest"} if long_form else {}
            inputs = self.processor(
                batch, sampling_rate=SAMPLING_RATE, return_tensors="pt", return_attention_mask=True, **options
            )
            generated = self.model.generate(**inputs, return_timestamps=long_form, **self.language)
            texts += self.processor.batch_decode(generated, skip_special_tokens=True)
        return [{"text": text} for text in texts]


def synthetic_non_speech_clips(seed: int = 0, seconds: float = NON_SPEECH_SECONDS) -> dict[str, np.ndarray]:
    """Named, seeded noise and tone clips with no speech in them: the part of the non-speech set that needs no files."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE

    def tone(*frequencies: float) -> np.ndarray:
        return 0.3 * sum(np.sin(2 * np.pi * f * t) for f in frequencies) / len(frequencies)

    clips = {
        "white_noise": 0.1 * coloured_noise("white", t.size, rng),
        "quiet_white_noise": 0.003 * coloured_noise("white", t.size, rng),
        "brown_noise": 0.1 * coloured_noise("brown", t.size, rng),
        "tone_440hz": tone(440.0),
        "hum_100hz_harmonics": tone(100.0, 200.0, 300.0, 400.0),
        "beeping_1khz": tone(1000.0) * ((t % 1.0) < 0.2),
        "chord_c_major": tone(261.63, 329.63, 392.0),
    }
    return {name: clip.astype(np.float32) for name, clip in clips.items()}


def non_speech_clips(
    seed: int = 0, seconds: float = NON_SPEECH_SECONDS, samples_dir: Path | None = SONIC_PI_DIR
) -> dict[str, np.ndarray]:
    """The non-speech set: `synthetic_non_speech_clips` plus the music and drum loops (`loop_*.flac`) of
    `samples_dir` (Debian's sonic-pi-samples) where it exists, each repeated or cut to `seconds`."""
    clips = synthetic_non_speech_clips(seed, seconds)
    for path in sonic_pi_samples(("loop_",), samples_dir) if samples_dir else []:
        clips[f"sonic_pi_{path.stem}"] = np.resize(load_audio(str(path)), int(seconds * SAMPLING_RATE))
    return clips


def score_non_speech(asr, clips: dict[str, np.ndarray], batch_size: int = 8, **call_kwargs) -> dict:
    """What `asr` makes up on `clips`, which hold no speech: words per clip and the share of clips with any text
    (both after the English normalizer, which drops Whisper's bracketed "(music)"-style tags)."""
    outputs = asr(list(clips.values()), batch_size=batch_size, **call_kwargs)
    texts = {name: output["text"].strip() for name, output in zip(clips, outputs)}
    words = [len(normalize(text).split()) for text in texts.values()]
    return {
        "non_speech_clips": len(clips),
        "words_per_non_speech_clip": float(np.mean(words)),
        "non_speech_clips_with_text": float(np.mean([count > 0 for count in words])),
        "non_speech_hypotheses": texts,
    }


def read_examples(args) -> list[dict]:
    """The clips and transcripts to score: a manifest folder, or a dataset split."""
    if args.manifest:
        return read_manifest(args.manifest)
    dataset = open_dataset(
        args.dataset_name, args.dataset_config_name, args.split, args.audio_column_name, args.text_column_name, False
    )
    # no duration limit: the pipeline cuts long clips into pieces; a split more than a fifth unusable is an error
    return list(scan(dataset, SkipCounter(f"{args.dataset_name}:{args.split}"), None, args.max_samples))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--whisper", action="store_true", help="--model is a plain Whisper checkpoint (baseline)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_name", help="Hub dataset id or local audiofolder")
    source.add_argument("--manifest", help="folder with manifest.jsonl ('file' and 'text' per line) and the audio")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--audio_column_name", default="audio")
    parser.add_argument("--text_column_name", default="text")
    parser.add_argument("--max_samples", type=int, default=200, help="with --dataset_name")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--no_loop_guard", action="store_true", help="turn off the pipeline's loop guard")
    parser.add_argument(
        "--no_follow_reading", action="store_true", help="let a TokenReadout model write freely (no ReadingConstraint)"
    )
    parser.add_argument("--no_non_speech", action="store_true", help="skip the non-speech hallucination set")
    parser.add_argument(
        "--train_corpus", default=None, help="a speech_corpus folder: break the errors down by training word counts"
    )
    parser.add_argument(
        "--by_condition",
        action="store_true",
        help="with --dataset_name a speech_corpus folder: WER by engine, held-out voice and augmentation",
    )
    parser.add_argument("--show", type=int, default=5, help="print this many reference/hypothesis pairs")
    parser.add_argument("--output_json", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.by_condition and not (args.dataset_name and Path(args.dataset_name).is_dir()):
        parser.error("--by_condition needs --dataset_name to be a local speech_corpus folder")
    if args.model.startswith((".", "/", "~")) and not Path(args.model).expanduser().is_dir():
        parser.error(f"--model {args.model}: no such model folder")
    try:  # the data first, so that a wrong folder fails at once, with its message and without a traceback
        conditions = clip_conditions(args.dataset_name, args.split) if args.by_condition else None
        examples = read_examples(args)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if args.whisper:
        asr, call_kwargs = WhisperTranscriber(args.model), {}
    else:
        asr, call_kwargs = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True), {}
        if args.no_loop_guard:
            call_kwargs["loop_guard"] = False
        if args.no_follow_reading:
            call_kwargs["follow_reading"] = False
    result = score(asr, examples, args.batch_size, **call_kwargs)
    if args.train_corpus:
        references = [example["text"] for example in examples]
        breakdown = error_breakdown(references, result["hypotheses"], training_word_counts(args.train_corpus))
        result["errors"] = breakdown
        print(
            f"reference words substituted {breakdown['substituted']:.1%}, deleted {breakdown['deleted']:.1%}, "
            f"inserted {breakdown['inserted']:.1%}"
        )
        for name, entry in breakdown["by_training_count"].items():
            print(
                f"{name:>6} in training: {entry['share']:6.1%} of the reference words, {entry['wrong']:4.0%} of them wrong"
            )
    if conditions is not None:
        result["conditions"] = condition_breakdown(examples, result["hypotheses"], conditions)
        for condition, entry in result["conditions"].items():
            print(f"{condition:>16}: {entry['clips']:4d} clips, WER {entry['wer']:.1%}")
    if not args.no_non_speech:
        result.update(score_non_speech(asr, non_speech_clips(), args.batch_size, **call_kwargs))
    for example, hypothesis in list(zip(examples, result["hypotheses"]))[: args.show]:
        print(f"REF: {example['text']}\nHYP: {hypothesis}\n")
    for name, text in list(result.get("non_speech_hypotheses", {}).items())[: args.show]:
        print(f"NON-SPEECH {name}: {text!r}")
    summary = {key: value for key, value in result.items() if not key.endswith("hypotheses")}
    summary["source"] = args.manifest or f"{args.dataset_name}:{args.split}"
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
