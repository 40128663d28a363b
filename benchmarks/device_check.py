"""The recipe on a GPU, end to end at toy size: whether training and both ways of reading run there and give the
CPU's transcripts.

Trains the `tiny-random` preset as a reading model (`projector_output=ctc_tokens`: CTC warm-up, then LoRA) on
`--device` with bfloat16 bases and mixed precision, then transcribes tone clips through
`pipeline(..., trust_remote_code=True)` on that device and on the CPU, with the greedy reading and with a beam of 4
readings, at batch 1 and batch 4. Exits with an error when a batch size or the device changes a transcript.

    python -m benchmarks.device_check --device cuda
"""

import argparse
import sys
import tempfile

from transformers import pipeline

import train_trainer
from benchmarks.common import resolve_device
from tiny_audio.data import tone_clip

CLIP_WORDS = [["one", "red", "cat"], ["sun"], ["blue", "dog", "sun", "red", "one", "cat"], ["cat", "cat"]]


def train(output_dir: str, device: str) -> None:
    args = ["--preset", "tiny-random", "--output_dir", output_dir, "--projector_output", "ctc_tokens"]
    args += ["--ctc_warmup_steps", "60", "--ctc_batch_size", "8", "--readout_spelling_buckets", "64"]
    args += ["--lora_rank", "4", "--max_steps", "20", "--eval_split_name", ""]
    if device != "cpu":
        args += ["--use_cpu", "False", "--bf16", "True", "--base_dtype", "bfloat16"]
    train_trainer.main(args)


def transcripts(model_dir: str, device: str) -> dict[tuple[int, int], list[str]]:
    """Texts of the tone clips on `device`, keyed by (reading_beam_size, batch_size)."""
    asr = pipeline("automatic-speech-recognition", model=model_dir, trust_remote_code=True, device=device)
    clips = [tone_clip(words) for words in CLIP_WORDS]
    texts = {}
    for beam_size in (1, 4):
        asr.model.config.reading_beam_size = beam_size
        for batch_size in (1, 4):
            texts[beam_size, batch_size] = [result["text"] for result in asr(clips, batch_size=batch_size)]
    return texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    device = resolve_device(parser.parse_args(argv).device).type
    with tempfile.TemporaryDirectory() as model_dir:
        train(model_dir, device)
        runs = {where: transcripts(model_dir, where) for where in dict.fromkeys([device, "cpu"])}
    problems = []
    for where, texts in runs.items():
        for (beam_size, batch_size), said in texts.items():
            print(f"{where}, beam {beam_size}, batch {batch_size}: {said}")
            if said != texts[beam_size, 1]:
                problems.append(f"{where}, beam {beam_size}: batch {batch_size} changed the text")
            if said != runs["cpu"][beam_size, batch_size]:
                problems.append(f"beam {beam_size}, batch {batch_size}: {where} and cpu differ")
    print("\n".join(problems) or f"{device}: training and reading run, and give the CPU's texts")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
