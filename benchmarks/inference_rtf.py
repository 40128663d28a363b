"""Inference speed as RTFx (audio seconds per wall second) of processor + `model.generate`, ours vs the baseline.

Ours runs clips at their real length, at batch 1 and batch 8 (clips in arrival order, not sorted by length); the
baseline pads every clip to 30 s and runs one clip at a time. Every clip decodes exactly `--new-tokens` tokens
(`min_new_tokens = max_new_tokens`), so a random model's early or late end-of-turn does not distort the timing.

(a) the reference build's widths at reduced depth with random weights; (b) the `tiny` preset with its real base
weights when they can be loaded (skipped with a message otherwise).

    python benchmarks/inference_rtf.py                 # CPU, 2 + 2 layers, 8 clips (~9 min on 2 shared cores)
    python benchmarks/inference_rtf.py --device cuda
"""

import sys
from functools import partial

import torch
from common import (
    baseline_inputs,
    baseline_processor,
    benchmark_parser,
    bucket_frames,
    build_reference,
    clip_durations,
    finish_args,
    machine_info,
    resolve_device,
    resolve_dtype,
    results_name,
    setting_notes,
    synthetic_clips,
    timed,
    write_results,
)


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--clips", type=int, help="clips per variant (default 8 on cpu, 64 on cuda)")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched run's batch size")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--skip-tiny", action="store_true", help="skip (b), the tiny preset with real weights")
    args = finish_args(parser.parse_args(argv))
    args.clips = args.clips or (64 if args.device == "cuda" else 8)
    return args


def transcribe(model, processor, clips, batch_size, new_tokens, audio_repeat, device, frame_bucket=0) -> None:
    """The pipeline's work for `clips`: features and prompt, then greedy decoding of `new_tokens` per clip."""
    for start in range(0, len(clips), batch_size):
        inputs = bucket_frames(processor(audio=clips[start : start + batch_size]), frame_bucket)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        inputs = baseline_inputs(model, inputs, audio_repeat)
        prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        generated = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        assert generated.shape[1] - prompt_length == new_tokens, generated.shape


def measure(build_name, model, processor, args, device) -> list[dict]:
    """Times ours at batch 1 and batch N and the baseline at batch 1 on the same clips, interleaved in one process."""
    model.eval()
    durations = clip_durations(args.clips, args.seed)
    clips = synthetic_clips(durations, args.seed)
    padded = baseline_processor(processor, model.config)
    # (name, batch size, processor, times each audio embedding is fed, frame bucket)
    variants = [
        ("ours", 1, processor, 1, args.frame_bucket),
        ("ours", args.batch_size, processor, 1, args.frame_bucket),
        (f"baseline ({args.baseline_audio_tokens} audio tokens)", 1, padded, args.baseline_audio_tokens // 375, 0),
    ]
    seconds, cpu_seconds = [0.0] * len(variants), [0.0] * len(variants)
    with torch.inference_mode():
        for _, batch_size, variant_processor, repeat, bucket in variants:  # warm-up on two clips
            transcribe(model, variant_processor, clips[:2], min(batch_size, 2), args.new_tokens, repeat, device, bucket)
        # Interleave by groups of `batch_size` clips so background load hits every variant alike.
        for start in range(0, len(clips), args.batch_size):
            group = clips[start : start + args.batch_size]
            for index, (_, size, variant_processor, repeat, bucket) in enumerate(variants):
                run = partial(
                    transcribe, model, variant_processor, group, size, args.new_tokens, repeat, device, bucket
                )
                _, wall, cpu = timed(run, device)
                seconds[index] += wall
                cpu_seconds[index] += cpu
    audio = float(durations.sum())
    rows = []
    for (name, batch_size, *_), wall, cpu in zip(variants, seconds, cpu_seconds):
        rows.append(
            {
                "build": build_name,
                "variant": name,
                "batch_size": batch_size,
                "audio_seconds": audio,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "rtfx": audio / wall,
            }
        )
        print(f"{build_name}: {name} batch {batch_size}: RTFx {audio / wall:.2f} ({audio:.0f} s audio in {wall:.1f} s)")
    return rows


def load_tiny(device, dtype):
    """The `tiny` preset with real weights, or None (with the reason printed) when they cannot be loaded."""
    import huggingface_hub

    from configuration_asr import mirror_root
    from presets import PRESETS, build

    ids = [PRESETS["tiny"].config[key] for key in ("audio_model_id", "text_model_id")]
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    if all((mirror_root() / model_id).is_dir() for model_id in ids):
        huggingface_hub.constants.HF_HUB_OFFLINE = True  # the local mirror is there: no minutes of Hub retries
    try:
        model, processor = build("tiny")
    except Exception as error:  # no Hub access and no offline mirror: skip, don't fail the benchmark
        print(
            f"skipping the tiny preset: cannot load its base models ({type(error).__name__}: {error})".splitlines()[0]
        )
        return None
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline
    model.audio_encoder.to(dtype)
    model.language_model.to(dtype)
    return model.to(device), processor


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    depth = f"{args.encoder_layers} encoder + {args.llm_layers} LLM layers"
    print(f"{depth} at reference widths, {device} {dtype}, {args.clips} clips, {args.new_tokens} new tokens each")
    model, processor, _ = build_reference(args.encoder_layers, args.llm_layers, device, dtype, args.seed)
    rows = measure(f"reference widths, {depth}, random weights", model, processor, args, device)
    del model
    if not args.skip_tiny and (tiny := load_tiny(device, dtype)) is not None:
        rows += measure("tiny preset (whisper-tiny.en + SmolLM2-135M), real weights", *tiny, args, device)

    def rtfx(build_index, variant_index):
        return rows[3 * build_index + variant_index]["rtfx"]

    batch_gain, vs_baseline = rtfx(0, 1) / rtfx(0, 0), rtfx(0, 0) / rtfx(0, 2)
    table_rows = [
        [r["build"], r["variant"], r["batch_size"], f"{r['rtfx']:.2f}", f"{r['wall_seconds']:.1f}"] for r in rows
    ]
    name = results_name("inference_rtf", device, args)
    path = write_results(
        name,
        {
            "title": f"Inference RTFx ({device.type}, {str(dtype).removeprefix('torch.')})",
            "machine": machine_info(device),
            "settings": {**vars(args), "dtype": str(dtype).removeprefix("torch.")},
            "results": rows,
            "batch_gain": batch_gain,
            "ours_vs_baseline_batch1": vs_baseline,
            "tables": [{"title": "", "headers": ["build", "variant", "batch", "RTFx", "wall s"], "rows": table_rows}],
            "notes": [
                f"measured: RTFx = audio seconds / wall seconds of processor + generate over {args.clips} clips "
                f"({rows[0]['audio_seconds']:.0f} s of audio), {args.new_tokens} new tokens per clip (forced), greedy",
                f"measured: batch {args.batch_size} / batch 1 = {batch_gain:.2f}x; ours batch 1 / baseline = "
                f"{vs_baseline:.2f}x (reference widths)",
                "clips in arrival order (not sorted by duration): a batch pads to its longest clip; the baseline runs "
                "one clip at a time",
                *setting_notes(args),
            ],
        },
    )
    print(f"results: {path}")
    print(
        f"RTFx ours batch 1 {rtfx(0, 0):.2f}, batch {args.batch_size} {rtfx(0, 1):.2f}, baseline {rtfx(0, 2):.2f}; "
        f"batch {args.batch_size} / batch 1 = {batch_gain:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
