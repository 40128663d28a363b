"""Training throughput and peak memory: ours vs the 30 s-padding, full-logits baseline (same weights, same clips).

One step = forward + backward + AdamW step on the trainable parameters (the projector); the Whisper encoder and the
LLM are frozen. The model has the reference build's widths (encoder d_model 1280, 20 heads, ffn 5120, 128 mels;
LLM hidden 2048, 16/4 heads, intermediate 11008, vocabulary 128,256) with random weights and reduced depth.

    python benchmarks/train_throughput.py                         # CPU, 2 + 2 layers, batch 4
    python benchmarks/train_throughput.py --device cuda --full-depth

Timing: the two variants alternate step by step in one process (warm-up steps untimed). Peak memory: on CUDA,
`torch.cuda.max_memory_allocated` around each variant's steps; on CPU, the peak resident set (VmHWM, reset through
/proc/self/clear_refs) of one training step in a fresh child process per variant, weights included.
"""

import argparse
import json
import subprocess
import sys

import torch

from common import (
    REFERENCE_ENCODER_LAYERS,
    REFERENCE_LLM_LAYERS,
    autocast,
    build_reference,
    clip_durations,
    full_logits_loss,
    gib,
    machine_info,
    peak_rss_bytes,
    reset_peak_rss,
    resolve_device,
    resolve_dtype,
    rss_bytes,
    synthetic_clips,
    timed,
    training_batch,
    transcript_ids,
    write_results,
)

VARIANTS = ("ours", "baseline")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="frozen parts (default: bf16 on cuda)")
    parser.add_argument("--encoder-layers", type=int, default=2)
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--full-depth", action="store_true", help="the reference depth: 32 encoder, 36 LLM layers")
    parser.add_argument("--batch-size", type=int, help="default 4 on cpu, 8 on cuda")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 2 on cpu, 10 on cuda)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.full_depth:
        args.encoder_layers, args.llm_layers = REFERENCE_ENCODER_LAYERS, REFERENCE_LLM_LAYERS
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (8 if cuda else 4)
    args.steps = args.steps or (10 if cuda else 2)
    return args


class Bench:
    """The model, its optimizer and both variants' batches for every step (same clips and transcripts)."""

    def __init__(self, args):
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.model, ours_processor, baseline_processor = build_reference(
            args.encoder_layers, args.llm_layers, self.device, self.dtype, args.seed
        )
        self.model.train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        count = (args.warmup + args.steps) * args.batch_size
        self.durations = clip_durations(count, args.seed)
        clips, targets = synthetic_clips(self.durations, args.seed), transcript_ids(self.durations, args.seed)
        self.batches = {name: [] for name in VARIANTS}
        for start in range(0, count, args.batch_size):
            window = slice(start, start + args.batch_size)
            for name, processor in (("ours", ours_processor), ("baseline", baseline_processor)):
                self.batches[name].append(training_batch(processor, clips[window], targets[window], self.device))

    def loss(self, name: str, batch: dict) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.model(**batch).loss if name == "ours" else full_logits_loss(self.model, batch)

    def step(self, name: str, index: int) -> float:
        loss = self.loss(name, self.batches[name][index])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def memory_child(args) -> None:
    """Child process: peak RSS of one training step of one variant (weights, optimizer state and batch included)."""
    bench = Bench(args)
    resting = rss_bytes()
    exact = reset_peak_rss()
    bench.step(args.memory_child, 0)
    print(json.dumps({"peak": peak_rss_bytes() if exact else None, "resting": resting}))


def cpu_peak_memory(argv) -> dict:
    peaks = {}
    for name in VARIANTS:
        command = [sys.executable, __file__, *argv, "--memory-child", name]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[name] = json.loads(output.strip().splitlines()[-1])
    return peaks


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    bench = Bench(args)
    device, batch_size = bench.device, args.batch_size
    print(f"{args.encoder_layers} encoder + {args.llm_layers} LLM layers at reference widths, {device} {bench.dtype}, "
          f"batch {batch_size}, {args.steps} timed steps (+{args.warmup} warm-up) per variant")
    with torch.no_grad(), autocast(device, bench.dtype):  # the baseline's loss is the same quantity as ours
        batch = bench.batches["ours"][0]
        ours_loss, base_loss = bench.model(**batch).loss.item(), full_logits_loss(bench.model, batch).item()
    print(f"loss check on the same inputs: ours {ours_loss:.4f}, full-logits {base_loss:.4f}")

    seconds = {name: 0.0 for name in VARIANTS}
    peak_cuda = {name: 0 for name in VARIANTS}
    losses = {name: [] for name in VARIANTS}
    for index in range(args.warmup + args.steps):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        for name in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loss, elapsed = timed(lambda: bench.step(name, index), device)
            if device.type == "cuda":
                peak_cuda[name] = max(peak_cuda[name], torch.cuda.max_memory_allocated(device))
            losses[name].append(round(loss, 4))
            if index >= args.warmup:
                seconds[name] += elapsed
            print(f"step {index}{' (warm-up)' if index < args.warmup else ''} {name}: {elapsed:.2f} s, loss {loss:.3f}")

    timed_utterances = args.steps * batch_size
    timed_audio = float(bench.durations[args.warmup * batch_size :].sum())
    results = {name: {"utterances_per_s": timed_utterances / seconds[name], "seconds": seconds[name],
                      "audio_hours_per_hour": timed_audio / seconds[name], "losses": losses[name]} for name in VARIANTS}
    tokens = {name: [tuple(b["input_ids"].shape) for b in bench.batches[name]] for name in VARIANTS}
    gpu_memory = {name: peak_cuda[name] for name in VARIANTS}
    del bench
    if device.type == "cuda":
        memory_kind = "peak torch.cuda.max_memory_allocated over the variant's steps (weights included)"
        for name in VARIANTS:
            results[name]["peak_memory_bytes"] = gpu_memory[name]
    else:
        memory_kind = "peak RSS of one training step in a fresh child process per variant (weights included)"
        for name, peak in cpu_peak_memory(argv).items():
            results[name]["peak_memory_bytes"] = peak["peak"]
            results[name]["resting_memory_bytes"] = peak["resting"]

    ours, base = results["ours"], results["baseline"]
    speedup = ours["utterances_per_s"] / base["utterances_per_s"]
    memory_ratio = base["peak_memory_bytes"] / ours["peak_memory_bytes"] if ours["peak_memory_bytes"] else float("nan")
    rows = []
    for name, label in (("ours", "ours (real length, LM head on labels)"), ("baseline", "baseline (30 s pad, full logits)")):
        row = results[name]
        step_memory = row["peak_memory_bytes"] - row.get("resting_memory_bytes", 0) if row["peak_memory_bytes"] else None
        rows.append([label, f"{row['utterances_per_s']:.3f}", f"{row['audio_hours_per_hour']:.1f}",
                     f"{gib(row['peak_memory_bytes']):.2f}" if row["peak_memory_bytes"] else "n/a",
                     f"{gib(step_memory):.2f}" if device.type == "cpu" and step_memory else "-"])
    depth = f"{args.encoder_layers} encoder + {args.llm_layers} LLM layers"
    name = f"train_throughput_{device.type}" + ("_full" if args.full_depth else "")
    path = write_results(name, {
        "title": f"Training throughput, {depth} at reference widths ({device.type}, {str(bench_dtype(args))})",
        "machine": machine_info(device),
        "settings": {**{k: v for k, v in vars(args).items() if k != "memory_child"}, "dtype": bench_dtype(args),
                     "batch_shapes": tokens},
        "results": results,
        "speedup": speedup,
        "peak_memory_ratio": memory_ratio,
        "tables": [{"title": "", "headers": ["variant", "utterances/s", "audio h / h", "peak memory GiB",
                                             "step memory GiB (CPU: peak - resting)"], "rows": rows}],
        "notes": [
            f"measured: speedup {speedup:.2f}x utterances/s, peak-memory ratio {memory_ratio:.2f}x (baseline / ours)",
            f"measured: {args.steps} timed steps of batch {batch_size} per variant after {args.warmup} warm-up, "
            "variants alternating in one process; random weights, reference widths, reduced depth"
            if not args.full_depth else f"measured: full reference depth, {args.steps} timed steps of batch {batch_size}",
            f"memory: {memory_kind}",
            "data: clip durations lognormal (mean 8.4 s, sigma 0.6, clipped to 1-30 s, seeded); transcripts 2.7 words/s "
            "x 1.3 tokens/word as random token ids; batches in random (unsorted) order, ours padded to the longest clip",
            "baseline: same model and weights, processor with pad_audio_to_30s (750 audio tokens), full-vocabulary "
            "logits on every position then cross-entropy (use_cache=False)",
        ],
    })
    print(f"results: {path}")
    print(f"speedup {speedup:.2f}x, peak-memory ratio {memory_ratio:.2f}x")


def bench_dtype(args) -> str:
    return str(resolve_dtype(args.dtype, torch.device(args.device))).removeprefix("torch.")


if __name__ == "__main__":
    main()
