"""Stage 0's training step with and without bfloat16 autocast of the projector (bases in bfloat16, as `make demo`).

One step = `CTCWarmup.step`: projector forward, `TokenReadout` CTC loss, backward, AdamW. The classes and batch
lengths are those of a real corpus's training transcripts (the demo's `outputs/speech_corpus` by default); the cached
encoder outputs are random, which changes nothing in the time a step takes.

    python -m benchmarks.ctc_step [--corpus outputs/speech_corpus] [--steps 20]

Timing: each batch runs once with autocast and once without, in alternating order, after untimed warm-up steps.
"""

import argparse
import csv
from functools import partial
from pathlib import Path

import torch
from datasets import Dataset

from benchmarks.common import machine_info, timed, write_results
from configuration_asr import HOP_LENGTH, SAMPLING_RATE, conv_output_length
from tiny_audio.ctc_warmup import CTCWarmup
from tiny_audio.presets import build


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="outputs/speech_corpus", help="a speech_corpus folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed batches (each run by both variants)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def corpus_transcripts(corpus: Path) -> Dataset:
    """The `text` and `length` (seconds) columns of a corpus's training split."""
    with open(corpus / "train" / "metadata.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return Dataset.from_dict({"text": [r["text"] for r in rows], "length": [float(r["duration"]) for r in rows]})


def random_encoder_cache(lengths: list[float], width: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    frames = [max(1, conv_output_length(round(seconds * SAMPLING_RATE) // HOP_LENGTH)) for seconds in lengths]
    return [{"hidden_states": torch.randn(n, width, generator=generator).half()} for n in frames]


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, processor = build("tiny-base-tokens", dtype=torch.bfloat16)
    dataset = corpus_transcripts(Path(args.corpus))
    cache = random_encoder_cache(dataset["length"], model.config.audio_config.d_model, args.seed)
    warmup = CTCWarmup(model, processor, dataset, cache, args.batch_size, seed=args.seed)
    device = torch.device("cpu")
    seconds = {True: [], False: []}
    for index in range(args.warmup + args.steps):
        batch = next(warmup.batches)
        for bfloat16 in (True, False) if index % 2 else (False, True):
            warmup.bfloat16 = bfloat16
            _, wall, _ = timed(partial(warmup.step, batch), device)
            if index >= args.warmup:
                seconds[bfloat16].append(wall)
    mean = {variant: sum(times) / len(times) for variant, times in seconds.items()}
    rows = [
        ["projector under bfloat16 autocast (the default with bfloat16 bases)", f"{mean[True]:.3f}"],
        ["projector in float32", f"{mean[False]:.3f}"],
    ]
    result = {
        "title": f"Stage 0 CTC step, Whisper base + SmolLM2 readout, batch {args.batch_size} (cpu)",
        "machine": machine_info(device),
        "settings": vars(args),
        "tables": [{"title": "", "headers": ["variant", "seconds per step"], "rows": rows}],
        "notes": [
            f"measured: speedup {mean[False] / mean[True]:.2f}x (float32 / autocast seconds per step)",
            f"measured: {args.steps} batches, each run by both variants in alternating order, after {args.warmup} "
            "untimed batches; one process",
            f"classes: {len(warmup.vocab)} spoken tokens of {len(dataset)} training transcripts of {args.corpus}; "
            "batches grouped by duration as stage 0 draws them; encoder outputs random",
        ],
    }
    write_results("ctc_step_cpu", result)
    print("\n".join(result["notes"]))
    return result


if __name__ == "__main__":
    main()
