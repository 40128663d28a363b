"""What the decoding of a `TokenReadout` model's reading buys: a trained model whose LLM reads the readout, through
the pipeline in two ways, on real recordings and on the synthetic test split. WER of each, and the wall-time ratio of
the first to the second, timed in turns in one run (first, second, second, first) so that a slow spell on a shared
machine slows both.

- `--compare follow_reading`: the `ReadingConstraint` on and off (the LLM keeps to the reading's words, or writes
  freely).
- `--compare reading_beam_size`: the reading picked from a CTC beam of `--beam_size` readings by the LLM
  (`ASRModel.best_reading`), against the greedy reading.

    python -m benchmarks.reading_decoding --model outputs/demo --real_speech ../shared/speech \
        --corpus outputs/speech_corpus --compare reading_beam_size

Results go to benchmarks/results/<compare>-<model folder>.json and .md.
"""

import argparse
from pathlib import Path

from transformers import pipeline

from benchmarks.common import machine_info, write_results
from tiny_audio.data import SkipCounter, open_dataset, scan
from tiny_audio.evaluation import read_manifest, score

COMPARISONS = {
    "follow_reading": ("following the reading", "writing freely"),
    "reading_beam_size": ("beam of readings", "greedy reading"),
}


def example_sets(args) -> dict[str, list[dict]]:
    sets = {}
    if args.real_speech:
        sets[f"real speech ({args.real_speech})"] = read_manifest(Path(args.real_speech))
    if args.corpus:
        test = open_dataset(args.corpus, None, "test", "audio", "text", False)
        sets[f"synthetic test ({args.corpus})"] = list(scan(test, SkipCounter("test"), 30.0, args.test_samples))
    return sets


def run(asr, examples: list[dict], compare: str, first: bool, beam_size: int) -> dict:
    """`score` with the first (`first`) or the second way of decoding."""
    if compare == "follow_reading":
        return score(asr, examples, follow_reading=first)
    asr.model.config.reading_beam_size = beam_size if first else 1
    return score(asr, examples)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo", help="a trained model folder (projector_output=ctc_tokens)")
    parser.add_argument("--real_speech", default="", help="a folder with manifest.jsonl")
    parser.add_argument("--corpus", default="", help="a speech corpus folder: its test split")
    parser.add_argument("--test_samples", type=int, default=200)
    parser.add_argument("--compare", choices=COMPARISONS, default="follow_reading")
    parser.add_argument("--beam_size", type=int, default=8, help="with --compare reading_beam_size")
    args = parser.parse_args(argv)
    asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True)
    if asr.model.projector.readout is None:
        parser.error(f"{args.model} has no TokenReadout: there is no reading to decode")
    first_name, second_name = COMPARISONS[args.compare]

    rows = []
    for name, examples in example_sets(args).items():
        runs = {first: run(asr, examples, args.compare, first, args.beam_size) for first in (True, False)}
        seconds = {first: 1 / result["rtfx"] for first, result in runs.items()}  # wall seconds per audio second
        for first in (False, True):  # the second turn, in the other order
            seconds[first] += 1 / run(asr, examples, args.compare, first, args.beam_size)["rtfx"]
        row = {
            "set": name,
            "clips": len(examples),
            "wer_first": runs[True]["wer"],
            "wer_second": runs[False]["wer"],
            "time_ratio": seconds[True] / seconds[False],
        }
        rows.append(row)
        print(
            f"{name}: WER {row['wer_first']:.1%} with the {first_name}, {row['wer_second']:.1%} with the "
            f"{second_name}; time ratio {row['time_ratio']:.2f}"
        )
    table = [
        [r["set"], r["clips"], f"{r['wer_first']:.1%}", f"{r['wer_second']:.1%}", f"{r['time_ratio']:.2f}"]
        for r in rows
    ]
    path = write_results(
        f"{args.compare}-{Path(args.model).name}",
        {
            "title": f"{first_name} against {second_name} ({args.model})",
            "machine": machine_info(asr.device),
            "settings": vars(args),
            "results": rows,
            "tables": [
                {
                    "title": "",
                    "headers": ["set", "clips", f"WER, {first_name}", f"WER, {second_name}", "time ratio"],
                    "rows": table,
                }
            ],
            "notes": [
                "measured: pipeline(clips, batch_size=8); time ratio over two turns each (first, second, second, "
                "first)",
            ],
        },
    )
    print(f"results: {path}")
    return {"results": rows}


if __name__ == "__main__":
    main()
