"""Stage 0's readout backward through every frame against through the frames that still teach
(`TeachingFramesSimilarity`, stage 0's default `gradient_tolerance`).

The saving depends on how many frames a readout already reads with confidence, so this benchmark needs a trained
`ctc_tokens` model (`make demo`'s outputs/demo by default) and real encoder outputs: it caches those of `--clips`
training clips of the corpus, then runs forward + backward of the same batches both ways, in alternating order
(no optimizer step, so the model stays as loaded). It reports seconds per batch, the share of frames the backward
kept, and how close the projector's gradient comes to the exact one.

    python -m benchmarks.ctc_backward [--model outputs/demo] [--corpus outputs/speech_corpus] [--steps 20]
"""

import argparse
import time

import numpy as np
import torch
from datasets import Dataset

from benchmarks.common import machine_info, write_results
from modeling_asr import ASRModel
from processing_asr import ASRProcessor
from tiny_audio.ctc_warmup import CTCWarmup, teaching_rows
from tiny_audio.data import (
    SkipCounter,
    build_encoder_cache,
    length_grouped_batches,
    open_dataset,
    scan,
    spoken_tokens,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo", help="a trained model folder with a CTC token readout")
    parser.add_argument("--corpus", default="outputs/speech_corpus", help="the speech_corpus folder it trained on")
    parser.add_argument("--clips", type=int, default=400, help="training clips whose encoder outputs are cached")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed batches (each run both ways)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--tolerance", type=float, default=None, help="default: stage 0's")
    parser.add_argument("--rest_share", type=float, default=None, help="default: stage 0's")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def projector_gradient(warmup: CTCWarmup, indices: list[int], tolerance: float) -> tuple[torch.Tensor, float, float]:
    """(the projector's flattened gradient, seconds of forward + backward, share of valid frames kept)."""
    captured = {}

    def similarity(frames, class_vectors_t):  # stage 0's own, keeping the gradient that reaches it
        similarities = CTCWarmup.similarity(warmup, frames, class_vectors_t)
        similarities.register_hook(lambda grad: captured.setdefault("grad", grad))
        return similarities

    warmup.similarity, warmup.gradient_tolerance = similarity, tolerance
    warmup.model.projector.zero_grad()
    start = time.perf_counter()
    projected, lengths = warmup._audio_embeddings(indices)
    warmup.loss(projected, lengths, [warmup.targets[i] for i in indices]).backward()
    seconds = time.perf_counter() - start
    grad = captured["grad"].reshape(-1, captured["grad"].shape[-1])
    kept = len(teaching_rows(grad, tolerance, warmup.gradient_rest_share)[0]) / int(lengths.sum()) if tolerance else 1.0
    parameters = [p.grad.flatten() for p in warmup.model.projector.parameters() if p.grad is not None]
    return torch.cat(parameters), seconds, kept


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = ASRModel.from_pretrained(args.model, dtype=torch.float32)
    processor = ASRProcessor.from_pretrained(args.model, trust_remote_code=True)  # its tokenizer, no prompt
    if model.projector.readout is None:
        raise ValueError(f"{args.model} has no CTC token readout (projector_output='ctc_tokens')")
    train = Dataset.from_list(
        list(scan(open_dataset(args.corpus, None, "train", "audio", "text", False), SkipCounter("train"), 30.0))
    )
    cached = train.shuffle(seed=args.seed).select(range(min(args.clips, len(train))))
    # the classes are those of the whole training split, as in the model's own stage 0
    warmup = CTCWarmup(model, processor, train, seed=args.seed)
    args.tolerance = warmup.gradient_tolerance if args.tolerance is None else args.tolerance
    if args.rest_share is not None:
        warmup.gradient_rest_share = args.rest_share
    args.rest_share = warmup.gradient_rest_share
    warmup.targets = [warmup.classes(spoken_tokens(processor.tokenizer, text)) for text in cached["text"]]
    warmup.encoder_cache = build_encoder_cache(model, processor, cached, args.batch_size)
    batches = length_grouped_batches(list(cached["length"]), args.batch_size, args.seed)
    seconds, kept, cosines = {0.0: [], args.tolerance: []}, [], []
    for index in range(args.warmup + args.steps):
        batch = next(batches)
        gradients = {}
        for tolerance in (0.0, args.tolerance) if index % 2 else (args.tolerance, 0.0):
            gradients[tolerance], wall, share = projector_gradient(warmup, batch, tolerance)
            if index >= args.warmup:
                seconds[tolerance].append(wall)
                kept += [share] if tolerance else []
        if index >= args.warmup:
            exact, sparse = gradients[0.0], gradients[args.tolerance]
            cosines.append(torch.nn.functional.cosine_similarity(exact, sparse, dim=0).item())
    mean = {tolerance: float(np.mean(times)) for tolerance, times in seconds.items()}
    rows = [
        ["backward through every frame (exact)", f"{mean[0.0]:.3f}", "100%", "1"],
        [
            f"backward through the frames that teach (tolerance {args.tolerance:g}) and {args.rest_share:.0%} of the "
            "others",
            f"{mean[args.tolerance]:.3f}",
            f"{np.mean(kept):.0%}",
            f"{np.mean(cosines):.4f} (min {np.min(cosines):.4f})",
        ],
    ]
    result = {
        "title": f"Stage 0 readout backward, trained model {args.model}, batch {args.batch_size} (cpu)",
        "machine": machine_info(torch.device("cpu")),
        "settings": vars(args),
        "tables": [
            {
                "title": "",
                "headers": ["backward", "seconds per batch (forward + backward)", "frames kept", "gradient cosine"],
                "rows": rows,
            }
        ],
        "notes": [
            f"measured: speedup {mean[0.0] / mean[args.tolerance]:.2f}x (exact / sparse seconds per batch)",
            f"measured: {args.steps} batches, each run both ways in alternating order, after {args.warmup} untimed "
            f"batches; {torch.get_num_threads()} threads; no optimizer step",
            f"classes: {len(warmup.vocab)} spoken tokens of the {len(train)} training transcripts of {args.corpus}; "
            f"encoder outputs of {len(cached)} of its clips",
            "gradient cosine: the projector's whole gradient with the sparse backward against the exact one",
        ],
    }
    write_results("ctc_backward_cpu", result)
    print("\n".join(result["notes"]))
    return result


if __name__ == "__main__":
    main()
