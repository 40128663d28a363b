"""What the `ReadingConstraint` buys: a trained model whose LLM reads a `TokenReadout`, through the pipeline with
`follow_reading` on and off, on real recordings and on the synthetic test split. WER of each, and the wall-time ratio
of on to off, timed in turns in one run (on, off, off, on) so that a slow spell on a shared machine slows both.

    python -m benchmarks.reading_constraint --model outputs/demo --real_speech ../shared/speech \
        --corpus outputs/speech_corpus

Results go to benchmarks/results/reading_constraint-<model folder>.json and .md.
"""

import argparse
from pathlib import Path

from transformers import pipeline

from benchmarks.common import machine_info, write_results
from tiny_audio.data import SkipCounter, open_dataset, scan
from tiny_audio.evaluation import read_manifest, score


def example_sets(args) -> dict[str, list[dict]]:
    sets = {}
    if args.real_speech:
        sets[f"real speech ({args.real_speech})"] = read_manifest(Path(args.real_speech))
    if args.corpus:
        test = open_dataset(args.corpus, None, "test", "audio", "text", False)
        sets[f"synthetic test ({args.corpus})"] = list(scan(test, SkipCounter("test"), 30.0, args.test_samples))
    return sets


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo", help="a trained model folder (projector_output=ctc_tokens)")
    parser.add_argument("--real_speech", default="", help="a folder with manifest.jsonl")
    parser.add_argument("--corpus", default="", help="a speech corpus folder: its test split")
    parser.add_argument("--test_samples", type=int, default=200)
    args = parser.parse_args(argv)
    asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True)
    if asr.model.projector.readout is None:
        parser.error(f"{args.model} has no TokenReadout: follow_reading changes nothing there")

    rows = []
    for name, examples in example_sets(args).items():
        runs = {follow: score(asr, examples, follow_reading=follow) for follow in (True, False)}
        seconds = {follow: 1 / run["rtfx"] for follow, run in runs.items()}  # wall seconds per audio second
        for follow in (False, True):  # the second turn, in the other order
            seconds[follow] += 1 / score(asr, examples, follow_reading=follow)["rtfx"]
        row = {
            "set": name,
            "clips": len(examples),
            "wer_follow_reading": runs[True]["wer"],
            "wer_free": runs[False]["wer"],
            "time_ratio": seconds[True] / seconds[False],
        }
        rows.append(row)
        print(
            f"{name}: WER {row['wer_follow_reading']:.1%} following the reading, {row['wer_free']:.1%} free; "
            f"time on / off {row['time_ratio']:.2f}"
        )
    table = [
        [r["set"], r["clips"], f"{r['wer_follow_reading']:.1%}", f"{r['wer_free']:.1%}", f"{r['time_ratio']:.2f}"]
        for r in rows
    ]
    path = write_results(
        f"reading_constraint-{Path(args.model).name}",
        {
            "title": f"ReadingConstraint on and off ({args.model})",
            "machine": machine_info(asr.device),
            "settings": vars(args),
            "results": rows,
            "tables": [
                {
                    "title": "",
                    "headers": ["set", "clips", "WER, follow_reading", "WER, free", "time on / off"],
                    "rows": table,
                }
            ],
            "notes": [
                "measured: pipeline(clips, batch_size=8), greedy; time ratio over two turns each (on, off, off, on)",
            ],
        },
    )
    print(f"results: {path}")
    return {"results": rows}


if __name__ == "__main__":
    main()
