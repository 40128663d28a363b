"""Analytic FLOPs per training utterance of the full reference build, ours vs baseline, and A40 hours per epoch.

Counts the matrix work (linear layers, convolutions, attention; 2 FLOPs per multiply-add) of one training step per
utterance: the frozen Whisper encoder forward (no backward: nothing below the projector trains), the projector
forward + backward (weight and input gradients), the frozen LLM forward + input-gradient backward (frozen weights:
linear layers cost 1x forward more, attention 2x), and the LM head forward + input-gradient backward on the
labelled positions (ours) or on every position (baseline). Attention is counted over the full T x T scores (no
causal skipping), as torch's FLOP counter does. Everything in the tables is an estimate except the `--check`
numbers, which torch's FLOP counter measures on a real (reduced-depth) training step.

    python -m benchmarks.flop_budget              # estimates + a measured check at 1 + 1 layers
    python -m benchmarks.flop_budget --no-check
"""

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.common import (
    MEAN_SECONDS,
    TOKENS_PER_WORD,
    WORDS_PER_SECOND,
    build_reference,
    clip_durations,
    full_logits_loss,
    machine_info,
    reference_config,
    synthetic_clips,
    training_batch,
    transcript_ids,
    write_results,
)
from configuration_asr import HOP_LENGTH, MAX_FEATURE_FRAMES, SAMPLING_RATE, conv_output_length

A40_BF16_DENSE_FLOPS = 149.7e12  # NVIDIA A40 datasheet, bf16 tensor core, dense
EPOCH_HOURS = {"LoquaciousSet medium": 2_500, "LoquaciousSet large": 25_000}
PARTS = ("encoder", "projector", "llm", "lm_head")
BASELINE = "baseline, 30 s -> 750 audio tokens"  # the design the others are compared with


@dataclass
class Dims:
    mels: int
    audio_width: int
    audio_layers: int
    audio_ffn: int
    projector_hidden: int
    llm_width: int
    llm_layers: int
    kv_width: int
    llm_ffn: int
    vocab: int

    @classmethod
    def of(cls, config) -> "Dims":
        audio, text = config.audio_config, config.text_config
        head_dim = text.hidden_size // text.num_attention_heads
        return cls(
            audio.num_mel_bins,
            audio.d_model,
            audio.encoder_layers,
            audio.encoder_ffn_dim,
            config.projector_hidden_size,
            text.hidden_size,
            text.num_hidden_layers,
            head_dim * text.num_key_value_heads,
            text.intermediate_size,
            text.vocab_size,
        )


def training_flops(d: Dims, mel_frames, llm_tokens, labels, head_positions) -> dict:
    """FLOPs of one utterance's training step by part. Arguments may be numpy arrays (one entry per utterance).

    mel_frames: frames the encoder runs on (padded length); llm_tokens: LLM sequence length (padded length);
    labels: labelled positions; head_positions: positions the LM head runs on (labels, or every position).
    """
    frames = conv_output_length(mel_frames)  # Whisper's stride-2 conv: 50 frames/s
    projected = conv_output_length(frames)
    tokens = conv_output_length(projected)  # 12.5 tokens/s
    width, ffn = d.audio_width, d.audio_ffn
    encoder = 2 * 3 * d.mels * width * mel_frames + 2 * 3 * width * width * frames
    encoder += d.audio_layers * (2 * frames * (4 * width**2 + 2 * width * ffn) + 4 * frames**2 * width)
    first_conv = 2 * 3 * width * width * projected
    rest = 2 * 3 * width * width * tokens + 2 * tokens * (width * d.projector_hidden + d.projector_hidden * d.llm_width)
    projector = 2 * first_conv + 3 * rest  # its input needs no gradient: the first conv skips the input gradient
    hidden = d.llm_width
    linear = 2 * llm_tokens * (2 * hidden**2 + 2 * hidden * d.kv_width + 3 * hidden * d.llm_ffn)
    attention = 4 * llm_tokens**2 * hidden
    llm = d.llm_layers * (2 * linear + 3 * attention)
    lm_head = 2 * (2 * head_positions * hidden * d.vocab)
    return {"encoder": encoder, "projector": projector, "llm": llm, "lm_head": lm_head}


def design_flops(d: Dims, seconds: np.ndarray, batch_max: np.ndarray, prompt: int, design: str) -> dict:
    """Mean FLOPs per utterance of a design over clips of `seconds` (batch_max: the longest clip of each one's batch)."""
    labels = np.maximum(1, np.round(seconds * WORDS_PER_SECOND * TOKENS_PER_WORD)) + 1  # transcript + end of turn
    if design == "ours":
        frames = (batch_max * SAMPLING_RATE // HOP_LENGTH).astype(np.int64)
        tokens = prompt + conv_output_length(conv_output_length(conv_output_length(frames)))
        tokens = tokens + np.round(batch_max * WORDS_PER_SECOND * TOKENS_PER_WORD) + 1  # padded to the batch's longest
        parts = training_flops(d, frames, tokens, labels, labels)
    else:
        audio_tokens = 375 if design == "baseline-375" else 750
        frames = np.full(seconds.shape, MAX_FEATURE_FRAMES)
        tokens = prompt + audio_tokens + labels
        parts = training_flops(d, frames, tokens, labels, tokens)
    return {part: float(np.mean(value)) for part, value in parts.items()}


def check() -> dict:
    """Counts a real training step's FLOPs (torch FlopCounterMode, math attention) at 1 + 1 layers vs the formula."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu")
    model, processor, padded = build_reference(1, 1, device)
    model.train()
    seconds = np.array([MEAN_SECONDS])
    clips, targets = synthetic_clips(seconds), transcript_ids(seconds)
    dims = Dims.of(model.config)
    rows = {}
    for name, variant_processor, loss_fn in (
        ("ours", processor, lambda batch: model(**batch).loss),
        ("baseline-750", padded, lambda batch: full_logits_loss(model, batch, audio_repeat=2)),
    ):
        batch = training_batch(variant_processor, clips, targets, device)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            loss_fn(batch).backward()
        labels = int((batch["labels"] != -100).sum())
        length = batch["input_ids"].shape[1] + (375 if name == "baseline-750" else 0)
        frames = batch["input_features"].shape[-1]
        estimate = sum(training_flops(dims, frames, length, labels, labels if name == "ours" else length).values())
        rows[name] = {"measured": counter.get_total_flops(), "estimated": estimate, "llm_tokens": length}
        model.zero_grad(set_to_none=True)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=60,
        help="chat-template tokens around the audio (SmolLM3's template with /no_think, assumed)",
    )
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation on the A40")
    parser.add_argument("--batch-size", type=int, default=32, help="per-device batch of the a40 recipe")
    parser.add_argument("--samples", type=int, default=64_000, help="Monte-Carlo clips for the mean")
    parser.add_argument("--no-check", action="store_true", help="skip the measured FLOP count")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def estimate(dims: Dims, args) -> tuple[dict, float]:
    """({design label: mean FLOPs per utterance by part}, mean clip seconds) over seeded random clip durations.

    Ours pads each batch to its longest clip, so its cost depends on how batches are formed: length-grouped (sorted
    pools of 50 batches, as the trainer does) or random.
    """
    pool = 50 * args.batch_size
    random_ = clip_durations(args.samples // pool * pool, args.seed).reshape(-1, args.batch_size)
    grouped = np.sort(random_.reshape(-1, pool), axis=1).reshape(-1, args.batch_size)
    designs = {
        f"ours, length-grouped batches of {args.batch_size}": ("ours", grouped),
        f"ours, random batches of {args.batch_size}": ("ours", random_),
        "baseline, 30 s -> 375 audio tokens": ("baseline-375", random_),
        BASELINE: ("baseline-750", random_),
    }
    flops = {}
    for label, (design, seconds) in designs.items():
        batch_max = np.repeat(seconds.max(axis=1, keepdims=True), args.batch_size, axis=1)
        flops[label] = design_flops(dims, seconds.ravel(), batch_max.ravel(), args.prompt_tokens, design)
    return flops, float(random_.mean())


def estimate_tables(flops: dict, mean_seconds: float, mfu: float) -> list[dict]:
    """TFLOP per utterance by part, and A40 hours per epoch of each corpus, one column per design."""
    labels = list(flops)
    totals = {label: sum(flops[label].values()) for label in labels}
    base = totals[BASELINE]
    part_rows = [[part] + [f"{flops[label][part] / 1e12:.2f}" for label in labels] for part in PARTS]
    part_rows.append(["**total TFLOP / utterance**"] + [f"**{totals[label] / 1e12:.2f}**" for label in labels])
    part_rows.append(["baseline-750 / this"] + [f"{base / totals[label]:.2f}x" for label in labels])
    sustained = A40_BF16_DENSE_FLOPS * mfu
    epoch_rows = []
    for corpus, hours in EPOCH_HOURS.items():
        utterances = hours * 3600 / mean_seconds
        epoch_rows.append(
            [f"{corpus} ({hours:,} h, ~{utterances / 1e6:.2f} M utterances)"]
            + [f"{utterances * totals[label] / sustained / 3600:,.0f}" for label in labels]
        )
    return [
        {
            "title": "Estimated TFLOP per training utterance, full reference build (32 encoder + 36 LLM layers)",
            "headers": ["part"] + labels,
            "rows": part_rows,
        },
        {
            "title": f"Estimated A40 hours per epoch at {mfu:.0%} MFU of {A40_BF16_DENSE_FLOPS / 1e12:.1f} TFLOP/s "
            "(bf16 dense)",
            "headers": ["corpus"] + labels,
            "rows": epoch_rows,
        },
    ]


def check_table(checked: dict) -> dict:
    return {
        "title": f"Measured check: torch FlopCounterMode on one real training step ({MEAN_SECONDS} s clip, 1 + 1 "
        "layers at reference widths, math attention) vs this file's formula",
        "headers": ["variant", "LLM tokens", "measured GFLOP", "estimated GFLOP", "estimate / measured"],
        "rows": [
            [
                name,
                row["llm_tokens"],
                f"{row['measured'] / 1e9:.1f}",
                f"{row['estimated'] / 1e9:.1f}",
                f"{row['estimated'] / row['measured']:.3f}",
            ]
            for name, row in checked.items()
        ],
    }


def notes(args, mean_seconds: float) -> list[str]:
    return [
        f"estimated: clip durations lognormal, mean {MEAN_SECONDS} s (sample mean {mean_seconds:.2f} s), clipped to "
        f"1-30 s; transcripts {WORDS_PER_SECOND} words/s x {TOKENS_PER_WORD} tokens/word + end-of-turn; "
        f"{args.prompt_tokens} prompt tokens (assumed)",
        "estimated: ours pads each batch to its longest clip (encoder frames and LLM tokens); length-grouped = sorted "
        "pools of batches as the trainer's group_by_length / DecodedStream; the baseline needs no grouping",
        "estimated: baseline-750 runs the same projector (375 tokens) and feeds each embedding twice, as "
        "train_throughput.py does; a 2x-pooling projector would add ~0.02 TFLOP",
        f"assumed: {args.mfu:.0%} MFU for every design on an A40 ({A40_BF16_DENSE_FLOPS / 1e12:.1f} TFLOP/s bf16 "
        "dense); data loading, evaluation and checkpointing not included",
    ]


def main(argv=None):
    args = parse_args(argv)
    dims = Dims.of(reference_config(encoder_layers=32, llm_layers=36))
    flops, mean_seconds = estimate(dims, args)
    tables = estimate_tables(flops, mean_seconds, args.mfu)
    checked = None if args.no_check else check()
    if checked:
        tables.append(check_table(checked))
    path = write_results(
        "flop_budget",
        {
            "title": "FLOP budget of one training epoch (analytic)",
            "machine": machine_info(torch.device("cpu")),
            "settings": vars(args),
            "dims": vars(dims),
            "flops_per_utterance": flops,
            "check": checked,
            "tables": tables,
            "notes": notes(args, mean_seconds),
        },
    )
    for table in tables:
        print(f"\n{table['title']}")
        for row in table["rows"]:
            print("  " + " | ".join(str(cell) for cell in row))
    print(f"\nresults: {path}")
    ours, base = sum(flops[next(iter(flops))].values()), sum(flops[BASELINE].values())
    medium = EPOCH_HOURS["LoquaciousSet medium"] * 3600 / mean_seconds / (A40_BF16_DENSE_FLOPS * args.mfu) / 3600
    print(
        f"estimated {base / ours:.2f}x fewer FLOPs than the 750-token baseline; LoquaciousSet medium epoch: "
        f"{medium * ours:,.0f} vs {medium * base:,.0f} A40 hours at {args.mfu:.0%} MFU"
    )


if __name__ == "__main__":
    sys.exit(main())
