"""`make demo`: train the offline `tiny` preset on the synthetic corpus, score it, and transcribe a held-out clip.

    python -m tiny_audio.demo --corpus outputs/speech_corpus --output_dir outputs/demo [--train_minutes 8] [--ctc_steps 600]

Runs on 2 CPU cores in about 15 minutes with the defaults. Any other flag is passed to train_trainer.py.
"""

import argparse
import json
import time
from pathlib import Path

from transformers import pipeline

import train_trainer
from tiny_audio.data import SkipCounter, open_dataset, scan
from tiny_audio.evaluation import evaluate_model, word_error_rate


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="outputs/speech_corpus")
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument(
        "--train_samples", type=int, default=2400, help="training clips (their encoder outputs are cached)"
    )
    parser.add_argument("--ctc_steps", type=int, default=600, help="stage 0: CTC warm-up steps of the projector")
    parser.add_argument("--train_minutes", type=float, default=8.0, help="time budget of the LLM stage")
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--test_samples", type=int, default=200)
    args, train_flags = parser.parse_known_args(argv)

    start = time.monotonic()
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
            str(args.ctc_steps),
            "--max_train_minutes",
            str(args.train_minutes),
            "--max_steps",
            str(args.max_steps),
            *train_flags,
        ]
    )
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
    result = evaluate_model(asr.model, asr.processor, test)
    clip = test[0]
    hypothesis = asr(clip["audio"])["text"]
    summary = {
        "test_wer": result["wer"],
        "test_samples": result["samples"],
        "test_rtfx": result["rtfx"],
        "minutes_total": (time.monotonic() - start) / 60,
        "minutes_training": train_minutes,
    }
    Path(args.output_dir, "demo_results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nHeld-out clip ({Path(clip['audio']).name}, a voice and sentence never seen in training):")
    print(f"  reference : {clip['text']}")
    print(f"  hypothesis: {hypothesis}")
    print(f"  WER       : {word_error_rate([clip['text']], [hypothesis]):.1%}")
    print(
        f"\nTest split WER over {result['samples']} clips: {result['wer']:.1%} "
        f"(RTFx {result['rtfx']:.1f}); {summary['minutes_total']:.1f} minutes in all. Model: {args.output_dir}"
    )
    return summary


if __name__ == "__main__":
    main()
