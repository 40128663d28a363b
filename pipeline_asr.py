"""`automatic-speech-recognition` pipeline of the Tiny Audio speech-LLM: any audio in, text (and timestamps) out."""

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.pipelines.base import ChunkPipeline

try:
    from .configuration_asr import (
        HOP_LENGTH,
        LOOP_MAX_PERIOD,
        LOOP_MIN_REPEATS,
        LOOP_MIN_TOKENS,
        MAX_CHUNK_SECONDS,
        SAMPLING_RATE,
        check_chunk_length,
    )
    from .processing_asr import InvalidAudioError, audio_file, checked_blocks, load_audio
except ImportError:
    from configuration_asr import (
        HOP_LENGTH,
        LOOP_MAX_PERIOD,
        LOOP_MIN_REPEATS,
        LOOP_MIN_TOKENS,
        MAX_CHUNK_SECONDS,
        SAMPLING_RATE,
        check_chunk_length,
    )
    from processing_asr import InvalidAudioError, audio_file, checked_blocks, load_audio

FILE_BLOCK_SECONDS = 10
QUIET_FRAME = 400  # 25 ms frames when looking for a quiet point to split at


def file_blocks(path: str | Path):
    """Streams a file as 16 kHz mono float32 blocks, so hour-long files never sit in memory whole."""
    with audio_file(path) as opened:
        resampler = soxr.ResampleStream(opened.samplerate, SAMPLING_RATE, 1, dtype="float32")
        # read(), not blocks(): an mp3's header can promise more frames than it decodes, and blocks() then hands
        # back the rest of its buffer unwritten (garbage, sometimes NaN)
        block_frames = opened.samplerate * FILE_BLOCK_SECONDS
        while len(block := opened.read(block_frames, dtype="float32", always_2d=True)):
            yield resampler.resample_chunk(block.mean(axis=1))
        yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def audio_blocks(inputs, sampling_rate: int | None):
    """Any supported pipeline input -> iterator of 16 kHz mono float32 blocks."""
    if isinstance(inputs, (str, Path)):
        yield from file_blocks(inputs)
    else:
        yield load_audio(inputs, sampling_rate)


def quietest_point(samples: np.ndarray, start: int, stop: int) -> int:
    """Index of the centre of the lowest-energy 25 ms frame in samples[start:stop]."""
    window = samples[start:stop]
    energy = np.square(window[: window.size // QUIET_FRAME * QUIET_FRAME]).reshape(-1, QUIET_FRAME).sum(axis=1)
    return start + int(np.argmin(energy)) * QUIET_FRAME + QUIET_FRAME // 2


def split_at_quiet_points(blocks, max_samples: int, min_samples: int):
    """Yields (offset, chunk) pieces of at most `max_samples`, cut at the quietest point past `min_samples`."""
    buffer, offset = np.zeros(0, dtype=np.float32), 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while buffer.size > max_samples:
            cut = quietest_point(buffer, min_samples, max_samples)
            yield offset, buffer[:cut]
            buffer, offset = buffer[cut:], offset + cut
    if buffer.size:
        yield offset, buffer


def inaudible(chunk: np.ndarray) -> bool:
    """Whether a piece holds nothing to transcribe: all zeros, or shorter than one feature frame."""
    return not chunk.any() or chunk.size < HOP_LENGTH


def approximate_seconds(inputs, sampling_rate: int | None = None) -> float:
    """Duration of a pipeline input without decoding it, to order a list by length; 0 when it cannot be told cheaply."""
    if isinstance(inputs, dict):
        source = next((inputs[key] for key in ("array", "raw", "path") if inputs.get(key) is not None), None)
        return approximate_seconds(source, inputs.get("sampling_rate", sampling_rate))
    if isinstance(inputs, (str, Path)):
        try:
            return sf.info(str(inputs)).duration
        except (sf.LibsndfileError, RuntimeError, TypeError):
            return 0.0  # preprocess raises the clear error for this input
    shape = getattr(inputs, "shape", None)  # numpy array or torch tensor, possibly (channels, samples)
    return max(shape, default=0) / (sampling_rate or SAMPLING_RATE) if shape is not None else 0.0


class TranscriptStreamer(TextIteratorStreamer):
    """The text of one pipeline call as it is written, over all its pieces: the pipeline runs one `generate` per piece
    of long audio, and a plain `TextIteratorStreamer` stops iterating at the end of the first. This one separates
    pieces with a space, and the pipeline closes it when the call ends (`ASRPipeline.transcript_streamer`)."""

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.text_queue.put(text + " " if stream_end else text, timeout=self.timeout)

    def close(self):
        self.text_queue.put(self.stop_signal, timeout=self.timeout)


class LoopGuard(StoppingCriteria):
    """Ends a row as soon as its new tokens end in a loop, the same n-gram repeated back to back, and `trim` keeps one
    copy of it. A confused model otherwise repeats a phrase until the duration cap ("the best of the best of ...").

    An n-gram of `period` tokens (1 to `max_period`) is a loop once it repeats `repeats(period)` times: at least
    `min_repeats`, and enough copies to span `min_tokens` tokens, so short legitimate repeats ("no, no, no, no, no")
    survive. Given the `tokenizer`, an n-gram without a letter is never a loop: numbers repeat their digits and
    separators ("1,000,000,000"). Each row is judged on its own tokens only, so batching changes nothing.
    """

    def __init__(
        self,
        prompt_length: int,
        max_period: int = LOOP_MAX_PERIOD,
        min_repeats: int = LOOP_MIN_REPEATS,
        min_tokens: int = LOOP_MIN_TOKENS,
        tokenizer=None,
    ):
        if max_period < 1 or min_repeats < 2:
            raise ValueError(f"loop guard needs max_period >= 1 and min_repeats >= 2, got {max_period}, {min_repeats}")
        self.prompt_length = prompt_length
        self.max_period, self.min_repeats, self.min_tokens = max_period, min_repeats, min_tokens
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, prompt_length: int, config, tokenizer=None) -> "LoopGuard":
        """The guard with an `ASRConfig`'s `loop_max_period`, `loop_min_repeats` and `loop_min_tokens`."""
        return cls(prompt_length, config.loop_max_period, config.loop_min_repeats, config.loop_min_tokens, tokenizer)

    def repeats(self, period: int) -> int:
        """Copies of a `period`-token n-gram that make a loop."""
        return max(self.min_repeats, -(-self.min_tokens // period))

    def same_word(self, token: int, other: int) -> bool:
        """Whether two tokens are one, or (given the tokenizer) say the same apart from a space before it."""
        return token == other or (
            self.tokenizer is not None
            and self.tokenizer.decode([token]).strip() == self.tokenizer.decode([other]).strip()
        )

    def can_loop(self, ngram: list[int]) -> bool:
        """Whether repeating `ngram` can be a loop: it holds a letter (any n-gram, without a tokenizer)."""
        return self.tokenizer is None or any(character.isalpha() for character in self.tokenizer.decode(ngram))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new_tokens = input_ids[:, self.prompt_length :]
        periods = [p for p in range(1, self.max_period + 1) if new_tokens.shape[1] >= p * self.repeats(p)]
        looping = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        if periods:
            # (rows, periods), read back once per step; the text of an n-gram is decoded only where it repeats
            repeated = torch.stack([self.ends_in_copies(new_tokens, period) for period in periods], dim=1)
            for row, index in repeated.nonzero().tolist():
                looping[row] |= self.can_loop(new_tokens[row, -periods[index] :].tolist())
        return looping.to(input_ids.device)

    def ends_in_copies(self, tokens: torch.Tensor, period: int) -> torch.Tensor:
        """Whether each row of `tokens` ends in `repeats(period)` copies of its last `period` tokens."""
        tail = tokens[:, -period * self.repeats(period) :]
        return (tail[:, period:] == tail[:, :-period]).all(dim=1)

    def trim(self, tokens: list[int]) -> list[int]:
        """`tokens` with a loop at their end (and any partial copy after it) cut back to its first copy. The first
        copy may begin with its first word's token without the space before it ("It" where the copies say " It")."""
        cut = len(tokens)
        for period in range(1, self.max_period + 1):
            run = 0  # trailing tokens equal to the token `period` places before them
            while run < len(tokens) - period and self.same_word(tokens[-1 - run], tokens[-1 - run - period]):
                run += 1
            first_copy = tokens[len(tokens) - run - period : len(tokens) - run]
            if run + period >= period * self.repeats(period) and self.can_loop(first_copy):
                cut = min(cut, len(tokens) - run)
        return tokens[:cut]


class ASRPipeline(ChunkPipeline):
    """Transcribes audio of any length with an `ASRModel`.

    Inputs: a file path (wav, flac, ogg, mp3, ...), raw file bytes, a 16 kHz numpy array or torch tensor, or a dict
    `{"array" | "raw": samples, "sampling_rate": rate}`; any sample rate, mono or stereo, float or int PCM. Audio longer
    than `chunk_length_s` (the model config's, at most 30 s) is split at quiet points and transcribed whole; `return_timestamps=True` adds the
    start and end of each piece. Clips of a batch (`batch_size`) are decoded together; a list of inputs is run
    longest first, so each batch holds clips of similar length (little padding), and results keep the input order.
    A `LoopGuard` stops and trims repeated phrases; `loop_guard=False` turns it off. A model whose LLM reads a
    `TokenReadout` keeps to the words of that reading (`ReadingConstraint`); `follow_reading=False` lets it write freely.
    """

    _load_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_image_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The processor builds features clip by clip; the generic batch collate must not try to pad them.
        self.feature_extractor = None

    def __call__(self, inputs=None, *args, **kwargs):
        streamer = kwargs.get("streamer")
        try:
            if isinstance(inputs, list) and not inputs:
                return []
            if not isinstance(inputs, list) or len(inputs) < 2:
                return super().__call__(inputs, *args, **kwargs)
            rate = kwargs.get("sampling_rate")
            order = sorted(range(len(inputs)), key=lambda index: -approximate_seconds(inputs[index], rate))
            outputs = super().__call__([inputs[index] for index in order], *args, **kwargs)
            results = [None] * len(inputs)
            for index, output in zip(order, outputs):
                results[index] = output
            return results
        finally:
            if isinstance(streamer, TranscriptStreamer):
                streamer.close()

    def transcript_streamer(self, timeout: float | None = None) -> TranscriptStreamer:
        """A streamer to pass as `streamer=` and iterate from another thread: the transcript's text as it is written,
        all pieces of long audio included; it ends when the call does."""
        return TranscriptStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)

    def save_pretrained(self, save_directory, **kwargs):
        """Saves the model, its processor (transformers' pipeline saves a tokenizer only) and this file, so that
        `pipeline()` loads the folder again."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)
        shutil.copy(__file__, Path(save_directory) / Path(__file__).name)

    def _sanitize_parameters(
        self,
        return_timestamps=None,
        chunk_length_s=None,
        sampling_rate=None,
        max_new_tokens=None,
        streamer=None,
        loop_guard=None,
        follow_reading=None,
        **kwargs,
    ):
        if chunk_length_s is not None:
            check_chunk_length(chunk_length_s)
        if return_timestamps not in (None, True, False):
            raise ValueError(
                f"return_timestamps={return_timestamps!r} is not supported: True gives each piece's start and end"
            )
        preprocess = {"chunk_length_s": chunk_length_s, "sampling_rate": sampling_rate}
        preprocess = {key: value for key, value in preprocess.items() if value is not None}
        forward = dict(kwargs.pop("generate_kwargs", {}), **kwargs)
        if forward.get("num_return_sequences", 1) != 1:
            raise ValueError("the pipeline gives one transcript per clip: num_return_sequences must be 1")
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        if streamer is not None:
            forward["streamer"] = streamer
        if loop_guard is not None:
            forward["loop_guard"] = loop_guard
        if follow_reading is not None:
            forward["follow_reading"] = follow_reading
        postprocess = {"return_timestamps": return_timestamps} if return_timestamps is not None else {}
        return preprocess, forward, postprocess

    def preprocess(self, inputs, chunk_length_s: float | None = None, sampling_rate: int | None = None):
        if inputs is None:
            raise InvalidAudioError("audio input is None; pass a file path, bytes, an array or a dict", "unsupported")
        if isinstance(inputs, (str, bytes)) and len(inputs) == 0:
            raise InvalidAudioError("audio input is empty", "empty")
        chunk_length_s = chunk_length_s or getattr(self.model.config, "chunk_length_s", MAX_CHUNK_SECONDS)
        max_samples = int(chunk_length_s * SAMPLING_RATE)
        name = f"file {str(inputs)!r}" if isinstance(inputs, (str, Path)) else "audio"
        blocks = checked_blocks(audio_blocks(inputs, sampling_rate), name)  # the processor's checks, on the stream
        previous = None
        for offset, chunk in split_at_quiet_points(blocks, max_samples, max_samples * 2 // 3):
            if previous is not None:
                yield {**previous, "is_last": False}
            previous = self._chunk_item(offset, chunk)
        yield {**previous, "is_last": True}

    @staticmethod
    def _chunk_item(offset: int, chunk: np.ndarray) -> dict:
        return {
            "audio": chunk,
            "silent": inaudible(chunk),
            "start": offset / SAMPLING_RATE,
            "end": (offset + chunk.size) / SAMPLING_RATE,
        }

    def _forward(self, model_inputs, loop_guard: bool = True, follow_reading: bool = True, **generate_kwargs):
        batched = isinstance(model_inputs["start"], list)
        items = model_inputs if batched else {key: [value] for key, value in model_inputs.items()}
        texts = [""] * len(items["audio"])
        audible = [index for index, silent in enumerate(items["silent"]) if not silent]
        if audible:
            inputs = self.processor(audio=[items["audio"][index] for index in audible]).to(self.device)
            prompt_length, tokenizer = inputs["input_ids"].shape[1], self.processor.tokenizer
            guard = LoopGuard.from_config(prompt_length, self.model.config, tokenizer) if loop_guard else None
            if guard is not None:
                generate_kwargs["stopping_criteria"] = StoppingCriteriaList(
                    [*generate_kwargs.get("stopping_criteria", []), guard]
                )
            if follow_reading:
                generate_kwargs["tokenizer"] = tokenizer  # a TokenReadout model keeps to its reading
            # the caller's end and padding tokens (keywords, or a `generation_config`'s), if given, end the rows in
            # place of the processor's
            config = generate_kwargs.get("generation_config")
            for key, default in (
                ("eos_token_id", self.processor.end_of_turn_token_id),
                ("pad_token_id", tokenizer.pad_token_id),
            ):
                chosen = getattr(config, key, None)
                generate_kwargs.setdefault(key, default if chosen is None else chosen)
            ends = {*np.atleast_1d(generate_kwargs["eos_token_id"]).tolist(), generate_kwargs["pad_token_id"]}
            generated = self.model.generate(**inputs, **generate_kwargs)
            rows = []
            for row in generated[:, prompt_length:].tolist():
                row = row[: next((i for i, token in enumerate(row) if token in ends), len(row))]
                rows.append(guard.trim(row) if guard is not None else row)
            decoded = self.processor.batch_decode(rows, skip_special_tokens=True)
            for index, text in zip(audible, decoded):
                texts[index] = text.strip()
        outputs = {"text": texts, "start": items["start"], "end": items["end"], "is_last": items["is_last"]}
        return outputs if batched else {key: value[0] for key, value in outputs.items()}

    def postprocess(self, model_outputs, return_timestamps: bool = False):
        pieces = [output for output in model_outputs if output["text"]]
        result = {"text": " ".join(piece["text"] for piece in pieces)}
        if return_timestamps:
            result["chunks"] = [{"text": p["text"], "timestamp": (p["start"], p["end"])} for p in pieces]
        return result


__all__ = [
    "ASRPipeline",
    "LoopGuard",
    "TranscriptStreamer",
    "approximate_seconds",
    "file_blocks",
    "inaudible",
    "split_at_quiet_points",
]
