"""Inference speed as RTFx (audio seconds per wall second), ours through the pipeline vs the padded baseline.

Ours is `pipeline(list_of_clips, batch_size=B)` at batch 1 and batch 8: clips at their real length, the list run
longest first so that a batch holds clips of similar length. The baseline pads every clip to 30 s and runs processor +
`model.generate` one clip at a time. Every clip decodes exactly `--new-tokens` tokens (`min_new_tokens =
max_new_tokens`), so a random model's early or late end-of-turn does not distort the timing. The variants take
turns on each batch-sized group of clips, so a slow spell on a shared machine slows all of them alike.

(a) the reference build's widths at reduced depth with random weights; (b) the `tiny` preset with its real base
weights when they can be loaded (skipped with a message otherwise).

    python -m benchmarks.inference_rtf                 # CPU, 2 + 2 layers, 32 clips
    python -m benchmarks.inference_rtf --device cuda
"""

import sys
from functools import partial

import torch

from benchmarks.common import (
    baseline_inputs,
    baseline_processor,
    benchmark_parser,
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
from pipeline_asr import ASRPipeline


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--clips", type=int, help="clips per variant (default 32 on cpu, 128 on cuda)")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched run's batch size")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="timed passes over the clips")
    parser.add_argument("--skip-tiny", action="store_true", help="skip (b), the tiny preset with real weights")
    args = finish_args(parser.parse_args(argv))
    args.clips = args.clips or (128 if args.device == "cuda" else 32)
    return args


def transcribe_ours(asr: ASRPipeline, clips, batch_size: int, new_tokens: int) -> None:
    """What a user runs: the pipeline on a list of clips."""
    asr(clips, batch_size=batch_size, generate_kwargs={"max_new_tokens": new_tokens, "min_new_tokens": new_tokens})


def transcribe_baseline(model, processor, clips, new_tokens: int, audio_repeat: int, device) -> None:
    """The padded design: each clip padded to 30 s, features and prompt, then greedy decoding, one clip at a time."""
    for clip in clips:
        inputs = {key: value.to(device) for key, value in processor(audio=[clip]).items()}
        inputs = baseline_inputs(model, inputs, audio_repeat)
        prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        generated = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        assert generated.shape[1] - prompt_length == new_tokens, generated.shape


def measure(build_name, model, processor, args, device) -> list[dict]:
    """Times ours at batch 1 and batch N and the baseline on the same clips, alternating in one process."""
    model.eval()
    durations = clip_durations(args.clips, args.seed)
    clips = synthetic_clips(durations, args.seed)
    asr = ASRPipeline(model=model, processor=processor, device=device)
    padded = baseline_processor(processor, model.config)
    repeat = args.baseline_audio_tokens // 375
    variants = [  # (name, batch size, run on a list of clips)
        ("ours (pipeline)", 1, lambda group: transcribe_ours(asr, group, 1, args.new_tokens)),
        (
            "ours (pipeline)",
            args.batch_size,
            lambda group: transcribe_ours(asr, group, args.batch_size, args.new_tokens),
        ),
        (
            f"baseline ({args.baseline_audio_tokens} audio tokens)",
            1,
            lambda group: transcribe_baseline(model, padded, group, args.new_tokens, repeat, device),
        ),
    ]
    seconds = time_in_turns([run for _, _, run in variants], clips, args.batch_size, args.rounds, device)
    audio = float(durations.sum()) * args.rounds
    rows = []
    for (name, batch_size, _), wall in zip(variants, seconds):
        rows.append(
            {
                "build": build_name,
                "variant": name,
                "batch_size": batch_size,
                "audio_seconds": audio,
                "wall_seconds": wall,
                "rtfx": audio / wall,
            }
        )
        print(f"{build_name}: {name} batch {batch_size}: RTFx {audio / wall:.2f} ({audio:.0f} s audio in {wall:.1f} s)")
    return rows


def time_in_turns(runs, clips, batch_size: int, rounds: int, device) -> list[float]:
    """Wall seconds of each run over all clips, after a warm-up on two. The clips go in the pipeline's order (longest
    first), in groups of one batch; the runs take turns group by group, so a slow spell on a shared machine slows all
    of them alike."""
    ordered = sorted(clips, key=len, reverse=True)
    groups = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
    seconds = [0.0] * len(runs)
    with torch.inference_mode():
        for run in runs:
            run(clips[:2])
        for _ in range(rounds):
            for group in groups:
                for index, run in enumerate(runs):
                    seconds[index] += timed(partial(run, group), device)[1]
    return seconds


def load_tiny(device, dtype):
    """The `tiny` preset with real weights, or None (with the reason printed) when they cannot be loaded."""
    import huggingface_hub

    from configuration_asr import mirror_root
    from tiny_audio.presets import MODEL_PRESETS, build

    ids = [MODEL_PRESETS["tiny"][key] for key in ("audio_model_id", "text_model_id")]
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
    report(rows, args, device, dtype)


def report(rows: list[dict], args, device, dtype) -> None:
    """Writes the results file (rows, the batch gain and ours vs the baseline at reference widths) and prints them."""
    ours_1, ours_batched, baseline = (row["rtfx"] for row in rows[:3])  # the reference-width build's variants
    batch_gain, vs_baseline = ours_batched / ours_1, ours_1 / baseline
    table_rows = [
        [r["build"], r["variant"], r["batch_size"], f"{r['rtfx']:.2f}", f"{r['wall_seconds']:.1f}"] for r in rows
    ]
    dtype_name = str(dtype).removeprefix("torch.")
    path = write_results(
        results_name("inference_rtf", device, args),
        {
            "title": f"Inference RTFx ({device.type}, {dtype_name})",
            "machine": machine_info(device),
            "settings": {**vars(args), "dtype": dtype_name},
            "results": rows,
            "batch_gain": batch_gain,
            "ours_vs_baseline_batch1": vs_baseline,
            "tables": [{"title": "", "headers": ["build", "variant", "batch", "RTFx", "wall s"], "rows": table_rows}],
            "notes": [
                f"measured: RTFx = audio seconds / wall seconds over {args.clips} clips x {args.rounds} round(s) "
                f"({rows[0]['audio_seconds']:.0f} s of audio), {args.new_tokens} new tokens per clip (forced), greedy",
                f"measured: batch {args.batch_size} / batch 1 = {batch_gain:.2f}x; ours batch 1 / baseline = "
                f"{vs_baseline:.2f}x (reference widths)",
                "ours: pipeline(clips, batch_size=B), which runs a list longest first; baseline: processor + generate, "
                "one 30 s-padded clip at a time; the variants take turns on each group of B clips (longest first)",
                *setting_notes(args),
            ],
        },
    )
    print(f"results: {path}")
    print(
        f"RTFx ours batch 1 {ours_1:.2f}, batch {args.batch_size} {ours_batched:.2f}, baseline {baseline:.2f}; "
        f"batch {args.batch_size} / batch 1 = {batch_gain:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
