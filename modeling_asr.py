"""Tiny Audio speech-LLM: frozen Whisper encoder -> trained projector -> frozen decoder-only LLM."""

import copy
from contextlib import contextmanager
from functools import partial

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    GenerationMixin,
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
        HOP_LENGTH,
        MAX_FEATURE_FRAMES,
        ASRConfig,
        conv_output_length,
        from_pretrained_or_mirror,
    )
    from .pipeline_asr import ASRPipeline  # noqa: F401  (ships with the model; saved beside it)
except ImportError:
    from configuration_asr import (
        HOP_LENGTH,
        MAX_FEATURE_FRAMES,
        ASRConfig,
        conv_output_length,
        from_pretrained_or_mirror,
    )
    from pipeline_asr import ASRPipeline  # noqa: F401

logger = logging.get_logger(__name__)

HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder", "_commit_hash")
WEIGHTS_NAME = "model.safetensors"
# cuDNN's attention builds a new graph (~10 ms of CPU per call) for every sequence length it has not seen, and real
# clip lengths change with every batch: on an H100 that made a training step 5x slower. The other backends do not.
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# On a 2-core CPU, batch 8 of 32 clips (20 new tokens each) ran 1.18x faster prefilled clip by clip than as a padded
# batch at the reference widths (LLM 2048 wide, 2 + 2 layers), and 0.95x as fast on the `tiny` preset (576 wide).
CLIP_BY_CLIP_MIN_WIDTH = 1024


def onednn_available() -> bool:
    """An x86 CPU (AVX2 or AVX-512) and a PyTorch build with oneDNN's inner-product op."""
    x86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return x86 and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextmanager
def onednn_linear_layers(model: nn.Module):
    """While open, the model's float32 CPU `nn.Linear` layers compute through oneDNN instead of MKL's sgemm.

    MKL is slow at the few rows of a decoding step: on a 2-core AVX-512 CPU the reference build's 128k-vocabulary LM
    head took 172 ms for 8 rows in MKL and 53 ms in oneDNN (1 row: 56 vs 34 ms), to float32 rounding; with both
    libraries held to AVX2 the gap was the same. Only the layers' `forward` changes, so other ops pay nothing. Layers
    that already have their own `forward` (accelerate's hooks, an enclosing call) are left alone; all are restored on
    exit.
    """
    if not onednn_available():
        yield
        return
    layers = [
        module
        for module in model.modules()
        if type(module) is nn.Linear
        and "forward" not in vars(module)
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    ]
    for layer in layers:
        layer.forward = partial(onednn_linear, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def onednn_linear(layer: nn.Linear, input: torch.Tensor) -> torch.Tensor:
    """`layer(input)` through oneDNN; under autograd (the op has no backward) or for other inputs, plain `F.linear`."""
    if torch.is_grad_enabled() or type(input) is not torch.Tensor or input.dtype != torch.float32:
        return nn.functional.linear(input, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(input, layer.weight, layer.bias, "none", [], "")


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, max_length) boolean mask of valid positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def seeded(seed: int | None, build, config) -> nn.Module:
    """A randomly initialised base model that the same seed rebuilds exactly."""
    if seed is None:
        raise ValueError("a base model without a Hub id needs `base_seed` so that it can be rebuilt on loading")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(config)


class AudioProjector(nn.Module):
    """Two stride-2 convolutions (4x fewer frames), then Linear -> GELU -> Linear -> RMSNorm into the LLM's width."""

    def __init__(self, config: ASRConfig):
        super().__init__()
        audio_dim, llm_dim = config.audio_config.d_model, config.text_config.hidden_size
        self.conv1 = nn.Conv1d(audio_dim, audio_dim, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(audio_dim, audio_dim, kernel_size=3, stride=2, padding=1)
        self.linear1 = nn.Linear(audio_dim, config.projector_hidden_size)
        self.act = nn.GELU()
        self.linear2 = nn.Linear(config.projector_hidden_size, llm_dim)
        self.norm = nn.RMSNorm(llm_dim, eps=1e-6)

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, audio_dim) with valid lengths -> (batch, frames / 4, llm_dim) and their valid lengths."""
        hidden_states = hidden_states.to(self.conv1.weight.dtype).transpose(1, 2)
        for conv in (self.conv1, self.conv2):
            # Zero the padding so a clip's output does not depend on what it is batched with.
            hidden_states = hidden_states * lengths_to_mask(lengths, hidden_states.shape[-1])[:, None, :]
            hidden_states = nn.functional.gelu(conv(hidden_states))
            lengths = conv_output_length(lengths)
        hidden_states = self.linear2(self.act(self.linear1(hidden_states.transpose(1, 2))))
        return self.norm(hidden_states), lengths


class AudioLengthStoppingCriteria(StoppingCriteria):
    """Stops each sequence once it has generated its own cap of new tokens (set from its audio duration)."""

    def __init__(self, prompt_length: int, max_new_tokens: torch.Tensor):
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.max_new_tokens.to(input_ids.device)


class ASRPreTrainedModel(PreTrainedModel):
    config_class = ASRConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _keep_in_fp32_modules = ["projector"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["WhisperEncoderLayer"]


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
        self.audio_encoder = audio_encoder if audio_encoder is not None else WhisperEncoder(config.audio_config)
        self.projector = AudioProjector(config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        if config.lora_rank > 0:
            self._inject_lora()
        for module in self.trained_encoder_modules():
            module.float()  # trained weights stay float32 whatever the bases' dtype
        self.freeze_base_models()
        self.post_init()
        if not self.projector.norm.weight.is_meta:
            self.match_projector_scale()

    @classmethod
    def from_base_models(cls, config: ASRConfig, dtype: torch.dtype | str | None = None) -> "ASRModel":
        """A fresh model on the base models: the pretrained `config.audio_model_id` / `config.text_model_id`, or,
        where an id is `None`, random weights drawn from `config.base_seed` (for offline smoke tests).

        Either way the bases can be rebuilt, so saving it writes only the trained weights.
        """
        if not config.trained_weights_only:
            raise ValueError("a model on rebuildable base models needs a config from `ASRConfig.from_base_configs`")
        if config.audio_model_id:
            encoder = from_pretrained_or_mirror(
                WhisperModel, config.audio_model_id, config.audio_model_revision, dtype=dtype
            ).get_encoder()
        else:
            encoder = seeded(config.base_seed, WhisperEncoder, config.audio_config)
        if config.text_model_id:
            llm = from_pretrained_or_mirror(
                AutoModelForCausalLM, config.text_model_id, config.text_model_revision, dtype=dtype
            )
        else:
            llm = seeded(config.base_seed, AutoModelForCausalLM.from_config, config.text_config)
        return cls(config, audio_encoder=encoder, language_model=llm)

    # ----------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config: ASRConfig | None = None, **kwargs):
        """Loads a saved model; a checkpoint with only trained weights gets its base models from their Hub ids."""
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        if config is None:
            config = ASRConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if not config.trained_weights_only:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
            model.freeze_base_models()
            return model
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        model = cls.from_base_models(config, dtype=None if dtype == "auto" else dtype)
        weights_file = cached_file(pretrained_model_name_or_path, WEIGHTS_NAME, **hub_kwargs)
        model.load_trained_weights(load_file(weights_file))
        device_map = kwargs.get("device_map")
        if isinstance(device_map, (str, torch.device)) and device_map != "auto":
            model.to(device_map)
        return model.eval()

    def freeze_base_models(self) -> None:
        """Only the projector, LoRA adapters and `config.trained_encoder_layers` train; the rest stays frozen."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(self.is_trained_weight(name))

    @property
    def num_frozen_encoder_layers(self) -> int:
        """Encoder layers below the `config.trained_encoder_layers` trained ones: frozen, and what a cache holds."""
        return len(self.audio_encoder.layers) - self.config.trained_encoder_layers

    def trained_encoder_modules(self) -> list[nn.Module]:
        """The top `config.trained_encoder_layers` encoder layers and the final layer norm (none when 0)."""
        trained_layers = self.audio_encoder.layers[self.num_frozen_encoder_layers :]
        return [*trained_layers, self.audio_encoder.layer_norm] if len(trained_layers) else []

    def trained_encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of `trained_encoder_modules` (pretrained weights: they may want a lower learning rate)."""
        return [p for module in self.trained_encoder_modules() for p in module.parameters()]

    def audio_parameters(self) -> list[nn.Parameter]:
        """The trained parameters between the audio and the LLM: the projector and any trained encoder layers."""
        return [*self.projector.parameters(), *self.trained_encoder_parameters()]

    def is_trained_weight(self, name: str) -> bool:
        """Whether a state-dict key belongs to what this project trains, not to a frozen base model."""
        trained_encoder = [
            f"audio_encoder.layers.{i}." for i in range(self.num_frozen_encoder_layers, len(self.audio_encoder.layers))
        ]
        trained_encoder += ["audio_encoder.layer_norm."] if self.config.trained_encoder_layers else []
        return name.startswith(("projector.", *trained_encoder)) or "lora_" in name

    def load_trained_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Loads projector and adapter weights, refusing a checkpoint that lacks any of them."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        missing_trained = [key for key in missing if self.is_trained_weight(key)]
        if missing_trained or unexpected:
            raise ValueError(
                f"checkpoint does not match the model: missing trained weights {missing_trained}, "
                f"unexpected weights {list(unexpected)}"
            )

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Saves config, code and weights: only trained weights when the base models can be fetched again."""
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

    # ----------------------------------------------------------------- modules

    def add_lora_adapters(self, rank: int, alpha: int = 32, dropout: float = 0.0, target_modules=("q_proj", "v_proj")):
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

    @sdpa_kernel(ATTENTION_BACKENDS)
    def encode_audio_frozen(self, input_features: torch.Tensor, feature_lengths: torch.Tensor):
        """The frozen part of the encoder (convolutions, positions, all layers below the trained ones) on the real
        length of each clip: what an encoder cache holds. Padding inside a batch changes nothing.
        Mel features (batch, mels, frames) -> (batch, frames / 2, d_model) and valid lengths."""
        if input_features.shape[-1] > MAX_FEATURE_FRAMES:
            raise ValueError(
                f"audio clips are limited to 30 s ({MAX_FEATURE_FRAMES} feature frames), got {input_features.shape[-1]}; "
                "the pipeline splits longer audio"
            )
        encoder = self.audio_encoder
        features = input_features.to(encoder.conv1.weight.dtype)
        features = features * lengths_to_mask(feature_lengths, features.shape[-1])[:, None, :]
        hidden_states = nn.functional.gelu(encoder.conv1(features))
        hidden_states = hidden_states * lengths_to_mask(feature_lengths, hidden_states.shape[-1])[:, None, :]
        hidden_states = nn.functional.gelu(encoder.conv2(hidden_states)).transpose(1, 2)
        lengths = conv_output_length(feature_lengths)
        hidden_states = hidden_states + encoder.embed_positions.weight[: hidden_states.shape[1]]
        frozen_layers = encoder.layers[: self.num_frozen_encoder_layers]
        return self._run_encoder_layers(frozen_layers, hidden_states, lengths), lengths

    @sdpa_kernel(ATTENTION_BACKENDS)
    def encode_audio_trained(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The top `config.trained_encoder_layers` layers and the final layer norm, on `encode_audio_frozen`'s output."""
        encoder = self.audio_encoder
        hidden_states = hidden_states.to(encoder.layer_norm.weight.dtype)
        trained_layers = encoder.layers[self.num_frozen_encoder_layers :]
        return encoder.layer_norm(self._run_encoder_layers(trained_layers, hidden_states, lengths))

    @staticmethod
    def _run_encoder_layers(layers, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Whisper encoder layers, with each clip's padding masked out of attention."""
        attention_mask = None
        if len(layers) and (lengths < hidden_states.shape[1]).any():
            padding = ~lengths_to_mask(lengths, hidden_states.shape[1])
            attention_mask = torch.zeros(padding.shape, dtype=hidden_states.dtype, device=hidden_states.device)
            attention_mask = attention_mask.masked_fill(padding, torch.finfo(hidden_states.dtype).min)[:, None, None, :]
        for layer in layers:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states

    def get_audio_features(self, input_features=None, input_features_mask=None, mm_encoder_outputs=None):
        """Mel features (batch, mels, frames), or cached outputs of the frozen encoder layers
        `{"audio": (hidden_states, lengths)}`, -> projected audio embeddings (batch, tokens, llm_dim) and lengths."""
        if mm_encoder_outputs is not None:
            hidden_states, lengths = mm_encoder_outputs["audio"]
        else:
            if not torch.isfinite(input_features).all():
                raise ValueError("input_features contain NaN or Inf values; check the audio for corrupt samples")
            with torch.no_grad():
                hidden_states, lengths = self.encode_audio_frozen(input_features, input_features_mask.sum(-1))
        return self.projector(self.encode_audio_trained(hidden_states, lengths), lengths)

    def embed_prompt(self, input_ids, input_features=None, input_features_mask=None, mm_encoder_outputs=None):
        """Token embeddings of the prompt with the projected audio spliced in at the placeholder positions."""
        audio_positions = input_ids == self.config.audio_token_id
        # The placeholder may lie outside the LLM's vocabulary: it is never looked up, so no resizing is needed.
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(audio_positions, 0))
        if input_features is None and mm_encoder_outputs is None:
            if audio_positions.any():
                raise ValueError("input_ids contain audio placeholder tokens but no input_features were given")
            return inputs_embeds
        audio_embeds, audio_lengths = self.get_audio_features(input_features, input_features_mask, mm_encoder_outputs)
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
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, mels, frames)`): log-mel features, zero-padded.
        input_features_mask (`torch.LongTensor` of shape `(batch, frames)`): 1 on the real frames of each clip.
        mm_encoder_outputs (`dict`): `{"audio": (hidden_states, lengths)}` of a cached `encode_audio_frozen` run,
            instead of features.
        labels (`torch.LongTensor`): target ids, -100 everywhere but the transcript and its end-of-turn token. The LM
            head then runs only on those positions.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_prompt(input_ids, input_features, input_features_mask, mm_encoder_outputs)
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
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        ).last_hidden_state
        targets = labels[:, 1:].to(hidden_states.device)
        labelled = targets != -100
        logits = self.get_output_embeddings()(hidden_states[:, :-1][labelled]).float()
        loss = nn.functional.cross_entropy(logits, targets[labelled], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else labelled.sum().clamp(min=1))
        return CausalLMOutputWithPast(loss=loss)

    # ----------------------------------------------------------------- generation

    def prefills_clip_by_clip(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
        """Whether `generate` encodes and prefills each clip alone: on a CPU, for a batch of prompts of different
        lengths that end in text, with an LLM at least `CLIP_BY_CLIP_MIN_WIDTH` wide. Such a model is compute-bound
        there, so batching gains nothing and padding to the longest clip is wasted arithmetic; narrower models gain
        from the batch."""
        return (
            self.device.type == "cpu"
            and self.config.text_config.hidden_size >= CLIP_BY_CLIP_MIN_WIDTH
            and attention_mask is not None
            and not bool(attention_mask.all())
            and not bool((input_ids[:, -1] == self.config.audio_token_id).any())
        )

    def shared_prefix_length(self, input_ids: torch.Tensor, starts: list[int]) -> int:
        """How many tokens before the first audio placeholder every left-padded prompt (row `i` starting at
        `starts[i]`) begins with: the chat template's text before the audio, 0 when the prompts differ there."""
        first_prompt = input_ids[0, starts[0] :]
        length = int((first_prompt == self.config.audio_token_id).int().argmax())
        prefixes = [input_ids[row, start : start + length] for row, start in enumerate(starts)]
        return length if all(torch.equal(prefix, prefixes[0]) for prefix in prefixes) else 0

    @sdpa_kernel(ATTENTION_BACKENDS)
    def prefill_clip_by_clip(self, input_ids, attention_mask, input_features, input_features_mask) -> DynamicCache:
        """The KV cache of every prompt but its last token, merged into one left-padded batch cache; `generate` then
        runs the last prompt token and decodes the batch. The text before the audio, the same in every prompt, is
        prefilled once; after it, each clip is encoded and prefilled alone, at its own length."""
        width = input_ids.shape[1] - 1
        decoder, text_config = self.language_model.get_decoder(), self.language_model.config
        starts = (width + 1 - attention_mask.sum(-1)).tolist()
        prefix_length = self.shared_prefix_length(input_ids, starts)
        prefix = DynamicCache(config=text_config)
        if prefix_length:
            prefix_embeds = self.get_input_embeddings()(input_ids[:1, starts[0] : starts[0] + prefix_length])
            decoder(inputs_embeds=prefix_embeds, cache=prefix, use_cache=True)
        caches = []
        for row, (start, frames) in enumerate(zip(starts, input_features_mask.sum(-1).tolist())):
            inputs_embeds = self.embed_prompt(
                input_ids[row : row + 1, start + prefix_length : width],
                input_features[row : row + 1, :, :frames],
                input_features_mask[row : row + 1, :frames],
            )
            caches.append(copy.deepcopy(prefix))
            decoder(inputs_embeds=inputs_embeds, cache=caches[-1], use_cache=True)

        def left_padded(states: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([nn.functional.pad(state, (0, 0, width - state.shape[2], 0)) for state in states])

        merged = DynamicCache(config=text_config)
        for index in range(len(caches[0].layers)):
            layers = [cache.layers[index] for cache in caches]
            merged.update(
                left_padded([layer.keys for layer in layers]), left_padded([layer.values for layer in layers]), index
            )
        return merged

    @torch.no_grad()
    def generate(self, input_ids=None, input_features=None, input_features_mask=None, attention_mask=None, **kwargs):
        """Greedy decoding with the KV cache; each clip's new tokens are capped by its duration unless
        `max_new_tokens` is given. Returns prompt + generated ids, like any decoder-only `generate`. On CPU a wide model
        prefills a batch clip by clip (`prefills_clip_by_clip`), and float32 linear layers run through oneDNN
        (`onednn_linear_layers`)."""
        if input_features_mask is not None and "max_new_tokens" not in kwargs:
            num_samples = input_features_mask.sum(-1).cpu() * HOP_LENGTH
            caps = torch.tensor([self.config.max_new_tokens_for(int(n)) for n in num_samples])
            kwargs["max_new_tokens"] = int(caps.max())
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [*kwargs.get("stopping_criteria", []), AudioLengthStoppingCriteria(input_ids.shape[1], caps)]
            )
        with onednn_linear_layers(self):
            if (
                input_features is not None
                and "cache" not in kwargs
                and self.prefills_clip_by_clip(input_ids, attention_mask)
            ):
                kwargs["cache"] = self.prefill_clip_by_clip(
                    input_ids, attention_mask, input_features, input_features_mask
                )
            else:
                kwargs.update(input_features=input_features, input_features_mask=input_features_mask)
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


ASRConfig.register_for_auto_class()
ASRModel.register_for_auto_class("AutoModel")

__all__ = ["ASRModel", "ASRPreTrainedModel", "AudioProjector"]
