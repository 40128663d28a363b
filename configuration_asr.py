"""Configuration of the Tiny Audio speech-LLM: Whisper encoder -> projector -> decoder-only LLM."""

import os
import re
import threading
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

from huggingface_hub import constants
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

SAMPLING_RATE = 16_000
HOP_LENGTH = 160  # Whisper's mel hop: 100 feature frames per second
N_FFT = 400  # Whisper's STFT window
MAX_FEATURE_FRAMES = 3000  # Whisper's position table covers 30 s
MAX_CHUNK_SECONDS = MAX_FEATURE_FRAMES * HOP_LENGTH / SAMPLING_RATE
MIN_CHUNK_SECONDS = 1.0  # shorter pieces cut words apart (and a piece needs room for a quiet point to cut at)
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")  # the LLM's attention queries and values
# Loop guard defaults: an n-gram of up to LOOP_MAX_PERIOD tokens counts as a loop once it repeats LOOP_MIN_REPEATS
# times in a row and the copies span at least LOOP_MIN_TOKENS tokens, so "very very" or "no, no, no, no, no" stay, and
# "the best of the best of ..." stops after six copies. A period as long as a sentence also stops a model that copies
# a reading and jumps back to an earlier sentence.
LOOP_MAX_PERIOD = 32
LOOP_MIN_REPEATS = 3
LOOP_MIN_TOKENS = 16


def check_chunk_length(chunk_length_s: float) -> None:
    """The pipeline's pieces of long audio: from `MIN_CHUNK_SECONDS` to Whisper's 30 s window."""
    if not MIN_CHUNK_SECONDS <= chunk_length_s <= MAX_CHUNK_SECONDS:
        raise ValueError(
            f"chunk_length_s must lie in [{MIN_CHUNK_SECONDS:g}, {MAX_CHUNK_SECONDS:g}] seconds, got {chunk_length_s}"
        )


def conv_output_length(length, kernel_size=3, stride=2, padding=1):
    """Frames out of one strided Conv1d; works on ints and integer tensors alike."""
    return (length + 2 * padding - kernel_size) // stride + 1


def projector_output_length(encoder_frames):
    """Whisper encoder frames -> audio tokens: the projector's two stride-2 convs (4x)."""
    return conv_output_length(conv_output_length(encoder_frames))


def feature_frames_to_audio_tokens(num_frames):
    """Mel frames -> audio tokens: Whisper's stride-2 conv, then the projector's (8x in all)."""
    return projector_output_length(conv_output_length(num_frames))


def num_audio_tokens(num_samples: int, pad_audio_to_30s: bool = False) -> int:
    """The one definition of "16 kHz samples -> audio tokens" shared by processor and model (12.5 per second)."""
    num_frames = MAX_FEATURE_FRAMES if pad_audio_to_30s else num_samples // HOP_LENGTH
    return int(feature_frames_to_audio_tokens(num_frames)) if num_frames > 0 else 0


NOT_SPOKEN = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


def spoken_form(text: str) -> str:
    """What a listener hears of a transcript: lower case, no punctuation, a space before every word ("" for none).
    "The", " The" and " the" are one sound: stage 0 reads this form, and generation keeps to the words it read."""
    words = NOT_SPOKEN.sub(" ", text.lower()).split()
    return " " + " ".join(words) if words else ""


# The processor's settings, kept in the config too; both take their defaults from here.
PROCESSOR_SETTINGS = ("audio_token", "system_prompt", "user_prompt", "pad_audio_to_30s")
DEFAULT_AUDIO_TOKEN = "<audio>"
DEFAULT_SYSTEM_PROMPT = "/no_think"  # SmolLM3's switch to answer without a reasoning block
DEFAULT_USER_PROMPT = f"Transcribe the audio: {DEFAULT_AUDIO_TOKEN}"
PROJECTOR_OUTPUTS = ("embeddings", "ctc_tokens")


def check_user_prompt(user_prompt: str, audio_token: str) -> None:
    """The audio embeddings replace the placeholder in the user turn, so it must be there."""
    if audio_token not in user_prompt:
        raise ValueError(f"user_prompt {user_prompt!r} must contain the audio placeholder {audio_token!r}")


MIRROR_ENV = "TINY_AUDIO_MIRROR"
HUB_PROBE_SECONDS = 5


def mirror_root() -> Path:
    """Folder of local copies of base models, `<root>/<owner>/<name>/`, used when the Hub cannot be reached:
    `$TINY_AUDIO_MIRROR`, else `~/.cache/tiny_audio/mirror`."""
    if os.environ.get(MIRROR_ENV):
        return Path(os.environ[MIRROR_ENV]).expanduser()
    return Path.home() / ".cache" / "tiny_audio" / "mirror"


@cache
def hub_reachable() -> bool:
    """Whether the Hub answers, decided once per process within `HUB_PROBE_SECONDS`.

    Without a network, huggingface_hub retries every file a load asks for with backoff, which adds up to minutes
    before the mirror is tried. When the Hub does not answer, the rest of the process runs in huggingface_hub's
    offline mode (as with `HF_HUB_OFFLINE=1`): loads go straight to the local cache, then to the mirror.
    """
    if constants.HF_HUB_OFFLINE:
        return False
    answered = []
    # A thread bounds the whole probe: the timeout of `urlopen` does not cover name resolution.
    probe = threading.Thread(target=_probe_hub, args=(answered,), daemon=True)
    probe.start()
    probe.join(HUB_PROBE_SECONDS)
    if not answered:
        logger.warning(f"The Hugging Face Hub ({constants.ENDPOINT}) does not answer; working offline for this process")
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries and subprocesses that read the variable themselves
    return bool(answered)


def _probe_hub(answered: list) -> None:
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_SECONDS)
    except urllib.error.HTTPError:
        pass  # an error status is still an answer
    except OSError:  # no route, refused, timed out, name not resolved
        return
    answered.append(True)


def from_pretrained_or_mirror(loader, model_id: str, revision: str | None = None, **kwargs):
    """`loader.from_pretrained(model_id)`, falling back to a local mirror of `model_id` when the Hub is unreachable."""
    hub_reachable()
    try:
        return loader.from_pretrained(model_id, revision=revision, **kwargs)
    except OSError:
        mirror = mirror_root() / model_id
        if not mirror.is_dir():
            raise
        logger.info(f"{model_id} is not reachable on the Hub; loading the local mirror {mirror}")
        return loader.from_pretrained(mirror, **kwargs)


class ASRConfig(PreTrainedConfig):
    r"""
    Configuration of [`ASRModel`]: a frozen Whisper encoder, a trained projector and a frozen decoder-only LLM.

    Args:
        audio_config (`dict` or `PreTrainedConfig`): the Whisper config whose encoder is used.
        text_config (`dict` or `PreTrainedConfig`): the LLM config.
        audio_model_id / text_model_id (`str`): Hub ids the frozen parts are loaded from; `None` for random init.
        audio_model_revision / text_model_revision (`str`): pinned revisions of those ids, when known.
        base_seed (`int`): seed of random base weights where an id is `None` (offline smoke models).
        projector_hidden_size (`int`): width of the projector's convolutions' output MLP (defaults to the LLM width).
        projector_init_scale (`float`): RMS of the projector output at initialisation (matched to the embeddings).
        projector_output (`str`): what the LLM gets from the projector: `"embeddings"`, its output as is, or
            `"ctc_tokens"`, the input embeddings of what the projector's CTC readout (`TokenReadout`, trained by the
            CTC warm-up) reads, token after token. The LLM stage then trains only LoRA (no gradient passes a reading).
        readout_spelling_buckets / readout_spelling_width (`int`): the `TokenReadout`'s class vector of a token adds,
            to the token's input embedding, a learned vector of its spelling (the token and its character 1- to
            4-grams, hashed into this many buckets of this width), so that a word heard a few times in training shares
            what it learns with words spelled alike. 0 buckets: the input embeddings alone.
        reading_beam_size (`int`): with a `TokenReadout`, 1 reads each clip greedily; more runs a CTC beam search of
            this width and keeps the reading whose CTC log probability, plus `reading_lm_weight` times its
            log-likelihood as text under the LLM, plus `reading_length_bonus` per token, is best.
        audio_token (`str`): placeholder the processor expands to one token per audio frame.
        audio_token_id (`int`): its id in the tokenizer (may lie outside the LLM's embedding table; never embedded).
        system_prompt / user_prompt (`str`): the chat prompt; `user_prompt` must contain `audio_token`.
        pad_audio_to_30s (`bool`): pad every clip to 30 s like Whisper (375 audio tokens); for comparisons only.
        max_new_tokens_per_second / min_new_tokens_cap (`float` / `int`): cap generated tokens by audio duration.
        chunk_length_s (`float`): the pipeline splits longer audio into pieces of at most this many seconds (at quiet
            points); a model trained on short clips transcribes pieces of about that length best. At most 30.
        loop_max_period / loop_min_repeats / loop_min_tokens (`int`): the pipeline's loop guard stops a transcript
            once a run of at most `loop_max_period` tokens, with a letter in it, repeats `loop_min_repeats` times in a
            row over at least `loop_min_tokens` tokens, and keeps one copy.
        lora_rank / lora_alpha / lora_dropout / lora_target_modules: optional LoRA adapters on the LLM (rank 0: none).
        trained_encoder_layers (`int`): the top N Whisper encoder layers (and its final layer norm) train too, to adapt
            the encoder to a new kind of speech; the layers below stay frozen (and cacheable).
        trained_weights_only (`bool`): the weights file holds only the trained weights; the bases are rebuilt from
            their ids or `base_seed` (set by `from_base_configs`).
    """

    model_type = "tiny_audio"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="whisper",
            init_kwargs={  # openai/whisper-large-v3-turbo
                "d_model": 1280,
                "encoder_layers": 32,
                "encoder_attention_heads": 20,
                "encoder_ffn_dim": 5120,
                "decoder_layers": 4,
                "decoder_attention_heads": 20,
                "decoder_ffn_dim": 5120,
                "num_mel_bins": 128,
                "vocab_size": 51866,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="smollm3",
            init_kwargs={  # HuggingFaceTB/SmolLM3-3B
                "hidden_size": 2048,
                "intermediate_size": 11008,
                "num_hidden_layers": 36,
                "num_attention_heads": 16,
                "num_key_value_heads": 4,
                "vocab_size": 128256,
                "max_position_embeddings": 65536,
                "rope_theta": 5_000_000.0,
                "rms_norm_eps": 1e-6,
                "tie_word_embeddings": True,
                "bos_token_id": 128000,
                "eos_token_id": 128012,
                "pad_token_id": 128004,
            },
        ),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_model_id: str | None = "openai/whisper-large-v3-turbo"
    audio_model_revision: str | None = None
    text_model_id: str | None = "HuggingFaceTB/SmolLM3-3B"
    text_model_revision: str | None = None
    base_seed: int | None = None
    projector_hidden_size: int | None = None
    projector_init_scale: float | None = None
    projector_output: str = "embeddings"
    readout_spelling_buckets: int = 0
    readout_spelling_width: int = 128
    reading_beam_size: int = 1
    reading_lm_weight: float = 0.3
    reading_length_bonus: float = 1.0
    audio_token: str = DEFAULT_AUDIO_TOKEN
    audio_token_id: int | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    user_prompt: str = DEFAULT_USER_PROMPT
    pad_audio_to_30s: bool = False
    max_new_tokens_per_second: float = 8.0
    min_new_tokens_cap: int = 16
    chunk_length_s: float = MAX_CHUNK_SECONDS
    loop_max_period: int = LOOP_MAX_PERIOD
    loop_min_repeats: int = LOOP_MIN_REPEATS
    loop_min_tokens: int = LOOP_MIN_TOKENS
    lora_rank: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    trained_encoder_layers: int = 0
    trained_weights_only: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_user_prompt(self.user_prompt, self.audio_token)
        if self.projector_hidden_size is None:
            self.projector_hidden_size = self.text_config.hidden_size
        if self.projector_output not in PROJECTOR_OUTPUTS:
            raise ValueError(f"projector_output must be one of {PROJECTOR_OUTPUTS}, got {self.projector_output!r}")
        if self.readout_spelling_buckets < 0 or self.readout_spelling_width < 1:
            raise ValueError(
                "readout_spelling_buckets must be >= 0 and readout_spelling_width >= 1, got "
                f"{self.readout_spelling_buckets} and {self.readout_spelling_width}"
            )
        if self.reading_beam_size < 1 or self.reading_lm_weight < 0:
            raise ValueError(
                "reading_beam_size must be >= 1 and reading_lm_weight >= 0, got "
                f"{self.reading_beam_size} and {self.reading_lm_weight}"
            )
        if not 0 <= self.trained_encoder_layers <= self.audio_config.encoder_layers:
            raise ValueError(
                f"trained_encoder_layers must lie in [0, {self.audio_config.encoder_layers}] (the encoder's depth), "
                f"got {self.trained_encoder_layers}"
            )
        if self.lora_target_modules is None:
            self.lora_target_modules = list(DEFAULT_LORA_TARGETS)
        check_chunk_length(self.chunk_length_s)

    @classmethod
    def from_base_configs(cls, audio_config, text_config, audio_token_id: int, **settings) -> "ASRConfig":
        """The complete config of a fresh model on these base models, checked once all its fields are known.

        `audio_config` / `text_config` are those of `audio_model_id` / `text_model_id`, or of random bases (ids
        `None`, `base_seed` set); `audio_token_id` is the placeholder's id in the processor's tokenizer. The bases can
        be rebuilt from the ids or the seed, so the weights file holds only the trained weights.
        """
        config = cls(
            audio_config=audio_config,
            text_config=text_config,
            audio_token_id=audio_token_id,
            trained_weights_only=True,
            **settings,
        )
        if config.base_seed is None and not (config.audio_model_id and config.text_model_id):
            raise ValueError("a base model without a Hub id needs `base_seed` so that it can be rebuilt on loading")
        return config

    def max_new_tokens_for(self, num_samples: int) -> int:
        """Cap on generated tokens for a clip, so a confused model cannot run away."""
        return int(self.min_new_tokens_cap + self.max_new_tokens_per_second * num_samples / SAMPLING_RATE)


__all__ = [
    "ASRConfig",
    "check_chunk_length",
    "check_user_prompt",
    "from_pretrained_or_mirror",
    "hub_reachable",
    "num_audio_tokens",
    "spoken_form",
]
