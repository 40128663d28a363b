"""Tiny Audio speech-LLM: frozen Whisper encoder -> trained projector -> frozen decoder-only LLM."""

import math
import shutil
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (
    AutoModelForCausalLM,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
    WhisperModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import cached_file, logging

try:
    from .configuration_asr import (
        DEFAULT_LORA_TARGETS,
        HOP_LENGTH,
        MAX_FEATURE_FRAMES,
        ASRConfig,
        conv_output_length,
        feature_frames_to_audio_tokens,
        from_pretrained_or_mirror,
        projector_output_length,
        spoken_form,
    )
    from .cpu_inference_asr import (
        CLIP_BY_CLIP_MIN_WIDTH,
        onednn_linear_layers,
        prefill_clip_by_clip,
        prefills_clip_by_clip,
    )
except ImportError:
    from configuration_asr import (
        DEFAULT_LORA_TARGETS,
        HOP_LENGTH,
        MAX_FEATURE_FRAMES,
        ASRConfig,
        conv_output_length,
        feature_frames_to_audio_tokens,
        from_pretrained_or_mirror,
        projector_output_length,
        spoken_form,
    )
    from cpu_inference_asr import (
        CLIP_BY_CLIP_MIN_WIDTH,
        onednn_linear_layers,
        prefill_clip_by_clip,
        prefills_clip_by_clip,
    )

logger = logging.get_logger(__name__)

WEIGHTS_NAME = "model.safetensors"
PIPELINE_FILE = "pipeline_asr.py"
# cuDNN's attention builds a new graph for every sequence length it has not seen, and real clip lengths change with
# every batch, so planning would cost more than the attention itself. The other backends do not plan.
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# `from_pretrained` keywords of a checkpoint with only trained weights: where each one goes.
CHECKPOINT_ONLY_KWARGS = ("revision", "subfolder", "_commit_hash")
HUB_ACCESS_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "proxies")
BASE_LOADER_KWARGS = ("attn_implementation", "max_memory", "offload_folder", "offload_buffers", "quantization_config")
AUTO_CLASS_KWARGS = ("trust_remote_code", "code_revision", "adapter_kwargs", "_from_auto", "_from_pipeline")


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, max_length) boolean mask of valid positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def seeded(seed: int | None, build, config, dtype: torch.dtype | str | None = None) -> nn.Module:
    """A randomly initialised base model that the same seed rebuilds exactly, in `dtype` (float32 for None or
    "auto": random weights have no dtype of their own)."""
    if seed is None:
        raise ValueError("a base model without a Hub id needs `base_seed` so that it can be rebuilt on loading")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build(config)
    if dtype is None or dtype == "auto":
        return model
    return model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)


class SplitWhisperEncoder(WhisperEncoder):
    """Whisper's encoder at each clip's real length (never padded to 30 s; padding is masked out), run in two parts:
    the frozen bottom layers, whose output an encoder cache holds, and the top `num_trained_layers` layers with the
    final layer norm, which train. The parameters are Whisper's own, so state-dict keys do not change."""

    def __init__(self, config, num_trained_layers: int = 0):
        super().__init__(config)
        self.num_trained_layers = num_trained_layers

    @classmethod
    def from_encoder(cls, encoder: WhisperEncoder, num_trained_layers: int) -> "SplitWhisperEncoder":
        """A loaded `WhisperEncoder` made a `SplitWhisperEncoder` in place: the class adds methods, not state, so the
        module keeps its weights, placement, hooks and initialisation marks (a copy would be initialised again)."""
        encoder.__class__ = cls
        encoder.num_trained_layers = num_trained_layers
        return encoder

    @property
    def num_frozen_layers(self) -> int:
        return len(self.layers) - self.num_trained_layers

    def trained_modules(self) -> list[nn.Module]:
        """The top `num_trained_layers` layers and the final layer norm (none when 0)."""
        trained_layers = self.layers[self.num_frozen_layers :]
        return [*trained_layers, self.layer_norm] if len(trained_layers) else []

    @sdpa_kernel(ATTENTION_BACKENDS)
    def forward_frozen(self, input_features: torch.Tensor, feature_lengths: torch.Tensor):
        """Convolutions, positions and the frozen layers: mel features (batch, mels, frames) with valid lengths ->
        (batch, frames / 2, d_model) and their valid lengths. Padding inside a batch changes nothing."""
        if input_features.shape[-1] > MAX_FEATURE_FRAMES:
            raise ValueError(
                f"audio clips are limited to 30 s ({MAX_FEATURE_FRAMES} feature frames), got {input_features.shape[-1]}; "
                "the pipeline splits longer audio"
            )
        features = input_features.to(self.conv1.weight.dtype)
        features = features * lengths_to_mask(feature_lengths, features.shape[-1])[:, None, :]
        hidden_states = nn.functional.gelu(self.conv1(features))
        hidden_states = hidden_states * lengths_to_mask(feature_lengths, hidden_states.shape[-1])[:, None, :]
        hidden_states = nn.functional.gelu(self.conv2(hidden_states)).transpose(1, 2)
        lengths = conv_output_length(feature_lengths)
        hidden_states = hidden_states + self.embed_positions.weight[: hidden_states.shape[1]]
        return self.run_layers(self.layers[: self.num_frozen_layers], hidden_states, lengths), lengths

    @sdpa_kernel(ATTENTION_BACKENDS)
    def forward_trained(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The trained layers and the final layer norm, on `forward_frozen`'s output (or a cache of it)."""
        hidden_states = hidden_states.to(self.layer_norm.weight.dtype)
        return self.layer_norm(self.run_layers(self.layers[self.num_frozen_layers :], hidden_states, lengths))

    @staticmethod
    def run_layers(layers, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Whisper encoder layers, with each clip's padding masked out of attention."""
        attention_mask = None
        if len(layers) and (lengths < hidden_states.shape[1]).any():
            padding = ~lengths_to_mask(lengths, hidden_states.shape[1])
            attention_mask = torch.zeros(padding.shape, dtype=hidden_states.dtype, device=hidden_states.device)
            attention_mask = attention_mask.masked_fill(padding, torch.finfo(hidden_states.dtype).min)[:, None, None, :]
        for layer in layers:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states


class TokenSpelling(nn.Module):
    """A learned vector of each token's spelling: the sum of hashed embeddings of the token itself and of its character
    1- to 4-grams (a leading "<" marks a word's start), mapped to the LLM's width. A `TokenReadout` adds it to the
    token's input embedding, whose meaning says nothing of how the word sounds: a word heard a few times in training
    then shares what it learns with words spelled alike."""

    max_features = 32

    def __init__(self, vocab_size: int, hidden_size: int, buckets: int, width: int):
        super().__init__()
        self.buckets = buckets
        # bucket + 1 of each feature of each token; 0 pads, and tokens the readout does not read have no features
        self.register_buffer("features", torch.zeros(vocab_size, self.max_features, dtype=torch.int32))
        self.embedding = nn.EmbeddingBag(buckets + 1, width, mode="sum", padding_idx=0)
        self.to_hidden = nn.Linear(width, hidden_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Spelling vectors start at zero, so that a readout starts from the input embeddings alone."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.zeros_(self.to_hidden.weight)

    def spelling_features(self, text: str) -> list[int]:
        """Buckets (+ 1) of a token's text and its character n-grams, the text first."""
        word = "<" + text[1:] if text.startswith(" ") else text
        grams = ["token:" + word] + [word[i : i + n] for n in range(1, 5) for i in range(len(word) - n + 1)]
        buckets = dict.fromkeys(1 + zlib.crc32(gram.encode()) % self.buckets for gram in grams)
        return list(buckets)[: self.max_features]

    @torch.no_grad()
    def set_spellings(self, token_ids: list[int], texts: list[str]) -> None:
        """The features of each of `token_ids` from its text (the tokenizer's); every other token has none."""
        self.features.zero_()
        for token, text in zip(token_ids, texts, strict=True):
            features = self.spelling_features(text)
            self.features[token, : len(features)] = torch.tensor(features, dtype=torch.int32)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(tokens,) LLM ids -> (tokens, hidden_size) spelling vectors."""
        return self.to_hidden(self.embedding(self.features[token_ids].long()))


def ctc_beam_search(log_probs: torch.Tensor, beam_size: int, candidates: int = 8) -> list[tuple[list[int], float]]:
    """The `beam_size` most likely readings of one clip's CTC log posteriors (frames, classes; class 0 is the blank),
    best first: class ids (repeats merged, blanks dropped) and their log probability over all the alignments that
    spell them. Greedy decoding takes the best alignment instead, which can miss the best reading. Each frame extends
    a reading only by its `candidates` most likely classes."""
    scores = log_probs.double().cpu().numpy()
    top_classes = log_probs.topk(min(candidates, log_probs.shape[-1]), dim=-1).indices.tolist()
    # reading -> log P(its alignments so far that end in a blank), log P(those that end in its last class)
    beams = {(): (0.0, -math.inf)}
    for frame, classes in zip(scores, top_classes):
        extended = defaultdict(lambda: [-math.inf, -math.inf])
        for reading, (ends_in_blank, ends_in_class) in beams.items():
            either = np.logaddexp(ends_in_blank, ends_in_class)
            stays = extended[reading]
            stays[0] = np.logaddexp(stays[0], either + frame[0])
            if reading:  # the last class again merges into it
                stays[1] = np.logaddexp(stays[1], ends_in_class + frame[reading[-1]])
            for cls in classes:
                if cls == 0:
                    continue
                grown = extended[(*reading, cls)]
                # the same class twice in a row is read twice only with a blank between
                before = ends_in_blank if reading and reading[-1] == cls else either
                grown[1] = np.logaddexp(grown[1], before + frame[cls])
        possible = [(reading, ends) for reading, ends in extended.items() if max(ends) > -math.inf]
        best = sorted(possible, key=lambda item: -np.logaddexp(*item[1]))[:beam_size]
        beams = {reading: tuple(ends) for reading, ends in best}
    return [(list(reading), float(np.logaddexp(*ends))) for reading, ends in beams.items()]


class TokenReadout(nn.Module):
    """Reads projector frames as a CTC posterior over [blank] + the LLM tokens marked in `token_mask`: scaled cosine
    similarity with their input embeddings, plus a learned blank. Stage 0 trains it with CTC.

    With `projector_output="ctc_tokens"` it also feeds the LLM: the input embeddings (`reading_embeddings`) of its
    `greedy_reading`, or of the best of its `beam_readings` (`ASRModel.read_audio`). The LLM then reads inputs of its
    own kind whatever the voice, instead of projector frames that drift off its inputs on speech unlike the training
    voices.

    With `spelling_buckets` > 0, each token's class vector adds a `TokenSpelling` vector to its input embedding."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        init_scale: float = 10.0,
        spelling_buckets: int = 0,
        spelling_width: int = 128,
    ):
        super().__init__()
        self.register_buffer("token_mask", torch.zeros(vocab_size, dtype=torch.bool))
        self.blank = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.spelling = (
            TokenSpelling(vocab_size, hidden_size, spelling_buckets, spelling_width) if spelling_buckets else None
        )

    @property
    def token_ids(self) -> torch.Tensor:
        """The LLM token id of each class after blank (class i + 1 is token_ids[i]), in increasing order."""
        return self.token_mask.nonzero().squeeze(-1)

    @torch.no_grad()
    def set_tokens(self, token_ids: list[int], texts: list[str] | None = None) -> None:
        """The LLM tokens to read; a readout with a `TokenSpelling` also needs each one's text (the tokenizer's)."""
        if self.spelling is not None:
            if texts is None:
                raise ValueError("a TokenReadout with spelling vectors needs the text of each token it reads")
            self.spelling.set_spellings(token_ids, texts)
        self.token_mask.zero_()
        self.token_mask[token_ids] = True

    def class_vectors(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """Unit vectors of the tokens read (tokens, llm_dim): their input embeddings, plus their spelling vectors."""
        token_ids = self.token_ids
        vectors = nn.functional.normalize(token_embeddings[token_ids].float(), dim=-1)
        if self.spelling is not None:
            vectors = vectors + self.spelling(token_ids).float()
        return nn.functional.normalize(vectors, dim=-1)

    def forward(self, frames: torch.Tensor, token_embeddings: torch.Tensor, similarity=torch.matmul) -> torch.Tensor:
        """(batch, frames, llm_dim) -> CTC logits (batch, frames, 1 + tokens); `token_embeddings`: the LLM's table.
        `similarity(scaled_frames, class_vectors.T)` is a plain matmul unless training asks for a cheaper backward."""
        scaled = nn.functional.normalize(frames.float(), dim=-1) * self.log_scale.exp()
        # the learned blank apart from the frozen table: backward never computes a gradient for the whole table
        blank = scaled @ nn.functional.normalize(self.blank, dim=-1)[:, None]
        # similarities in the LLM's dtype: bfloat16 where the bases run in it (ample precision for cosines), float32
        # where they do not, since a CPU without native bfloat16 computes it many times slower
        tokens = self.class_vectors(token_embeddings).to(token_embeddings.dtype)
        return torch.cat([blank.float(), similarity(scaled.to(tokens.dtype), tokens.T)], dim=-1)  # float32, one pass

    @torch.no_grad()
    def greedy_reading(self, frames: torch.Tensor, lengths: torch.Tensor, token_embeddings: torch.Tensor):
        """(batch, frames, llm_dim) with valid `lengths` -> the greedy CTC reading (repeats collapsed, blanks dropped)
        as LLM ids (batch, tokens), padded with -100."""
        if not self.token_mask.any():
            raise ValueError("the projector's token readout has no tokens yet: train it with the CTC warm-up first")
        classes = self(frames, token_embeddings).argmax(-1)
        heard = (classes != 0) & lengths_to_mask(lengths.to(classes.device), classes.shape[1])
        heard[:, 1:] &= classes[:, 1:] != classes[:, :-1]
        rows, columns = heard.nonzero(as_tuple=True)
        positions = heard.cumsum(-1)[rows, columns] - 1
        reading_ids = classes.new_full((classes.shape[0], int(heard.sum(-1).max())), -100)
        reading_ids[rows, positions] = self.token_ids[classes[rows, columns] - 1]
        return reading_ids

    @torch.no_grad()
    def beam_readings(
        self, frames: torch.Tensor, lengths: torch.Tensor, token_embeddings: torch.Tensor, beam_size: int
    ):
        """(batch, frames, llm_dim) with valid `lengths` -> for each clip, its `beam_size` most likely readings (LLM
        ids) with their CTC log probabilities, best first (`ctc_beam_search`)."""
        log_probs = self(frames, token_embeddings).log_softmax(-1)
        token_ids = self.token_ids.tolist()
        return [
            [
                ([token_ids[cls - 1] for cls in classes], score)
                for classes, score in ctc_beam_search(row[:length], beam_size)
            ]
            for row, length in zip(log_probs, lengths.tolist())
        ]

    @staticmethod
    def reading_embeddings(reading_ids: torch.Tensor, lengths: torch.Tensor, token_embeddings: torch.Tensor):
        """A reading (LLM ids padded with -100) -> its input embeddings at the start of each clip's `lengths` audio
        positions, then zeros (batch, max(lengths), llm_dim). The LLM reads the tokens side by side, as it reads text,
        so copying them is what it already does well. Training feeds each transcript's spoken form (what a perfect
        readout would read), so the LLM learns to copy, not to rewrite what it is given."""
        read = (reading_ids != -100).sum(-1)
        if (read > lengths.to(read.device)).any():
            raise ValueError(f"readings of {read.tolist()} tokens do not fit {lengths.tolist()} audio positions")
        rows, positions = (reading_ids != -100).nonzero(as_tuple=True)
        reading = token_embeddings.new_zeros(reading_ids.shape[0], int(lengths.max()), token_embeddings.shape[1])
        reading[rows, positions] = token_embeddings[reading_ids[rows, positions]]
        return reading


class AudioProjector(nn.Module):
    """Two stride-2 convolutions (4x fewer frames), then Linear -> GELU -> Linear -> RMSNorm into the LLM's width;
    with `projector_output="ctc_tokens"`, a `TokenReadout` that the model applies on top."""

    def __init__(self, config: ASRConfig):
        super().__init__()
        audio_dim, llm_dim = config.audio_config.d_model, config.text_config.hidden_size
        self.conv1 = nn.Conv1d(audio_dim, audio_dim, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(audio_dim, audio_dim, kernel_size=3, stride=2, padding=1)
        self.linear1 = nn.Linear(audio_dim, config.projector_hidden_size)
        self.act = nn.GELU()
        self.linear2 = nn.Linear(config.projector_hidden_size, llm_dim)
        self.norm = nn.RMSNorm(llm_dim, eps=1e-6)
        self.readout = None
        if config.projector_output == "ctc_tokens":
            self.readout = TokenReadout(
                config.text_config.vocab_size,
                llm_dim,
                spelling_buckets=config.readout_spelling_buckets,
                spelling_width=config.readout_spelling_width,
            )

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, audio_dim) with valid lengths -> (batch, frames / 4, llm_dim) and their valid lengths."""
        hidden_states = hidden_states.to(self.conv1.weight.device, self.conv1.weight.dtype).transpose(1, 2)
        lengths = lengths.to(hidden_states.device)
        for conv in (self.conv1, self.conv2):
            # Zero the padding so a clip's output does not depend on what it is batched with.
            hidden_states = hidden_states * lengths_to_mask(lengths, hidden_states.shape[-1])[:, None, :]
            hidden_states = nn.functional.gelu(conv(hidden_states))
            lengths = conv_output_length(lengths)
        hidden_states = self.linear2(self.act(self.linear1(hidden_states.transpose(1, 2))))
        # in the norm's own dtype: under autocast the linear layers return bfloat16, and a float32 weight would miss
        # the fused kernel
        return self.norm(hidden_states.to(self.norm.weight.dtype)), lengths


def rows_per_clip(per_clip: torch.Tensor, num_rows: int) -> torch.Tensor:
    """`per_clip` values repeated for each of `generate`'s rows: a clip has one row in greedy search and several,
    next to each other, in beam search."""
    return per_clip.repeat_interleave(num_rows // len(per_clip))


class AudioLengthStoppingCriteria(StoppingCriteria):
    """Stops each sequence once it has generated its own cap of new tokens (set from its audio duration)."""

    def __init__(self, prompt_length: int, max_new_tokens: torch.Tensor):
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        caps = rows_per_clip(self.max_new_tokens, input_ids.shape[0]).to(input_ids.device)
        return (input_ids.shape[1] - self.prompt_length) >= caps


class ReadingConstraint(LogitsProcessor):
    """Keeps decoding to the words of each clip's `TokenReadout` reading. A step takes the best of the
    `candidates` top-scoring tokens whose text, in spoken form, still leads into the reading's (else the reading's
    own next token), and the end of turn only once every word is written. The LLM adds case and punctuation; where
    its copy of a long or odd reading slips, it cannot skip, repeat or invent words."""

    def __init__(self, tokenizer, reading_ids: torch.Tensor, prompt_length: int, end_token_ids, candidates: int = 16):
        self.tokenizer, self.prompt_length, self.candidates = tokenizer, prompt_length, candidates
        self.end_token_ids = [end_token_ids] if isinstance(end_token_ids, int) else list(end_token_ids)
        self.reading_ids = [row[row != -100].tolist() for row in reading_ids]
        self.readings = [spoken_form(tokenizer.decode(ids)) for ids in self.reading_ids]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        constrained = scores.clone()
        clips = rows_per_clip(torch.arange(len(self.readings)), input_ids.shape[0]).tolist()
        for row, clip in enumerate(clips):
            written = input_ids[row, self.prompt_length :].tolist()
            if any(token in self.end_token_ids for token in written):
                continue  # finished: generate pads this row
            token = self.next_token(clip, written, scores[row])
            constrained[row] = float("-inf")
            constrained[row, token] = scores[row, token]
        return constrained

    def next_token(self, clip: int, written: list[int], scores: torch.Tensor) -> int:
        """The best-scoring candidate that keeps to the reading; else the reading's own next token (or the next piece
        of its text, inside a word the LLM spelt its own way); else the end of turn."""
        reading, text = self.readings[clip], self.tokenizer.decode(written, skip_special_tokens=True)
        said, word_open = spoken_form(text), self.word_open(text)
        if said == reading and not word_open:
            return self.end_token_ids[0]  # nothing left to say: punctuation cannot run on, nor open a silent clip
        for token in scores.topk(min(self.candidates, scores.shape[-1])).indices.tolist():
            if token in self.end_token_ids:
                if said == reading:
                    return token
            elif self.leads_into(reading, said, word_open, written + [token]):
                return token
        for token in self.reading_continuations(clip, text, said):
            if self.leads_into(reading, said, word_open, written + [token]):
                return token
        return self.end_token_ids[0]

    def reading_continuations(self, clip: int, text: str, said: str):
        """Tokens that go on from `text`, which says `said`: the reading's own token after it, then the first token of
        the rest of its text (`said` ends inside a word the LLM spelt its own way, or before a space or an apostrophe
        that `text` holds already). Only the rare step that no candidate suits."""
        ids, reading = self.reading_ids[clip], self.readings[clip]
        for index, token in enumerate(ids):
            if spoken_form(self.tokenizer.decode(ids[:index])) == said:
                yield token
                break
        if reading.startswith(said):
            rest = reading[len(said) :]
            if rest[:1] in ("'", " ") and text.endswith(rest[:1]):
                rest = rest[1:]  # written already, though the spoken form does not show it yet
            yield from self.tokenizer(rest, add_special_tokens=False)["input_ids"][:1]

    def leads_into(self, reading: str, said: str, word_open: bool, tokens: list[int]) -> bool:
        """Whether `tokens`, which extend a text that says `said` (and ends inside a word when `word_open`), still
        begin `reading` in spoken form: a word they close (with a space or punctuation) closes there in the reading
        too, and a token that says nothing new follows a word."""
        extended = self.tokenizer.decode(tokens, skip_special_tokens=True)
        said_after = spoken_form(extended)
        if not reading.startswith(said_after) or (said_after == said and not word_open):
            return False
        if extended.endswith("'"):  # the spoken form keeps an apostrophe only once the word goes on after it
            rest = reading[len(said_after) :]
            return rest.startswith("'") and reading.startswith(spoken_form(extended + rest[1:2]))
        return self.word_open(extended) or len(said_after) == len(reading) or reading[len(said_after)] == " "

    @staticmethod
    def word_open(text: str) -> bool:
        """Whether `text` ends inside a word, which the next token may go on."""
        return bool(text) and (text[-1].isalnum() or text[-1] in "_'")


class ASRPreTrainedModel(PreTrainedModel):
    config_class = ASRConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _keep_in_fp32_modules = ["projector"]
    supports_gradient_checkpointing = True  # the bases' layers recompute their activations in the backward
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["WhisperEncoderLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TokenSpelling):  # after its children's generic initialisation
            module.reset_parameters()


class ASRModel(ASRPreTrainedModel, GenerationMixin):
    """Speech recognition with a decoder-only LLM.

    Audio features run through the Whisper encoder at their real length (never padded to 30 s), the projector maps
    every 8 mel frames to one LLM embedding, and those embeddings replace the audio placeholder tokens of the prompt.
    Only the projector (and optional LoRA adapters and top encoder layers) train.
    """

    def __init__(
        self, config: ASRConfig, audio_encoder: nn.Module | None = None, language_model: nn.Module | None = None
    ):
        super().__init__(config)
        if audio_encoder is None:
            self.audio_encoder = SplitWhisperEncoder(config.audio_config, config.trained_encoder_layers)
        else:
            self.audio_encoder = SplitWhisperEncoder.from_encoder(audio_encoder, config.trained_encoder_layers)
        self.projector = AudioProjector(config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        if config.lora_rank > 0:
            self._inject_lora()
        for module in self.audio_encoder.trained_modules():
            module.float()  # trained weights stay float32 whatever the bases' dtype
        self.freeze_base_models()
        self.post_init()
        if not self.projector.norm.weight.is_meta:
            self.match_projector_scale()

    @classmethod
    def from_base_models(cls, config: ASRConfig, dtype: torch.dtype | str | None = None, **loader_kwargs) -> "ASRModel":
        """A fresh model on the base models: the pretrained `config.audio_model_id` / `config.text_model_id`, or,
        where an id is `None`, random weights drawn from `config.base_seed` (for offline smoke tests).

        `dtype` and `loader_kwargs` (`attn_implementation`, `device_map`, `cache_dir`, ...) go to the pretrained bases'
        `from_pretrained`; random bases take `dtype` and `attn_implementation` only. Either way the bases can be rebuilt, so saving
        the model writes only the trained weights.
        """
        if not config.trained_weights_only:
            raise ValueError("a model on rebuildable base models needs a config from `ASRConfig.from_base_configs`")
        bases = ((config.audio_model_id, config.audio_config), (config.text_model_id, config.text_config))
        random_bases = [base_config for model_id, base_config in bases if not model_id]
        unhonoured = sorted(set(loader_kwargs) - {"attn_implementation", *HUB_ACCESS_KWARGS})
        if random_bases and unhonoured:
            raise TypeError(f"base models with random weights cannot take {unhonoured}, only attn_implementation")
        for base_config in random_bases:
            if loader_kwargs.get("attn_implementation"):
                base_config._attn_implementation = loader_kwargs["attn_implementation"]
        if config.audio_model_id:
            encoder = from_pretrained_or_mirror(
                WhisperModel, config.audio_model_id, config.audio_model_revision, dtype=dtype, **loader_kwargs
            ).get_encoder()
        else:
            encoder = seeded(config.base_seed, WhisperEncoder, config.audio_config, dtype)
        if config.text_model_id:
            llm = from_pretrained_or_mirror(
                AutoModelForCausalLM, config.text_model_id, config.text_model_revision, dtype=dtype, **loader_kwargs
            )
        else:
            llm = seeded(config.base_seed, AutoModelForCausalLM.from_config, config.text_config, dtype)
        model = cls(config, audio_encoder=encoder, language_model=llm)
        model.projector.to(model.get_input_embeddings().weight.device)  # beside the LLM, wherever it was placed
        return model

    # ----------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config: ASRConfig | None = None, **kwargs):
        """Loads a saved model; a checkpoint with only trained weights gets its base models from their Hub ids (or
        the local mirror offline), or rebuilds random ones from `base_seed`.

        Such a checkpoint passes `dtype`, `attn_implementation`, `device_map` and the Hub access keywords on to the
        bases' loaders, and refuses with a `TypeError` any keyword that it cannot honour."""
        if config is None:
            config_kwargs = {key: kwargs[key] for key in (*CHECKPOINT_ONLY_KWARGS, *HUB_ACCESS_KWARGS) if key in kwargs}
            config = ASRConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        if not config.trained_weights_only:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
            model.freeze_base_models()
            return model
        accepted = {*CHECKPOINT_ONLY_KWARGS, *HUB_ACCESS_KWARGS, *BASE_LOADER_KWARGS, *AUTO_CLASS_KWARGS}
        unknown = sorted(set(kwargs) - accepted - {"dtype", "torch_dtype", "device_map"})
        if model_args or unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained cannot honour {unknown or 'positional model arguments'} for a "
                f"checkpoint with only trained weights; it takes {sorted(accepted - set(AUTO_CLASS_KWARGS))}, "
                "dtype and device_map"
            )
        hub_kwargs = {key: kwargs[key] for key in (*CHECKPOINT_ONLY_KWARGS, *HUB_ACCESS_KWARGS) if key in kwargs}
        loader_kwargs = {key: kwargs[key] for key in (*HUB_ACCESS_KWARGS, *BASE_LOADER_KWARGS) if key in kwargs}
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        device_map = kwargs.get("device_map")
        single_device = isinstance(device_map, (int, torch.device)) or (
            isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential")
        )
        if device_map is not None and not single_device:
            loader_kwargs["device_map"] = device_map  # accelerate places the bases; the projector follows the LLM
        model = cls.from_base_models(config, dtype=None if dtype == "auto" else dtype, **loader_kwargs)
        weights_file = cached_file(pretrained_model_name_or_path, WEIGHTS_NAME, **hub_kwargs)
        model.load_trained_weights(load_file(weights_file))
        if single_device:
            model.to(device_map)
        return model.eval()

    def freeze_base_models(self) -> None:
        """Only the projector, LoRA adapters and `config.trained_encoder_layers` train; the rest stays frozen."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(self.is_trained_weight(name))

    def is_trained_weight(self, name: str) -> bool:
        """Whether a state-dict key belongs to what this project trains, not to a frozen base model."""
        encoder = self.audio_encoder
        trained_encoder = [f"audio_encoder.layers.{i}." for i in range(encoder.num_frozen_layers, len(encoder.layers))]
        trained_encoder += ["audio_encoder.layer_norm."] if encoder.num_trained_layers else []
        return name.startswith(("projector.", *trained_encoder)) or "lora_" in name

    def load_trained_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Loads the trained weights (projector, LoRA adapters, trained encoder layers), refusing a checkpoint that
        lacks any of them, and a model that holds any of them on the meta device, where loading silently does
        nothing: a `device_map` that offloads base modules (`max_memory`, `offload_folder`) leaves the adapters added
        to them there."""
        on_meta = [key for key, value in self.state_dict().items() if value.is_meta and self.is_trained_weight(key)]
        if on_meta:
            raise ValueError(
                f"{len(on_meta)} trained weights ({', '.join(on_meta[:3])}, ...) lie on the meta device, offloaded "
                "with the base modules they belong to, and cannot be loaded there; give the device_map room for the "
                "whole model (no offloading to CPU or disk)"
            )
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        missing_trained = [key for key in missing if self.is_trained_weight(key)]
        if missing_trained or unexpected:
            raise ValueError(
                f"checkpoint does not match the model: missing trained weights {missing_trained}, "
                f"unexpected weights {list(unexpected)}"
            )

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Saves config, code and weights: only trained weights when the base models can be fetched again.

        transformers copies this file and what it imports; the pipeline that `custom_pipelines` names is not imported,
        so that loading the model alone needs none of the pipeline's audio packages, and is copied from
        `pipeline_source`."""
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForSpeechSeq2Seq": "modeling_asr.ASRModel",
        }
        self.config.custom_pipelines = {
            "automatic-speech-recognition": {
                "impl": "pipeline_asr.ASRPipeline",
                "pt": ["AutoModelForSpeechSeq2Seq"],
                "tf": [],
                "type": "audio",
            }
        }
        if self.config.trained_weights_only:
            state_dict = state_dict if state_dict is not None else self.state_dict()
            state_dict = {key: value for key, value in state_dict.items() if self.is_trained_weight(key)}
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        pipeline_file = self.pipeline_source()
        if pipeline_file is None:
            logger.warning(f"{PIPELINE_FILE} not found; {save_directory} will load with AutoModel but not pipeline()")
        else:
            shutil.copy(pipeline_file, Path(save_directory) / PIPELINE_FILE)

    def pipeline_source(self) -> str | Path | None:
        """The model's `pipeline_asr.py`: beside this file, else in the folder or Hub repo the model was loaded from.
        Loaded with `trust_remote_code`, this file runs from a cache that holds the model's own modules only, in a
        folder named after the Hub commit they came from."""
        beside = Path(__file__).with_name(PIPELINE_FILE)
        if beside.is_file():
            return beside
        try:  # a local folder ignores the revision
            return cached_file(self.config.name_or_path, PIPELINE_FILE, revision=Path(__file__).parent.name)
        except OSError:  # offline without it, no such repo or commit, or a model built here from copied code
            return None

    # ----------------------------------------------------------------- modules

    def add_lora_adapters(self, rank: int, alpha: int = 32, dropout: float = 0.0, target_modules=DEFAULT_LORA_TARGETS):
        """Adds trainable LoRA adapters to the LLM (e.g. for a second stage after projector-only training)."""
        if self.config.lora_rank > 0:
            raise ValueError(f"the model already has LoRA adapters of rank {self.config.lora_rank}")
        self.config.lora_rank, self.config.lora_alpha, self.config.lora_dropout = rank, alpha, dropout
        self.config.lora_target_modules = list(target_modules)
        self._inject_lora()
        self.freeze_base_models()

    def _inject_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        lora_config = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.lora_target_modules),
        )
        inject_adapter_in_model(lora_config, self.language_model)
        for name, module in self.language_model.named_modules():
            if name.endswith((".lora_A", ".lora_B")):
                module.float()  # trained weights stay float32; peft gives adapters their base layer's dtype

    @torch.no_grad()
    def match_projector_scale(self) -> None:
        """Sets the projector's output RMS to the RMS of the LLM's token embeddings (or to `projector_init_scale`)."""
        if self.config.projector_init_scale is None:
            embeddings = self.get_input_embeddings().weight.float()
            self.config.projector_init_scale = embeddings.pow(2).mean(-1).sqrt().mean().item()
        self.projector.norm.weight.fill_(self.config.projector_init_scale)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def train(self, mode: bool = True) -> "ASRModel":
        """Frozen parts stay in eval mode (no dropout) even while the Trainer trains the projector."""
        super().train(mode)
        self.audio_encoder.eval()
        if self.config.lora_rank == 0:
            self.language_model.eval()
        return self

    # ----------------------------------------------------------------- forward

    def get_audio_features(
        self, input_features=None, input_features_mask=None, mm_encoder_outputs=None, reading_ids=None
    ):
        """Mel features (batch, mels, frames), or cached outputs of the frozen encoder layers
        `{"audio": (hidden_states, lengths)}`, -> the LLM's audio embeddings (batch, tokens, llm_dim) and lengths.

        With a `TokenReadout` these embed its reading (`read_audio`), or the given `reading_ids` (LLM ids padded with
        -100), which then spare the encoder: only the number of audio positions is needed."""
        readout = self.projector.readout
        if readout is None:
            return self.project_audio(input_features, input_features_mask, mm_encoder_outputs)
        if reading_ids is None:
            reading_ids = self.read_audio(input_features, input_features_mask, mm_encoder_outputs)
        if mm_encoder_outputs is not None:
            lengths = projector_output_length(mm_encoder_outputs["audio"][1])
        else:
            lengths = feature_frames_to_audio_tokens(input_features_mask.sum(-1))
        return readout.reading_embeddings(reading_ids, lengths, self.get_input_embeddings().weight), lengths

    @torch.no_grad()
    def read_audio(self, input_features=None, input_features_mask=None, mm_encoder_outputs=None) -> torch.Tensor:
        """The `TokenReadout`'s reading of each clip: LLM ids (batch, tokens), padded with -100. The greedy one, or
        with `reading_beam_size` > 1 the `best_reading` of its CTC beam search."""
        if self.projector.readout is None:
            raise ValueError('read_audio needs a TokenReadout (projector_output="ctc_tokens")')
        frames, lengths = self.project_audio(input_features, input_features_mask, mm_encoder_outputs)
        readout, token_embeddings = self.projector.readout, self.get_input_embeddings().weight
        if self.config.reading_beam_size == 1:
            return readout.greedy_reading(frames, lengths, token_embeddings)
        beams = readout.beam_readings(frames, lengths, token_embeddings, self.config.reading_beam_size)
        readings = [torch.tensor(self.best_reading(clip_beams), dtype=torch.long) for clip_beams in beams]
        return nn.utils.rnn.pad_sequence(readings, batch_first=True, padding_value=-100).to(frames.device)

    @torch.no_grad()
    def best_reading(self, beams: list[tuple[list[int], float]]) -> list[int]:
        """The reading among a clip's CTC `beams` with the best CTC log probability, plus `reading_lm_weight` times
        its log-likelihood as text under the LLM, plus `reading_length_bonus` per token (against the LLM's pull
        towards short texts). The LLM knows which of the words that sound alike fit together."""
        readings = [reading for reading, _ in beams]
        if not any(readings):
            return []
        texts = [[self.text_start_token_id, *reading] for reading in readings]
        width = max(map(len, texts))
        device = self.get_input_embeddings().weight.device
        input_ids = torch.tensor([text + [0] * (width - len(text)) for text in texts], device=device)
        attention_mask = torch.tensor([[1] * len(text) + [0] * (width - len(text)) for text in texts], device=device)
        logits = self.language_model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        token_log_probs = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
        text_log_likelihoods = (token_log_probs * attention_mask[:, 1:]).sum(-1).tolist()
        scores = [
            ctc + self.config.reading_lm_weight * text + self.config.reading_length_bonus * len(reading)
            for (reading, ctc), text in zip(beams, text_log_likelihoods)
        ]
        return readings[scores.index(max(scores))]

    @property
    def text_start_token_id(self) -> int:
        """The token a text starts after in the LLM's training: its beginning of text, else its end of text."""
        text_config = self.config.text_config
        start = text_config.bos_token_id if text_config.bos_token_id is not None else text_config.eos_token_id
        return start[0] if isinstance(start, list) else start

    def project_audio(self, input_features=None, input_features_mask=None, mm_encoder_outputs=None):
        """`get_audio_features` up to the projector's output (before any `TokenReadout`)."""
        if mm_encoder_outputs is not None:
            hidden_states, lengths = mm_encoder_outputs["audio"]
        else:
            if input_features_mask is None:
                raise ValueError("input_features need their input_features_mask (ASRProcessor returns both)")
            if not torch.isfinite(input_features).all():
                raise ValueError("input_features contain NaN or Inf values; check the audio for corrupt samples")
            with torch.no_grad():
                hidden_states, lengths = self.audio_encoder.forward_frozen(input_features, input_features_mask.sum(-1))
        return self.projector(self.audio_encoder.forward_trained(hidden_states, lengths), lengths)

    def embed_prompt(
        self, input_ids, input_features=None, input_features_mask=None, mm_encoder_outputs=None, reading_ids=None
    ):
        """Token embeddings of the prompt with the projected audio spliced in at the placeholder positions."""
        audio_positions = input_ids == self.config.audio_token_id
        # The placeholder may lie outside the LLM's vocabulary: it is never looked up, so no resizing is needed.
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(audio_positions, 0))
        if input_features is None and mm_encoder_outputs is None:
            if audio_positions.any():
                raise ValueError("input_ids contain audio placeholder tokens but no input_features were given")
            return inputs_embeds
        audio_embeds, audio_lengths = self.get_audio_features(
            input_features, input_features_mask, mm_encoder_outputs, reading_ids
        )
        placeholders = audio_positions.sum(-1)
        if not torch.equal(placeholders.cpu(), audio_lengths.cpu()):
            raise ValueError(
                f"number of audio placeholder tokens {placeholders.tolist()} does not match the audio tokens "
                f"{audio_lengths.tolist()} of the features; build inputs with ASRProcessor"
            )
        audio_embeds = audio_embeds[lengths_to_mask(audio_lengths, audio_embeds.shape[1])]
        return inputs_embeds.masked_scatter(audio_positions[..., None], audio_embeds.to(inputs_embeds.dtype))

    @sdpa_kernel(ATTENTION_BACKENDS)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        reading_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, mels, frames)`): log-mel features, zero-padded.
        input_features_mask (`torch.LongTensor` of shape `(batch, frames)`): 1 on the real frames of each clip.
        mm_encoder_outputs (`dict`): `{"audio": (hidden_states, lengths)}` of a cached `audio_encoder.forward_frozen`
            run, instead of features.
        reading_ids (`torch.LongTensor` of shape `(batch, tokens)`): with a `TokenReadout`, LLM ids (padded with -100)
            that the LLM reads instead of the readout's reading (the audio is then not encoded): training feeds each
            transcript's spoken form, `generate` the reading it made once.
        labels (`torch.LongTensor`): target ids, -100 everywhere but the transcript and its end-of-turn token. The LM
            head then runs only on those positions.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_prompt(
                input_ids, input_features, input_features_mask, mm_encoder_outputs, reading_ids
            )
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            if cache is not None and cache.get_seq_length() > 0:
                position_ids = position_ids[:, -inputs_embeds.shape[1] :]
        if labels is None:
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
            return CausalLMOutputWithPast(logits=outputs.logits, cache=outputs.cache)

        hidden_states = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        ).last_hidden_state
        targets = labels[:, 1:].to(hidden_states.device)
        labelled = targets != -100
        logits = self.get_output_embeddings()(hidden_states[:, :-1][labelled]).float()
        loss = nn.functional.cross_entropy(logits, targets[labelled], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else labelled.sum().clamp(min=1))
        return CausalLMOutputWithPast(loss=loss)

    # ----------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        input_features=None,
        input_features_mask=None,
        attention_mask=None,
        tokenizer=None,
        clip_by_clip_min_width: int = CLIP_BY_CLIP_MIN_WIDTH,
        **kwargs,
    ):
        """Greedy decoding (beam search with `num_beams`) with the KV cache; each clip's new tokens are capped by its
        duration unless the caller sets a length (`sets_length`). Returns prompt + generated ids, like any
        decoder-only `generate`. On CPU an LLM at least `clip_by_clip_min_width` wide prefills a greedy batch clip by
        clip, and float32 linear layers run through oneDNN (both in `cpu_inference_asr.py`).

        With a `TokenReadout`, each clip is read once (`read_audio`, or the `reading_ids` given) and, given the
        `tokenizer`, a `ReadingConstraint` keeps the transcript to the reading's words."""
        if input_features_mask is not None and not self.sets_length(kwargs):
            self.cap_by_duration(kwargs, input_ids.shape[1], input_features_mask)
        if self.projector.readout is not None and input_features is not None and kwargs.get("reading_ids") is None:
            kwargs["reading_ids"] = self.read_audio(input_features, input_features_mask)
        if tokenizer is not None and kwargs.get("reading_ids") is not None:
            self.keep_to_reading(kwargs, input_ids.shape[1], tokenizer)
        generation_config = kwargs.get("generation_config", self.generation_config)
        one_row_per_clip = all(
            kwargs.get(key, getattr(generation_config, key)) in (None, 1)
            for key in ("num_beams", "num_return_sequences")
        )
        with onednn_linear_layers(self):
            if (
                one_row_per_clip  # generate does not widen a cache it is given into beams or sequences
                and input_features is not None
                and "cache" not in kwargs
                and prefills_clip_by_clip(self, input_ids, attention_mask, clip_by_clip_min_width)
            ):
                with sdpa_kernel(ATTENTION_BACKENDS):
                    kwargs["cache"] = prefill_clip_by_clip(
                        self, input_ids, attention_mask, input_features, input_features_mask, kwargs.get("reading_ids")
                    )
            else:
                kwargs.update(input_features=input_features, input_features_mask=input_features_mask)
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, tokenizer=tokenizer, **kwargs)

    def sets_length(self, generate_kwargs: dict) -> bool:
        """Whether `generate`'s keywords, the `generation_config` among them, or the model's own generation config
        set `max_new_tokens` or `max_length`: a choice the duration cap must not override. Unset, both are None
        (`generate` fills in transformers' default length only later, as it does when telling the two apart)."""
        configs = (generate_kwargs.get("generation_config"), self.generation_config)
        return any(
            generate_kwargs.get(key) is not None or any(getattr(config, key, None) is not None for config in configs)
            for key in ("max_new_tokens", "max_length")
        )

    def cap_by_duration(self, generate_kwargs: dict, prompt_length: int, input_features_mask: torch.Tensor) -> None:
        """Adds to `generate`'s keywords each clip's cap of new tokens, from its duration (`max_new_tokens_for`)."""
        num_samples = input_features_mask.sum(-1).cpu() * HOP_LENGTH
        caps = torch.tensor([self.config.max_new_tokens_for(int(n)) for n in num_samples])
        generate_kwargs["max_new_tokens"] = int(caps.max())
        generate_kwargs["stopping_criteria"] = StoppingCriteriaList(
            [*generate_kwargs.get("stopping_criteria", []), AudioLengthStoppingCriteria(prompt_length, caps)]
        )

    def keep_to_reading(self, generate_kwargs: dict, prompt_length: int, tokenizer) -> None:
        """Adds to `generate`'s keywords a `ReadingConstraint` to their `reading_ids`."""
        end_token_ids = generate_kwargs.get("eos_token_id", self.generation_config.eos_token_id)
        if end_token_ids is None:
            raise ValueError("keeping to the reading needs an end of turn: pass eos_token_id to generate")
        constraint = ReadingConstraint(tokenizer, generate_kwargs["reading_ids"], prompt_length, end_token_ids)
        generate_kwargs["logits_processor"] = LogitsProcessorList(
            [*generate_kwargs.get("logits_processor", []), constraint]
        )


ASRConfig.register_for_auto_class()
ASRModel.register_for_auto_class("AutoModel")

__all__ = [
    "ASRModel",
    "ASRPreTrainedModel",
    "AudioProjector",
    "ReadingConstraint",
    "SplitWhisperEncoder",
    "TokenReadout",
]
