"""Helpers shared by the benchmarks: reference-width builds, LoquaciousSet-like clips, timing, memory, results files.

"Ours" is the project's design (features at their real length, 12.5 audio tokens/s, LM head only on labelled
positions, batched generation). The "baseline" reproduces the common design it improves on, with the same weights:
every clip padded to 30 s, 750 audio positions into the LLM, full-vocabulary logits on every position, one clip at a
time. (This model's own 30 s padding gives 375 audio tokens: 3000 mel frames / 8; the benchmarks feed each of them
twice for the common design's 750 positions, or use the 375 with `--baseline-audio-tokens 375`.)
"""

import argparse
import copy
import ctypes
import datetime
import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import WhisperFeatureExtractor

from configuration_asr import MAX_FEATURE_FRAMES, SAMPLING_RATE, ASRConfig
from modeling_asr import ASRModel
from processing_asr import IGNORE_INDEX, ASRProcessor
from tiny_audio.presets import build_offline_tokenizer

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# LoquaciousSet-like clip durations: lognormal with mean MEAN_SECONDS, clipped to [MIN_SECONDS, MAX_SECONDS].
MEAN_SECONDS, SIGMA, MIN_SECONDS, MAX_SECONDS = 8.4, 0.6, 1.0, 30.0
# Transcripts: 2.7 words/s at 1.3 tokens/word (an English BPE average), i.e. 3.51 tokens/s, as random token ids.
WORDS_PER_SECOND, TOKENS_PER_WORD = 2.7, 1.3

REFERENCE_ENCODER_LAYERS = ASRConfig.sub_configs_defaults["audio_config"].init_kwargs["encoder_layers"]  # 32
REFERENCE_LLM_LAYERS = ASRConfig.sub_configs_defaults["text_config"].init_kwargs["num_hidden_layers"]  # 36


# ----------------------------------------------------------------------------------------------- data


def clip_durations(count: int, seed: int = 0) -> np.ndarray:
    """Seconds per clip from a LoquaciousSet-like distribution (lognormal, mean 8.4 s, sigma 0.6, clipped to 1-30 s)."""
    mu = np.log(MEAN_SECONDS) - SIGMA**2 / 2  # so that the unclipped mean is MEAN_SECONDS
    return np.clip(np.random.default_rng(seed).lognormal(mu, SIGMA, count), MIN_SECONDS, MAX_SECONDS)


def batch_durations(batch_size: int, batches: int, grouped: bool = True, seed: int = 0, mega_batches: int = 50):
    """Clip durations of `batches` training batches, as a list of arrays.

    grouped: like the trainer (group_by_length / DecodedStream): a pool of `mega_batches` batches is sorted by
    duration and cut into batches; the benchmark takes `batches` of them spread evenly over the pool, so that the few
    timed batches cover short and long clips alike. Otherwise: random batches (padding to the longest clip).
    """
    if not grouped:
        return list(clip_durations(batch_size * batches, seed).reshape(batches, batch_size))
    pool = np.sort(clip_durations(batch_size * max(mega_batches, batches), seed)).reshape(-1, batch_size)
    picks = ((np.arange(batches) + 0.5) * len(pool) / batches).astype(int)
    return list(np.random.default_rng(seed).permutation(pool[picks]))


def synthetic_clips(durations, seed: int = 0) -> list[np.ndarray]:
    """Speech-like stand-in audio (a few tones plus noise, 16 kHz); timing does not depend on the content."""
    rng = np.random.default_rng(seed)
    clips = []
    for seconds in durations:
        t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
        tones = sum(np.sin(2 * np.pi * rng.uniform(100, 3000) * t) for _ in range(3))
        clips.append((0.1 * tones + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def transcript_ids(durations, seed: int = 0, low: int = 1000, high: int = 128_000) -> list[list[int]]:
    """Random transcript token ids, round(seconds * 2.7 words/s * 1.3 tokens/word) per clip (at least one)."""
    rng = np.random.default_rng(seed)
    lengths = [max(1, round(s * WORDS_PER_SECOND * TOKENS_PER_WORD)) for s in durations]
    return [rng.integers(low, high, n).tolist() for n in lengths]


def with_targets(batch, targets: list[list[int]], end_id: int, pad_id: int) -> dict:
    """Appends `targets` + end-of-turn to each (left-padded) prompt row and adds `labels`, as the processor does."""
    rows, labels = [], []
    for ids, mask, target in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), targets):
        prompt = [token for token, keep in zip(ids, mask) if keep]
        rows.append(prompt + target + [end_id])
        labels.append([IGNORE_INDEX] * len(prompt) + target + [end_id])
    longest = max(map(len, rows))
    return {
        "input_ids": torch.tensor([[pad_id] * (longest - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows]),
        "labels": torch.tensor([[IGNORE_INDEX] * (longest - len(r)) + r for r in labels]),
        "input_features": batch["input_features"],
        "input_features_mask": batch["input_features_mask"],
    }


def bucket_frames(batch, multiple: int):
    """Zero-pads the mel frames of a batch up to a multiple of `multiple` (mask 0 there); 0 leaves it as it is.

    The model masks padded frames, so outputs do not change; fewer distinct input shapes do (what a processor option
    `pad_to_multiple_of` would do). Used to measure the cost of new shapes (cuDNN plans per convolution shape on CUDA).
    """
    frames = batch["input_features"].shape[-1]
    padding = min(MAX_FEATURE_FRAMES, -(-frames // multiple) * multiple) - frames if multiple else 0
    if padding <= 0:
        return batch
    return {
        **batch,
        "input_features": nn.functional.pad(batch["input_features"], (0, padding)),
        "input_features_mask": nn.functional.pad(batch["input_features_mask"], (0, padding)),
    }


def training_batch(processor: ASRProcessor, clips, targets, device, frame_bucket: int = 0) -> dict:
    """Model inputs with labels for a list of clips and their transcript ids, on `device`."""
    batch = with_targets(
        processor(audio=list(clips)), targets, processor.end_of_turn_token_id, processor.tokenizer.pad_token_id
    )
    return {key: value.to(device) for key, value in bucket_frames(batch, frame_bucket).items()}


# ----------------------------------------------------------------------------------------------- models


def reference_config(encoder_layers: int = 2, llm_layers: int = 2) -> ASRConfig:
    """The reference build's widths (whisper-large-v3-turbo encoder, SmolLM3-3B) at a chosen depth, random weights."""
    audio = dict(ASRConfig.sub_configs_defaults["audio_config"].init_kwargs, encoder_layers=encoder_layers)
    text = dict(ASRConfig.sub_configs_defaults["text_config"].init_kwargs, num_hidden_layers=llm_layers)
    return ASRConfig(
        audio_config={"model_type": "whisper", **audio},
        text_config={"model_type": "smollm3", **text},
        audio_model_id=None,
        text_model_id=None,
    )


def baseline_processor(processor: ASRProcessor, config: ASRConfig) -> ASRProcessor:
    """The same processor, but padding every clip to 30 s (3000 mel frames -> 375 audio tokens with this model)."""
    padded = copy.deepcopy(config)
    padded.pad_audio_to_30s = True
    return ASRProcessor.from_config(padded, processor.feature_extractor, processor.tokenizer)


def build_reference(encoder_layers: int, llm_layers: int, device, dtype=torch.float32, seed: int = 0):
    """(model, our processor, baseline processor) at the reference widths with random weights.

    The frozen encoder and LLM are cast to `dtype`; the trained projector stays float32 (mixed precision via autocast).
    The tokenizer is a small offline BPE (prompt ~20 tokens); transcripts are random ids over the 128k vocabulary.
    """
    config = reference_config(encoder_layers, llm_layers)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    processor = ASRProcessor.from_config(config, feature_extractor, build_offline_tokenizer(512))
    config.audio_token_id = processor.audio_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = ASRModel(config)
    model.audio_encoder.to(dtype)
    model.language_model.to(dtype)
    model.generation_config.eos_token_id = processor.end_of_turn_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model, processor, baseline_processor(processor, config)


def baseline_inputs(model: ASRModel, batch: dict, audio_repeat: int = 1) -> dict:
    """Baseline model inputs from a 30 s-padded batch (375 audio tokens per clip with this projector).

    `audio_repeat=2` feeds each projected audio embedding twice, so the LLM sees 750 audio positions per clip: the
    sequence length, and so the LLM and LM-head cost, of the common design (1,500 encoder frames pooled 2x -> 750
    tokens), with the same weights. Returns `inputs_embeds` (or `input_ids` and features when `audio_repeat=1`).
    """
    if audio_repeat == 1:
        return dict(batch)
    ids = batch["input_ids"]
    embeds = model.embed_prompt(ids, batch["input_features"], batch["input_features_mask"])
    repeats = torch.where(ids == model.config.audio_token_id, audio_repeat, 1)

    def stretch(rows):  # every row holds the same number of audio tokens, so the stretched rows stay aligned
        return torch.stack([row.repeat_interleave(count, dim=0) for row, count in zip(rows, repeats)])

    inputs = {"inputs_embeds": stretch(embeds), "attention_mask": stretch(batch["attention_mask"])}
    if "labels" in batch:
        inputs["labels"] = stretch(batch["labels"])
    return inputs


def full_logits_loss(model: ASRModel, batch: dict, audio_repeat: int = 1) -> torch.Tensor:
    """Baseline loss: the LM head on every position (full-vocabulary logits), then cross-entropy on the labels.

    This is what a generic `*ForCausalLM(labels=...)` does; the model's own `forward(labels=...)` computes the same
    loss with the LM head on the labelled positions only. No KV cache is built (`use_cache=False`), as in training.
    """
    inputs = baseline_inputs(model, batch, audio_repeat)
    labels = inputs.pop("labels")[:, 1:]
    logits = model(**inputs, use_cache=False).logits.float()
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast when the frozen parts are in reduced precision, else nothing."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


# ----------------------------------------------------------------------------------------------- timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device):
    """(result, wall seconds, process CPU seconds) of `function()`, with the device synchronised on both sides.

    CPU seconds (all threads of this process) are less disturbed than wall seconds by other work on a shared machine.
    """
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    """Resident memory of this process now."""
    return _proc_status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since start or since the last `reset_peak_rss()`."""
    return _proc_status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Returns freed heap to the OS (glibc malloc_trim) and resets the peak-RSS mark (Linux /proc/self/clear_refs)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory over a `with` block, weights and everything else alive included.

    CUDA: `torch.cuda.max_memory_allocated` (peak reset on entry). CPU: the peak resident set size (VmHWM) after
    returning freed heap pages to the OS and resetting the mark on entry; torch's CPU allocator does not cache, so
    RSS follows live tensors. `peak` is None where the mark cannot be reset (no /proc/self/clear_refs).
    """

    def __init__(self, device: torch.device):
        self.device, self.resting, self.peak = device, 0, None

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resting, self._exact = torch.cuda.memory_allocated(self.device), True
        else:
            self._exact = reset_peak_rss()
            self.resting = rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = peak_rss_bytes() if self._exact else None


# ----------------------------------------------------------------------------------------------- results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...: what kernels torch runs
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, result: dict) -> Path:
    """Writes `results/<name>.json` and `results/<name>.md` (its tables); returns the JSON path.

    `result` holds "title", "machine", "settings", "tables" ([{"title", "headers", "rows"}]) and "notes".
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(render_result(result))
    return path


def settings_label(settings: dict) -> str:
    """The non-default settings of a run, for titles: '' when there are none."""
    labels = []
    if settings.get("baseline_audio_tokens") == 375:
        labels.append("baseline 375 audio tokens")
    default_dtype = "bfloat16" if settings.get("device") == "cuda" else "float32"
    if settings.get("dtype", default_dtype) != default_dtype:
        labels.append(f"frozen parts in {settings['dtype']}")
    if settings.get("frame_bucket"):
        labels.append(f"ours' frames padded to a multiple of {settings['frame_bucket']}")
    if settings.get("prewarm_shapes"):
        labels.append("shapes pre-warmed")
    return f" [{'; '.join(labels)}]" if labels else ""


def render_result(result: dict) -> str:
    """Markdown section of one results file: title, machine, tables, notes."""
    machine = result.get("machine", {})
    where = f"{machine.get('cpu', '?')}, {machine.get('cpu_cores', '?')} cores"
    where += f" ({machine['cpu_capability']} kernels)" if "cpu_capability" in machine else ""
    if machine.get("gpu"):
        where = f"{machine['gpu']} ({machine.get('gpu_memory_gib', '?')} GiB); host CPU {where}"
    parts = [
        f"### {result['title']}{settings_label(result.get('settings', {}))}",
        "",
        f"Run {machine.get('date', '?')} on {where}; "
        f"torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}.",
        "",
    ]
    for table in result.get("tables", []):
        if table.get("title"):
            parts += [f"**{table['title']}**", ""]
        parts += [markdown_table(table["headers"], table["rows"]), ""]
    parts += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(parts).rstrip() + "\n"


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The command-line arguments every benchmark shares (model build, baseline, device settings)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="frozen parts (default: bf16 on cuda)"
    )
    parser.add_argument("--encoder-layers", type=int, default=2)
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--full-depth", action="store_true", help="the reference depth: 32 encoder, 36 LLM layers")
    parser.add_argument(
        "--baseline-audio-tokens",
        type=int,
        choices=[375, 750],
        default=750,
        help="750: the common design's LLM input (default); 375: this model's own pad_audio_to_30s",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def finish_args(args):
    """Applies --full-depth; returns args."""
    if args.full_depth:
        args.encoder_layers, args.llm_layers = REFERENCE_ENCODER_LAYERS, REFERENCE_LLM_LAYERS
    return args


def setting_notes(args) -> list[str]:
    """Notes on the clips, the baseline and the non-default settings, shared by the results files."""
    baseline = (
        "each of the 375 projected audio embeddings fed twice (750 LLM positions, the common 2x-pooled design's length)"
        if args.baseline_audio_tokens == 750
        else "375 audio tokens (this model's own pad_audio_to_30s)"
    )
    notes = [
        f"data: clip durations lognormal (mean {MEAN_SECONDS} s, sigma {SIGMA}, clipped to {MIN_SECONDS:g}-"
        f"{MAX_SECONDS:g} s, seeded), synthetic audio; transcripts {WORDS_PER_SECOND} words/s x {TOKENS_PER_WORD} "
        "tokens/word as random token ids; prompt from a small offline chat tokenizer (~20 tokens)",
        f"baseline: the same model and weights; processor with pad_audio_to_30s, {baseline}",
    ]
    if getattr(args, "frame_bucket", 0):
        notes.append(f"setting: ours' mel frames padded to a multiple of {args.frame_bucket} (fewer distinct shapes)")
    if getattr(args, "prewarm_shapes", False):
        notes.append("setting: every timed batch ran once, untimed, first (per-shape setup costs excluded)")
    return notes


def results_name(benchmark: str, device: torch.device, args) -> str:
    """`<benchmark>_<device>` plus a suffix per non-default setting that changes the comparison."""
    name = f"{benchmark}_{device.type}" + ("_full" if args.full_depth else "")
    name += f"_{args.dtype}" if args.dtype else ""
    name += "_b375" if args.baseline_audio_tokens == 375 else ""
    name += f"_bucket{args.frame_bucket}" if getattr(args, "frame_bucket", 0) else ""
    name += "_prewarm" if getattr(args, "prewarm_shapes", False) else ""
    return name


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """--dtype, defaulting to bfloat16 on CUDA and float32 on CPU."""
    return getattr(torch, name) if name else (torch.bfloat16 if device.type == "cuda" else torch.float32)


def gib(num_bytes: float) -> float:
    return num_bytes / 2**30
