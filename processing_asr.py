"""Processor of the Tiny Audio speech-LLM: audio loading and checks, Whisper features, chat prompts and labels."""

import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from transformers import AddedToken, BatchFeature, ProcessorMixin

try:
    from .configuration_asr import (
        DEFAULT_AUDIO_TOKEN,
        DEFAULT_SYSTEM_PROMPT,
        DEFAULT_USER_PROMPT,
        HOP_LENGTH,
        MAX_CHUNK_SECONDS,
        N_FFT,
        PROCESSOR_SETTINGS,
        SAMPLING_RATE,
        check_user_prompt,
        num_audio_tokens,
    )
except ImportError:
    from configuration_asr import (
        DEFAULT_AUDIO_TOKEN,
        DEFAULT_SYSTEM_PROMPT,
        DEFAULT_USER_PROMPT,
        HOP_LENGTH,
        MAX_CHUNK_SECONDS,
        N_FFT,
        PROCESSOR_SETTINGS,
        SAMPLING_RATE,
        check_user_prompt,
        num_audio_tokens,
    )

IGNORE_INDEX = -100


class InvalidAudioError(ValueError):
    """Audio that cannot be transcribed; `reason` (one of `REASONS`) tells the cases apart without parsing the message."""

    REASONS = (
        "missing",
        "undecodable",
        "unsupported",
        "empty",
        "non_finite",
        "out_of_range",
        "silent",
        "too_short",
        "too_long",
    )

    def __init__(self, message: str, reason: str):
        if reason not in self.REASONS:
            raise ValueError(f"unknown InvalidAudioError reason {reason!r}; expected one of {self.REASONS}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # pickles with its reason (errors cross process boundaries in data loaders)
        return type(self), (str(self), self.reason)


MAX_CHANNELS = 8  # a 2-D array with more on both sides is not one multi-channel clip (several clips stacked?)
# float samples are expected in [-1, 1]; far beyond it they are integer PCM stored as floats, which Whisper's log-mel
# features cannot read
MAX_FLOAT_PEAK = 100.0
# Whisper's features pad each edge of a clip with half a window of the clip's own samples, reflected
MIN_SAMPLES = N_FFT // 2 + 1
PCM_BITS = (16, 24, 32)  # the sample widths that signed PCM in a wider integer dtype is read as


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM -> float64 in [-1, 1], by the range of its dtype. Signed samples in a dtype wider than 16 bits
    are often narrower PCM (a list of Python ints from int16 audio becomes int64), so they take the range of the
    narrowest of `PCM_BITS` that holds their peak: scaled by their dtype's, they would be silent."""
    info = np.iinfo(samples.dtype)
    if samples.dtype.kind == "u":
        offset = (info.max + 1) // 2
        return (samples.astype(np.float64) - offset) / offset
    bits = info.bits
    if bits > 16:
        peak = max(-int(samples.min(initial=0)), int(samples.max(initial=0)))
        bits = next((width for width in PCM_BITS if peak <= 2 ** (width - 1)), bits)
    return samples.astype(np.float64) / 2 ** (bits - 1)


def to_mono_float32(samples: np.ndarray, name: str = "audio") -> np.ndarray:
    """Int PCM -> float in [-1, 1] (`pcm_to_float`); (frames, channels) or (channels, frames) -> mono by averaging
    channels."""
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":
        samples = pcm_to_float(samples)
    elif samples.dtype.kind != "f":
        raise InvalidAudioError(f"{name}: expected numeric samples, got dtype {samples.dtype}", "unsupported")
    if samples.ndim == 2:
        if min(samples.shape) > MAX_CHANNELS:
            raise InvalidAudioError(
                f"{name}: a 2-D array is one clip of (samples, channels) or (channels, samples) with at most "
                f"{MAX_CHANNELS} channels, got shape {samples.shape}; pass several clips as a list",
                "unsupported",
            )
        channel_axis = 0 if samples.shape[0] < samples.shape[1] else 1
        samples = samples.mean(axis=channel_axis)
    elif samples.ndim != 1:
        raise InvalidAudioError(
            f"{name}: expected 1-D (mono) or 2-D (multi-channel) samples, got shape {samples.shape}", "unsupported"
        )
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """High-quality resampling with soxr (no torchaudio or ffmpeg needed)."""
    if orig_rate == target_rate:
        return samples
    return soxr.resample(samples, orig_rate, target_rate).astype(np.float32, copy=False)


@contextmanager
def audio_file(source: str | Path | bytes):
    """Opens a file path or raw file bytes (wav, flac, ogg, mp3, ... through soundfile) as an `sf.SoundFile`; a
    missing file, or a decoding error while it is open, is an `InvalidAudioError` that names the source."""
    name = f"file {str(source)!r}" if not isinstance(source, bytes) else "audio bytes"
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise InvalidAudioError(
            f"{name}: {'a folder, not a file' if Path(source).is_dir() else 'no such file'}", "missing"
        )

    def undecodable(error: Exception) -> InvalidAudioError:
        reason = getattr(error, "error_string", error)  # libsndfile's own words, without its handle's repr
        return InvalidAudioError(f"{name}: could not decode audio ({reason})", "undecodable")

    try:
        opened = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise undecodable(error) from error
    with opened:
        try:
            yield opened
        except sf.LibsndfileError as error:  # a read that fails part-way; the caller's own errors pass through
            raise undecodable(error) from error


def read_audio_file(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decodes a whole file path or raw file bytes to (samples, rate)."""
    with audio_file(source) as opened:
        return opened.read(), opened.samplerate


def load_audio(source, sampling_rate: int | None = None, name: str = "audio") -> np.ndarray:
    """Any supported input -> float32 mono samples at 16 kHz.

    `source` is a file path, raw file bytes, a numpy array or torch tensor (at `sampling_rate`, default 16 kHz), or a
    dict `{"array" | "raw": samples, "sampling_rate": rate}` (or `{"path": ...}` / `{"bytes": ...}`).
    """
    if isinstance(source, dict):
        rate = source.get("sampling_rate", sampling_rate)
        for key in ("array", "raw", "bytes", "path"):
            if source.get(key) is not None:
                if key in ("array", "raw") and rate is None:
                    raise InvalidAudioError(
                        f"{name}: a dict with {key!r} samples needs their 'sampling_rate'", "unsupported"
                    )
                return load_audio(source[key], rate, name)
        raise InvalidAudioError(
            f"{name}: dict input needs an 'array', 'raw', 'bytes' or 'path' entry, got {list(source)}", "unsupported"
        )
    if isinstance(source, (str, Path, bytes)):
        samples, rate = read_audio_file(source)
    elif isinstance(source, (np.ndarray, torch.Tensor, list)):
        if isinstance(source, torch.Tensor):  # bfloat16 has no numpy dtype
            source = source.detach().cpu()
            source = source.float() if source.is_floating_point() else source
        samples = np.asarray(source)
        rate = SAMPLING_RATE if sampling_rate is None else sampling_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or not rate > 0:
            raise InvalidAudioError(f"{name}: sampling_rate must be a positive number, got {rate!r}", "unsupported")
    else:
        raise InvalidAudioError(
            f"{name}: unsupported input type {type(source).__name__}; pass a file path, bytes, numpy array, "
            "torch tensor or a dict with 'array' and 'sampling_rate'",
            "unsupported",
        )
    return resample(to_mono_float32(samples, name), int(rate))


def checked_blocks(blocks, name: str = "audio"):
    """Passes 16 kHz blocks of one recording through, raising `InvalidAudioError` for NaN, Inf or far out-of-range
    samples as soon as a block holds one (at its position in the whole recording), and for an empty, too short or
    silent recording at its end.

    Works on a stream, so a long file is checked without holding it whole.
    """
    total, audible = 0, False
    for block in blocks:
        bad = np.flatnonzero(~np.isfinite(block))
        if bad.size:
            position = (total + int(bad[0])) / SAMPLING_RATE
            raise InvalidAudioError(f"{name} contains NaN or Inf samples (first at {position:.2f} s)", "non_finite")
        peak = float(np.abs(block).max(initial=0.0))
        if peak > MAX_FLOAT_PEAK:
            raise InvalidAudioError(
                f"{name} has samples up to {peak:.0f}, expected float samples in [-1, 1] (integer PCM stored as "
                "floats? divide by 32768)",
                "out_of_range",
            )
        audible = audible or peak > 0
        total += block.size
        yield block
    if total == 0:
        raise InvalidAudioError(f"{name} is empty", "empty")
    if total < MIN_SAMPLES:
        raise InvalidAudioError(
            f"{name} is too short: {total} samples, at least {MIN_SAMPLES} "
            f"({MIN_SAMPLES / SAMPLING_RATE * 1000:.1f} ms) needed",
            "too_short",
        )
    if not audible:
        raise InvalidAudioError(f"{name} is silent (all samples are zero)", "silent")


def check_audio(samples: np.ndarray, name: str = "audio", max_seconds: float | None = None) -> None:
    """Raises `InvalidAudioError` for a clip that cannot be transcribed."""
    for _ in checked_blocks([samples], name):
        pass
    if max_seconds is not None and samples.size > max_seconds * SAMPLING_RATE:
        raise InvalidAudioError(
            f"{name} is {samples.size / SAMPLING_RATE:.1f} s long, the limit is {max_seconds:g} s", "too_long"
        )


class ASRProcessor(ProcessorMixin):
    r"""
    Whisper feature extractor + LLM tokenizer + chat prompt.

    Builds inference inputs (`input_ids` with one placeholder per audio token, left-padded `attention_mask`,
    zero-padded `input_features` and their own `input_features_mask`) and, given transcripts, training `labels`
    (prompt + transcript + end-of-turn, loss only on the transcript and the end-of-turn token).
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template=None,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        user_prompt: str = DEFAULT_USER_PROMPT,
        pad_audio_to_30s: bool = False,
    ):
        check_user_prompt(user_prompt, audio_token)
        if audio_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(audio_token, special=True, normalized=False)], special_tokens=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.audio_token = audio_token
        self.system_prompt = system_prompt
        self.user_prompt = user_prompt
        self.pad_audio_to_30s = pad_audio_to_30s
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.prompt = self._render_prompt()
        self.end_of_turn_token_id = self._end_of_turn_token_id()

    @classmethod
    def from_config(cls, config, feature_extractor, tokenizer, **kwargs) -> "ASRProcessor":
        """A processor whose prompt settings are those of an `ASRConfig`."""
        return cls(feature_extractor, tokenizer, **{key: getattr(config, key) for key in PROCESSOR_SETTINGS}, **kwargs)

    def _messages(self, assistant: str | None = None) -> list[dict]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.user_prompt})
        if assistant is not None:
            messages.append({"role": "assistant", "content": assistant})
        return messages

    def _apply_template(self, messages, **kwargs) -> str:
        template = self.chat_template or self.tokenizer.chat_template
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)

    def _render_prompt(self) -> str:
        prompt = self._apply_template(self._messages(), add_generation_prompt=True)
        if prompt.count(self.audio_token) != 1:
            raise ValueError(f"the chat template must keep exactly one {self.audio_token!r} in the prompt: {prompt!r}")
        return prompt

    def _end_of_turn_token_id(self) -> int:
        """The special token the chat template closes an assistant turn with (e.g. `<|im_end|>`), else EOS."""
        marker = "TRANSCRIPT_END_MARKER"
        after = self._apply_template(self._messages(assistant=marker)).split(marker, 1)[-1].lstrip()
        for token in sorted(self.tokenizer.all_special_tokens, key=len, reverse=True):
            if token and after.startswith(token):
                return self.tokenizer.convert_tokens_to_ids(token)
        return self.tokenizer.eos_token_id

    def num_audio_tokens(self, num_samples: int) -> int:
        return num_audio_tokens(num_samples, self.pad_audio_to_30s)

    def extract_features(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel features (mels, frames) of one 16 kHz clip at its own length (30 s when `pad_audio_to_30s`)."""
        padding = "max_length" if self.pad_audio_to_30s else "longest"
        features = self.feature_extractor(samples, sampling_rate=SAMPLING_RATE, padding=padding, return_tensors="np")
        features = features["input_features"][0]
        return features if self.pad_audio_to_30s else features[:, : samples.size // HOP_LENGTH]

    def __call__(self, audio=None, text=None, sampling_rate: int = SAMPLING_RATE, return_tensors: str = "pt", **kwargs):
        """
        Args:
            audio: one clip or a list of clips (anything `load_audio` reads: arrays or tensors at `sampling_rate`,
                file paths, bytes, dicts), each at most 30 s.
            text: optional transcripts, one per clip; adds `labels` for training.
        """
        clips = audio if isinstance(audio, (list, tuple)) else [audio]
        if audio is None or not clips:
            raise ValueError("ASRProcessor needs `audio`: one clip or a non-empty list of clips")
        if text is not None:
            text = [text] if isinstance(text, str) else list(text)
            if len(text) != len(clips):
                raise ValueError(f"got {len(clips)} audio clips but {len(text)} transcripts")
        features, rows = [], []
        for index, clip in enumerate(clips):
            name = f"audio[{index}]"
            samples = load_audio(clip, sampling_rate, name)
            check_audio(samples, name, max_seconds=MAX_CHUNK_SECONDS)
            features.append(self.extract_features(samples))
            rows.append(self.tokenize(samples.size, None if text is None else text[index], index))
        batch = self.pad_tokens(rows)
        frames = max(f.shape[-1] for f in features)
        batch["input_features"] = np.stack([np.pad(f, ((0, 0), (0, frames - f.shape[-1]))) for f in features])
        batch["input_features_mask"] = np.stack([np.arange(frames) < f.shape[-1] for f in features]).astype(np.int64)
        return BatchFeature(batch, tensor_type=return_tensors)

    def tokenize(self, num_samples: int, transcript: str | None = None, index: int = 0) -> dict:
        """Prompt ids with one placeholder per audio token; with a transcript, also the training target and labels.

        An empty (or all-whitespace) transcript means the clip holds no speech: its target is the end-of-turn
        token alone, which teaches the model to say nothing for noise, music and tones.
        """
        prompt = self.prompt.replace(self.audio_token, self.audio_token * self.num_audio_tokens(num_samples))
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if transcript is None:
            return {"input_ids": prompt_ids}
        if not isinstance(transcript, str):
            raise TypeError(f"transcript of sample {index} is a {type(transcript).__name__}, not a string")
        words = self.tokenizer(transcript.strip(), add_special_tokens=False)["input_ids"] if transcript.strip() else []
        target = [*words, self.end_of_turn_token_id]
        return {"input_ids": prompt_ids + target, "labels": [IGNORE_INDEX] * len(prompt_ids) + target}

    def pad_tokens(self, rows: list[dict]) -> dict:
        """Left-pads token rows (for generation); labels get -100 on the padding."""
        longest = max(len(row["input_ids"]) for row in rows)
        batch = {
            "input_ids": [
                [self.tokenizer.pad_token_id] * (longest - len(r["input_ids"])) + r["input_ids"] for r in rows
            ],
            "attention_mask": [[0] * (longest - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows],
        }
        if "labels" in rows[0]:
            batch["labels"] = [[IGNORE_INDEX] * (longest - len(r["labels"])) + r["labels"] for r in rows]
        return batch

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "input_features", "input_features_mask"]


ASRProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["ASRProcessor", "InvalidAudioError", "check_audio", "checked_blocks", "load_audio"]
