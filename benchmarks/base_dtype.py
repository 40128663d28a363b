"""The frozen bases in float32 against bfloat16 on this CPU: what `--base_dtype auto` decides (`train_trainer.py`).

Three pieces of `make demo`'s work, each timed with the `tiny-base-tokens` build (Whisper base + SmolLM2) loaded in
either dtype: the frozen encoder over a batch of clips (the encoder cache), a stage 0 CTC step (projector, readout
over the corpus's spoken tokens, backward, AdamW; under bfloat16 autocast on bfloat16 bases, as in training), and an
LLM forward over a batch of prompts (the LLM stage and generation).

    python -m benchmarks.base_dtype [--corpus outputs/speech_corpus] [--repeats 3]

Timing: each piece runs once untimed, then `--repeats` times; the two dtypes alternate piece by piece.
"""

import argparse
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import machine_info, timed, write_results
from benchmarks.ctc_step import corpus_transcripts, random_encoder_cache
from configuration_asr import HOP_LENGTH, SAMPLING_RATE
from tiny_audio.ctc_warmup import CTCWarmup
from tiny_audio.presets import build
from train_trainer import base_dtype, native_bfloat16

DTYPES = (torch.float32, torch.bfloat16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="outputs/speech_corpus", help="a speech_corpus folder (its transcripts)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per encoder batch and per CTC step")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="length of each encoded clip")
    parser.add_argument("--prompt-tokens", type=int, default=100, help="length of each LLM prompt (batch of 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def workloads(dtype: torch.dtype, dataset, args) -> dict:
    """The three timed pieces for bases in `dtype`, as argument-free callables."""
    model, processor = build("tiny-base-tokens", dtype=dtype)
    frames = round(args.clip_seconds * SAMPLING_RATE / HOP_LENGTH)
    features = torch.randn(args.batch_size, model.config.audio_config.num_mel_bins, frames)
    feature_lengths = torch.full((args.batch_size,), frames)
    cache = random_encoder_cache(dataset["length"], model.config.audio_config.d_model, args.seed)
    warmup = CTCWarmup(model, processor, dataset, cache, args.batch_size, seed=args.seed)
    batch = next(warmup.batches)
    prompts = torch.randint(0, model.config.text_config.vocab_size, (8, args.prompt_tokens))
    no_grad = torch.no_grad()

    def encode():
        with no_grad:
            return model.audio_encoder.forward_frozen(features, feature_lengths)

    def llm_forward():
        with no_grad:
            return model.language_model(input_ids=prompts, logits_to_keep=1)

    return {
        f"encoder, {args.batch_size} clips of {args.clip_seconds:g} s": encode,
        f"stage 0 CTC step, batch {args.batch_size}": partial(warmup.step, batch),
        f"LLM forward, 8 prompts of {args.prompt_tokens} tokens": llm_forward,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cpu")
    dataset = corpus_transcripts(Path(args.corpus))
    pieces = {dtype: workloads(dtype, dataset, args) for dtype in DTYPES}
    seconds = {dtype: {name: [] for name in pieces[dtype]} for dtype in DTYPES}
    for name in pieces[torch.float32]:
        for repeat in range(args.repeats + 1):
            for dtype in DTYPES if repeat % 2 else DTYPES[::-1]:
                _, wall, _ = timed(pieces[dtype][name], device)
                if repeat:
                    seconds[dtype][name].append(wall)
    rows = []
    for name in pieces[torch.float32]:
        float32, bfloat16 = (sum(seconds[dtype][name]) / args.repeats for dtype in DTYPES)
        rows.append([name, f"{float32:.3f}", f"{bfloat16:.3f}", f"{bfloat16 / float32:.2f}x"])
    result = {
        "title": "Frozen bases in float32 or bfloat16, Whisper base + SmolLM2 (cpu)",
        "machine": machine_info(device),
        "settings": vars(args),
        "tables": [{"title": "", "headers": ["piece", "float32 s", "bfloat16 s", "bfloat16 / float32"], "rows": rows}],
        "notes": [
            f"measured: {args.repeats} timed runs of each piece in each dtype, alternating, after one untimed run",
            f"this CPU: capability {torch.backends.cpu.get_cpu_capability()}, native bfloat16 "
            f"{native_bfloat16(device)}; --base_dtype auto picks {base_dtype('auto', device)}",
        ],
    }
    name = "base_dtype_cpu_" + torch.backends.cpu.get_cpu_capability().lower()
    name += "_native_bf16" if native_bfloat16(device) else ""  # AVX512 CPUs differ most in this
    write_results(name, result)
    print("\n".join(" | ".join(row) for row in rows))
    print("\n".join(result["notes"]))
    return result


if __name__ == "__main__":
    main()
