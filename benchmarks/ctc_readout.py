"""How well the audio frames alone read: train stage 0 (the projector's CTC warm-up) and nothing else, then score the
greedy CTC reading on the synthetic validation split and on real recordings.

    python -m benchmarks.ctc_readout --model_preset tiny-base --real_speech ../shared/speech

The frozen bases take the dtype that `make demo` gives them on this CPU (`--base_dtype auto`). Stage 0 costs a
fraction of a full run (no LLM forward), so it is the cheap A/B for what happens before the LLM:
encoder, corpus size, trained encoder layers, learning rate, the readout's starting scale, its spelling vectors. Real
recordings longer than `--piece_seconds` are split at quiet points, as the pipeline splits them. Results go to
benchmarks/results/ctc_readout-<preset>[-trained-encoder-N][-steps-N][-lr-LR][-scale-S][-spelling-B][-<corpus>].json
and .md.
"""

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks.common import machine_info, write_results
from configuration_asr import SAMPLING_RATE
from pipeline_asr import inaudible, split_at_quiet_points
from processing_asr import load_audio
from tiny_audio.ctc_warmup import CTCWarmup
from tiny_audio.data import SkipCounter, build_encoder_cache, open_dataset, scan
from tiny_audio.evaluation import read_manifest, word_error_rate
from tiny_audio.presets import build
from train_trainer import base_dtype

DEFAULT_CORPUS = "outputs/speech_corpus"
STEPS, LEARNING_RATE = 2500, 1e-3


def read_clip(warmup: CTCWarmup, clip, piece_seconds: float) -> str:
    """Greedy CTC reading of a clip of any length, piece by piece; as in the pipeline, a silent or sub-frame piece
    (the zeros that end a long clip, say) reads as nothing."""
    max_samples = int(piece_seconds * SAMPLING_RATE)
    pieces = [piece for _, piece in split_at_quiet_points([clip], max_samples, max_samples * 2 // 3)]
    audible = [piece for piece in pieces if not inaudible(piece)]
    return " ".join(warmup.transcribe(audible)) if audible else ""


def readout_wer(warmup: CTCWarmup, examples: list[dict], piece_seconds: float) -> float:
    readings = [read_clip(warmup, load_audio(example["audio"]), piece_seconds) for example in tqdm(examples)]
    return word_error_rate([example["text"] for example in examples], readings)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_preset", default="tiny", help="tiny (Whisper tiny.en) or tiny-base (Whisper base)")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--train_samples", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE)
    parser.add_argument(
        "--readout_scale", type=float, default=None, help="start the readout's cosine scale here (default: the model's)"
    )
    parser.add_argument(
        "--readout_spelling_buckets",
        type=int,
        default=None,
        help="buckets of the readout's spelling vectors (default: the preset's; 0: the LLM's input embeddings alone)",
    )
    parser.add_argument("--trained_encoder_layers", type=int, default=0)
    parser.add_argument("--validation_samples", type=int, default=100)
    parser.add_argument("--real_speech", default=None, help="folder with manifest.jsonl, e.g. ../shared/speech")
    parser.add_argument("--piece_seconds", type=float, default=28.0)
    parser.add_argument("--eval_every", type=int, default=0, help="also read the real speech every N CTC steps")
    parser.add_argument("--save_to", default=None, help="save the model after stage 0 here (for --init_from)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    spelling = (
        {} if args.readout_spelling_buckets is None else {"readout_spelling_buckets": args.readout_spelling_buckets}
    )
    model, processor = build(
        args.model_preset,
        dtype=base_dtype("auto", torch.device("cpu")),
        trained_encoder_layers=args.trained_encoder_layers,
        **spelling,
    )
    train = scan(
        open_dataset(args.corpus, None, "train", "audio", "text", False), SkipCounter("train"), 30.0, args.train_samples
    )
    start = time.perf_counter()
    cache = build_encoder_cache(model, processor, train)
    cache_seconds = time.perf_counter() - start
    warmup = CTCWarmup(model, processor, train, cache, args.batch_size, args.learning_rate, 0.1)
    if args.readout_scale:
        warmup.head.log_scale.data.fill_(math.log(args.readout_scale))
    real = read_manifest(args.real_speech) if args.real_speech else []
    evaluate = (lambda: {"real_speech_wer": readout_wer(warmup, real, args.piece_seconds)}) if real else None
    start = time.perf_counter()
    history = warmup.train(args.steps, evaluate=evaluate, evaluate_every=args.eval_every)
    result = {"cache_seconds": cache_seconds, "train_seconds": time.perf_counter() - start}
    result["curve"] = [entry for entry in history if "real_speech_wer" in entry]

    model.projector.eval()
    if args.save_to:
        model.save_pretrained(args.save_to)
        processor.save_pretrained(args.save_to)
    validation = scan(
        open_dataset(args.corpus, None, "validation", "audio", "text", False),
        SkipCounter("validation"),
        30.0,
        args.validation_samples,
    )
    result["validation_wer"] = readout_wer(warmup, list(validation), args.piece_seconds)
    if real:
        result["real_speech_wer"] = readout_wer(warmup, real, args.piece_seconds)
    scores = [("synthetic validation", result["validation_wer"])]
    scores += [(f"real speech ({args.real_speech})", result["real_speech_wer"])] if real else []
    tables = [{"headers": ["clips", "WER"], "rows": [[name, f"{wer:.1%}"] for name, wer in scores]}]
    if result["curve"]:
        rows = [[e["ctc_step"], f"{e['ctc_loss']:.3f}", f"{e['real_speech_wer']:.1%}"] for e in result["curve"]]
        tables.append({"headers": ["CTC step", "CTC loss", "real speech WER"], "rows": rows})
    path = write_results(
        f"ctc_readout-{args.model_preset}"
        + (f"-trained-encoder-{args.trained_encoder_layers}" if args.trained_encoder_layers else "")
        + (f"-steps-{args.steps}" if args.steps != STEPS else "")
        + (f"-lr-{args.learning_rate:g}" if args.learning_rate != LEARNING_RATE else "")
        + (f"-scale-{args.readout_scale:g}" if args.readout_scale else "")
        + (f"-spelling-{args.readout_spelling_buckets}" if spelling else "")
        + (f"-{Path(args.corpus).name}" if args.corpus != DEFAULT_CORPUS else ""),
        {
            "title": f"Greedy CTC reading after stage 0 alone ({args.model_preset})",
            "machine": machine_info(torch.device("cpu")),
            "settings": vars(args),
            "result": result,
            "tables": tables,
            "notes": [
                f"{args.steps} CTC steps of batch {args.batch_size} on {args.train_samples} clips of {args.corpus}: "
                f"{result['train_seconds'] / 60:.1f} min (real-speech readings included), encoder cache "
                f"{result['cache_seconds'] / 60:.1f} min"
            ],
        },
    )
    print(f"{', '.join(f'{name}: {wer:.1%}' for name, wer in scores)}\nresults: {path}")
    return result


if __name__ == "__main__":
    main()
