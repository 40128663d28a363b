"""Training throughput and peak memory: ours vs the 30 s-padding, full-logits baseline (same weights, same clips).

One step = forward + backward + AdamW step on the trainable parameters (the projector); the Whisper encoder and the
LLM are frozen. The model has the reference build's widths (encoder d_model 1280, 20 heads, ffn 5120, 128 mels;
LLM hidden 2048, 16/4 heads, intermediate 11008, vocabulary 128,256) with random weights and reduced depth.

    python -m benchmarks.train_throughput                         # CPU, 2 + 2 layers, batch 2
    python -m benchmarks.train_throughput --device cuda --full-depth

Timing: the variants alternate step by step in one process, after untimed warm-up steps. Peak memory, weights
included: CUDA `torch.cuda.max_memory_allocated`; CPU peak resident set (VmHWM reset through /proc/self/clear_refs
after glibc malloc_trim) around each step, the maximum over the variant's steps.
"""

import sys
from functools import partial

import torch

from benchmarks.common import (
    PeakMemory,
    autocast,
    batch_durations,
    benchmark_parser,
    build_reference,
    finish_args,
    full_logits_loss,
    gib,
    machine_info,
    resolve_device,
    resolve_dtype,
    results_name,
    setting_notes,
    synthetic_clips,
    timed,
    training_batch,
    transcript_ids,
    write_results,
)

VARIANTS = ("ours", "baseline")


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch-size", type=int, help="default 2 on cpu, 16 on cuda (8 at full depth)")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 3 on cpu, 10 on cuda)")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant first (default 1 on cpu, 3 on cuda)")
    parser.add_argument(
        "--batching",
        choices=["grouped", "random"],
        default="grouped",
        help="grouped by duration like the trainer (default), or random batches",
    )
    parser.add_argument(
        "--frame-bucket",
        type=int,
        default=0,
        help="pad ours' mel frames to a multiple of this (0: off; see bucket_frames)",
    )
    parser.add_argument(
        "--prewarm-shapes",
        action="store_true",
        help="run every batch once, untimed, first: excludes per-shape setup (steady state of a long "
        "run whose batch shapes repeat)",
    )
    args = finish_args(parser.parse_args(argv))
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or ((8 if args.full_depth else 16) if cuda else 2)
    args.steps = args.steps or (10 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    return args


class Bench:
    """The model, its optimizer and both variants' batches for every step (same clips and transcripts)."""

    def __init__(self, args):
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.audio_repeat = args.baseline_audio_tokens // 375
        self.model, ours_processor, baseline_processor = build_reference(
            args.encoder_layers, args.llm_layers, self.device, self.dtype, args.seed
        )
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # A tiny learning rate: the step's cost is the same, and the random model stays finite over the run.
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=self.device.type == "cuda")
        self.processors = {"ours": ours_processor, "baseline": baseline_processor}
        self.frame_bucket = args.frame_bucket
        self.durations = batch_durations(
            args.batch_size, args.warmup + args.steps, args.batching == "grouped", args.seed
        )
        self.batches = {name: self.make_batches(name, self.durations, args.seed) for name in VARIANTS}

    def make_batches(self, name: str, batches, seed: int) -> list[dict]:
        """Model inputs of one variant for a list of per-batch clip durations (clips and transcripts seeded)."""
        bucket = self.frame_bucket if name == "ours" else 0
        return [
            training_batch(
                self.processors[name],
                synthetic_clips(durations, seed + index),
                transcript_ids(durations, seed + index),
                self.device,
                bucket,
            )
            for index, durations in enumerate(batches)
        ]

    def loss(self, name: str, batch: dict) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            if name == "ours":
                return self.model(**batch).loss
            return full_logits_loss(self.model, batch, self.audio_repeat)

    def step(self, name: str, index: int) -> float:
        loss = self.loss(name, self.batches[name][index])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def run(bench: Bench, args) -> dict:
    """Warm-up then timed steps, the variants alternating; per variant: wall and CPU seconds, peak memory, losses."""
    totals = {name: {"wall": 0.0, "cpu": 0.0, "peak": 0, "resting": 0, "losses": []} for name in VARIANTS}
    if args.prewarm_shapes:
        for index in range(args.warmup, args.warmup + args.steps):
            for name in VARIANTS:
                bench.step(name, index)
    for index in range(args.warmup + args.steps):
        for name in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
            total = totals[name]
            with PeakMemory(bench.device) as memory:
                loss, wall, cpu = timed(partial(bench.step, name, index), bench.device)
            if memory.peak is not None and memory.peak > total["peak"]:
                total["peak"], total["resting"] = memory.peak, memory.resting
            total["losses"].append(round(loss, 4))
            if index >= args.warmup:
                total["wall"] += wall
                total["cpu"] += cpu
            warmup = " (warm-up)" if index < args.warmup else ""
            print(
                f"step {index}{warmup} {name}: {wall:.2f} s (cpu {cpu:.1f} s), loss {loss:.3f}, "
                f"peak {gib(memory.peak or 0):.2f} GiB"
            )
    return totals


def main(argv=None):
    args = parse_args(argv)
    bench = Bench(args)
    depth = f"{args.encoder_layers} encoder + {args.llm_layers} LLM layers"
    print(
        f"{depth} at reference widths, {bench.device} {str(bench.dtype).removeprefix('torch.')}, batch "
        f"{args.batch_size} ({args.batching}), {args.steps} timed steps (+{args.warmup} warm-up) per variant, "
        f"baseline {args.baseline_audio_tokens} audio tokens"
    )
    loss_check(bench)
    results = summarize(run(bench, args), bench, args)
    report(results, bench.device, str(bench.dtype).removeprefix("torch."), depth, args)


def loss_check(bench: Bench) -> None:
    """Prints both losses on the same inputs: the baseline's loss is the same quantity as ours."""
    with torch.no_grad(), autocast(bench.device, bench.dtype):
        batch = bench.batches["ours"][0]
        ours_loss, base_loss = bench.model(**batch).loss.item(), full_logits_loss(bench.model, batch).item()
    print(f"loss check on the same inputs: ours {ours_loss:.4f}, full-logits {base_loss:.4f}")


def summarize(totals: dict, bench: Bench, args) -> dict:
    """Per variant: throughput over the timed steps, CPU time, memory, sequence lengths and losses."""
    utterances = args.steps * args.batch_size
    audio_seconds = float(sum(d.sum() for d in bench.durations[args.warmup :]))
    return {
        name: {
            "utterances_per_s": utterances / total["wall"],
            "audio_hours_per_hour": audio_seconds / total["wall"],
            "wall_seconds": total["wall"],
            "cpu_seconds": total["cpu"],
            "peak_memory_bytes": total["peak"] or None,
            "resting_memory_bytes": total["resting"],
            "sequence_lengths": [b["input_ids"].shape[1] for b in bench.batches[name]],
            "losses": total["losses"],
        }
        for name, total in totals.items()
    }


def memory_cells(result: dict) -> list[str]:
    """Table cells: peak memory and the step's own memory (peak - before the step), GiB."""
    if not result["peak_memory_bytes"]:
        return ["n/a", "n/a"]
    peak, resting = result["peak_memory_bytes"], result["resting_memory_bytes"]
    return [f"{gib(peak):.2f}", f"{gib(peak - resting):.2f}"]


def report(results: dict, device, dtype: str, depth: str, args) -> None:
    """Writes the results file (per-variant results, speedups, table and notes) and prints the speedup."""
    ours, base = results["ours"], results["baseline"]
    speedup = ours["utterances_per_s"] / base["utterances_per_s"]
    cpu_speedup = base["cpu_seconds"] / ours["cpu_seconds"]
    memory_ratio = base["peak_memory_bytes"] / ours["peak_memory_bytes"] if ours["peak_memory_bytes"] else float("nan")
    labels = {
        "ours": "ours (real length, LM head on labels)",
        "baseline": f"baseline (30 s pad, {args.baseline_audio_tokens} audio tokens, full logits)",
    }
    rows = [
        [labels[name], f"{r['utterances_per_s']:.3f}", f"{r['audio_hours_per_hour']:.1f}", *memory_cells(r)]
        for name, r in results.items()
    ]
    memory_kind = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS (VmHWM, reset via /proc/self/clear_refs after malloc_trim)"
    )
    cpu_note = f", {cpu_speedup:.2f}x by process CPU time" if device.type == "cpu" else ""
    notes = [
        f"measured: speedup {speedup:.2f}x utterances/s (wall){cpu_note}; peak-memory ratio {memory_ratio:.2f}x "
        "(baseline / ours)",
        f"measured: {args.steps} timed steps of batch {args.batch_size} per variant after {args.warmup} warm-up, "
        f"variants alternating in one process; random weights at the reference widths, {depth}",
        f"memory: {memory_kind} around each step, maximum over the variant's steps, weights included",
        "batches: grouped by duration as the trainer does (sorted pool of 50 batches)"
        if args.batching == "grouped"
        else "batches: random, ours padded to the longest clip of each",
        "baseline loss: full-vocabulary logits on every position, then cross-entropy (use_cache=False)",
        *setting_notes(args),
    ]
    headers = ["variant", "utterances/s", "audio h / h", "peak memory GiB", "step memory GiB (peak - before step)"]
    path = write_results(
        results_name("train_throughput", device, args),
        {
            "title": f"Training throughput, {depth} at reference widths ({device.type}, {dtype})",
            "machine": machine_info(device),
            "settings": {**vars(args), "dtype": dtype},
            "results": results,
            "speedup": speedup,
            "cpu_time_speedup": cpu_speedup if device.type == "cpu" else None,
            "peak_memory_ratio": memory_ratio,
            "tables": [{"title": "", "rows": rows, "headers": headers}],
            "notes": notes,
        },
    )
    print(f"results: {path}")
    print(f"speedup {speedup:.2f}x, peak-memory ratio {memory_ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
