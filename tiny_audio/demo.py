"""`make demo`: train the offline `tiny` preset on the synthetic corpus, score it, and transcribe a held-out clip.

    python -m tiny_audio.demo --corpus outputs/speech_corpus --output_dir outputs/demo [--train_samples N] [--ctc_steps N]

Aims at `make demo`'s 25 minutes on 2 CPU cores with the defaults (the README has the measured times, machine by
machine); `make demo TRAIN_CLIPS=6000` builds a larger corpus and trains on all of it: a better model in more time.
Any other flag is passed to train_trainer.py (`--max_steps` for the LLM stage, for one). After training it scores the
synthetic test split (by kind of clip too, when the corpus records them), real recordings (`--real_speech`, a folder
with `manifest.jsonl`; by default `../shared/speech` beside the repository when it exists) and the non-speech set,
and writes all three to `demo_results.json` in the model folder.
"""

import argparse
import csv
import json
import time
from pathlib import Path

from transformers import pipeline

import train_trainer
from tiny_audio.data import SkipCounter, open_dataset, scan
from tiny_audio.evaluation import (
    clip_conditions,
    condition_breakdown,
    non_speech_clips,
    read_manifest,
    score,
    score_non_speech,
    word_error_rate,
)

REAL_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"
# stage 0's passes over its clips in every measured run of today's recipe (README: 1,500 CTC steps of 8 on 3,000 clips)
CTC_PASSES = 4


def ctc_steps_for(train_samples: int) -> int:
    """Stage 0's steps for `CTC_PASSES` passes over `train_samples` clips in the `tiny` preset's CTC batches."""
    return round(CTC_PASSES * train_samples / train_trainer.TRAINING_PRESETS["tiny"]["ctc_batch_size"])


def training_clips(corpus: str, train_samples: int) -> int:
    """The clips that training reads: `train_samples`, or all of the corpus's training split where it holds fewer."""
    metadata = Path(corpus) / "train" / "metadata.csv"
    if not metadata.is_file():
        return train_samples  # train_trainer.py says what is wrong with the corpus
    with metadata.open(newline="") as rows:
        return min(train_samples, sum(1 for _ in csv.DictReader(rows)))


def score_demo_model(asr, test, real_speech: Path | None, conditions: dict | None = None) -> dict:
    """WER and RTFx on the synthetic `test` examples (and by kind of clip, given their `clip_conditions`) and on the
    recordings of `real_speech` (left out when it holds no manifest.jsonl), and what `asr` makes up on the non-speech
    set."""
    result = score(asr, test)
    summary = {"test_wer": result["wer"], "test_samples": result["samples"], "test_rtfx": result["rtfx"]}
    if conditions is not None:
        breakdown = condition_breakdown(test, result["hypotheses"], conditions)
        summary["test_wer_by_condition"] = {condition: entry["wer"] for condition, entry in breakdown.items()}
    if real_speech is not None and (real_speech / "manifest.jsonl").is_file():
        real = score(asr, read_manifest(real_speech))
        summary.update(real_speech_wer=real["wer"], real_speech_samples=real["samples"], real_speech_rtfx=real["rtfx"])
    non_speech = score_non_speech(asr, non_speech_clips())
    return summary | {key: value for key, value in non_speech.items() if key != "non_speech_hypotheses"}


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """The demo's own flags, and the rest for train_trainer.py."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="outputs/speech_corpus")
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument(
        "--train_samples", type=int, default=3000, help="training clips (their encoder outputs are cached)"
    )
    parser.add_argument(
        "--ctc_steps",
        type=int,
        default=None,
        help=f"stage 0: CTC warm-up steps of the projector (default: {CTC_PASSES} passes over the training clips in "
        "the preset's batches)",
    )
    parser.add_argument("--test_samples", type=int, default=200)
    parser.add_argument(
        "--real_speech", default=str(REAL_SPEECH), help="folder of real recordings with manifest.jsonl ('' to skip)"
    )
    return parser.parse_known_args(argv)


def train(args: argparse.Namespace, train_flags: list[str]) -> None:
    """The `tiny` preset on the corpus: stage 0, then the LLM stage, saved to `args.output_dir`."""
    train_trainer.main(
        [
            "--preset",
            "tiny",
            "--dataset_name",
            args.corpus,
            "--output_dir",
            args.output_dir,
            "--max_train_samples",
            str(args.train_samples),
            "--ctc_warmup_steps",
            str(args.ctc_steps or ctc_steps_for(training_clips(args.corpus, args.train_samples))),
            *train_flags,
        ]
    )


def print_summary(summary: dict, real_speech: Path | None, clip: dict, hypothesis: str, output_dir: str) -> None:
    """The held-out clip's transcript and the three scores, as `make demo` ends."""
    print(f"\nHeld-out clip ({Path(clip['audio']).name}, a voice and sentence never seen in training):")
    print(f"  reference : {clip['text']}")
    print(f"  hypothesis: {hypothesis}")
    print(f"  WER       : {word_error_rate([clip['text']], [hypothesis]):.1%}")
    print(
        f"\nSynthetic test split WER over {summary['test_samples']} clips: {summary['test_wer']:.1%} "
        f"(RTFx {summary['test_rtfx']:.1f})"
    )
    if "test_wer_by_condition" in summary:
        by_condition = summary["test_wer_by_condition"].items()
        print("  by kind of clip: " + ", ".join(f"{condition} {wer:.1%}" for condition, wer in by_condition))
    if "real_speech_wer" in summary:
        print(
            f"Real speech WER over {summary['real_speech_samples']} recordings in {real_speech}: "
            f"{summary['real_speech_wer']:.1%} (RTFx {summary['real_speech_rtfx']:.1f})"
        )
    else:
        print(f"Real speech: skipped, no manifest.jsonl in {real_speech or '(--real_speech not given)'}")
    print(
        f"Non-speech ({summary['non_speech_clips']} clips of noise, tones and music): "
        f"{summary['words_per_non_speech_clip']:.1f} made-up words per clip, "
        f"{summary['non_speech_clips_with_text']:.0%} of clips got any text"
    )
    print(f"{summary['minutes_total']:.1f} minutes in all. Model: {output_dir}")


def main(argv=None) -> dict:
    args, train_flags = parse_args(argv)
    # a corpus built by tiny_audio.speech_corpus records each clip's engine, voice and augmentation
    conditions = clip_conditions(args.corpus, "test") if Path(args.corpus, "corpus.json").is_file() else None

    start = time.monotonic()
    train(args, train_flags)
    train_minutes = (time.monotonic() - start) / 60

    print(f"\nLoading {args.output_dir} through pipeline(..., trust_remote_code=True)")
    asr = pipeline("automatic-speech-recognition", model=args.output_dir, trust_remote_code=True)
    test = list(
        scan(
            open_dataset(args.corpus, None, "test", "audio", "text", False),
            SkipCounter("test"),
            30.0,
            args.test_samples,
        )
    )
    real_speech = Path(args.real_speech) if args.real_speech else None
    summary = score_demo_model(asr, test, real_speech, conditions)
    clip = test[0]
    hypothesis = asr(clip["audio"])["text"]
    summary.update(minutes_total=(time.monotonic() - start) / 60, minutes_training=train_minutes)
    Path(args.output_dir, "demo_results.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, real_speech, clip, hypothesis, args.output_dir)
    return summary


if __name__ == "__main__":
    main()
