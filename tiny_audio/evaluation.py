"""Word error rate and real-time factor of a model on a dataset, through the same pipeline users call.

python -m tiny_audio.evaluation --model outputs/demo --dataset_name outputs/speech_corpus --split test --max_samples 200
"""

import argparse
import json
import time

import jiwer
import numpy as np
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from configuration_asr import SAMPLING_RATE, from_pretrained_or_mirror
from pipeline_asr import ASRPipeline
from processing_asr import load_audio
from tiny_audio.data import SkipCounter, open_dataset, scan

normalize = EnglishTextNormalizer({})


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English normalizer (references that normalise to nothing are left out)."""
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no non-empty references to score")
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


def evaluate_model(model, processor, examples, batch_size: int = 8) -> dict:
    """Transcribes `examples` (dicts with `audio` and `text`) in duration-sorted batches; WER, RTFx and samples."""
    asr = ASRPipeline(model=model, processor=processor)
    clips = [load_audio(example["audio"]) for example in examples]
    order = np.argsort([clip.size for clip in clips])
    start = time.perf_counter()
    outputs = asr([clips[i] for i in order], batch_size=batch_size)
    wall_seconds = time.perf_counter() - start
    hypotheses = [""] * len(clips)
    for position, output in zip(order, outputs):
        hypotheses[position] = output["text"]
    audio_seconds = sum(clip.size for clip in clips) / SAMPLING_RATE
    return {
        "wer": word_error_rate([example["text"] for example in examples], hypotheses),
        "rtfx": audio_seconds / wall_seconds,
        "samples": len(clips),
        "hypotheses": hypotheses,
    }


def evaluate_whisper(model_id: str, examples, batch_size: int = 16) -> dict:
    """The same scoring for a plain Whisper checkpoint with its own decoder (the baseline our encoder comes from)."""
    processor = from_pretrained_or_mirror(WhisperProcessor, model_id)
    model = from_pretrained_or_mirror(WhisperForConditionalGeneration, model_id).eval()
    hypotheses = []
    for start in range(0, len(examples), batch_size):
        clips = [load_audio(example["audio"]) for example in examples[start : start + batch_size]]
        features = processor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
        with torch.no_grad():
            hypotheses += processor.batch_decode(model.generate(features), skip_special_tokens=True)
    return {
        "wer": word_error_rate([e["text"] for e in examples], hypotheses),
        "samples": len(examples),
        "hypotheses": hypotheses,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--whisper", action="store_true", help="--model is a plain Whisper checkpoint (baseline)")
    parser.add_argument("--dataset_name", required=True, help="Hub dataset id or local audiofolder")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--audio_column_name", default="audio")
    parser.add_argument("--text_column_name", default="text")
    parser.add_argument("--max_samples", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--show", type=int, default=5, help="print this many reference/hypothesis pairs")
    args = parser.parse_args(argv)

    dataset = open_dataset(
        args.dataset_name, args.dataset_config_name, args.split, args.audio_column_name, args.text_column_name, False
    )
    examples = list(scan(dataset, SkipCounter(f"{args.dataset_name}:{args.split}", 1.0), 30.0, args.max_samples))
    if args.whisper:
        result = evaluate_whisper(args.model, examples, args.batch_size)
    else:
        asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True)
        result = evaluate_model(asr.model, asr.processor, examples, args.batch_size)
    for example, hypothesis in list(zip(examples, result["hypotheses"]))[: args.show]:
        print(f"REF: {example['text']}\nHYP: {hypothesis}\n")
    summary = {key: value for key, value in result.items() if key != "hypotheses"}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
