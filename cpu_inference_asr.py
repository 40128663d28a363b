"""CPU inference for the Tiny Audio speech-LLM: float32 linear layers through oneDNN, and clip-by-clip prefill.

Neither changes the tokens; both only change how a CPU spends its time. Shipped beside `modeling_asr.py`, which
imports it, so it needs nothing but torch and transformers.
"""

import copy
import threading
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from transformers import DynamicCache

# Below this LLM width a CPU gains from batching the prefill; at and above it, padding to the longest clip costs more
# than the batch saves (the measurements are in the README).
CLIP_BY_CLIP_MIN_WIDTH = 1024

_onednn = threading.local()  # `enabled`: whether the routed layers use oneDNN in this thread
_install_lock = threading.Lock()


def onednn_available() -> bool:
    """An x86 CPU (AVX2 or AVX-512) and a PyTorch build with oneDNN's (private) inner-product op."""
    x86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return x86 and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextmanager
def onednn_linear_layers(model: nn.Module):
    """While open, in this thread only, the model's float32 CPU `nn.Linear` layers compute through oneDNN instead of
    MKL's sgemm, which is slow at the few rows of a decoding step (the results agree to float32 rounding).

    The first call gives each plain float32 CPU `nn.Linear` a `forward` that consults a thread-local switch, and
    leaves it in place: swapping `forward` on shared layers for each call would race between threads generating at
    once. Layers with a `forward` of their own (accelerate's hooks) are left alone. Other threads, and this one after
    the block, compute with `F.linear` as before.
    """
    if not onednn_available():
        yield
        return
    _install_routing(model)
    previous = getattr(_onednn, "enabled", False)
    _onednn.enabled = True
    try:
        yield
    finally:
        _onednn.enabled = previous


def _install_routing(model: nn.Module) -> None:
    """Gives the eligible layers their routed `forward`, once; the lock keeps two first calls from interleaving."""
    with _install_lock:
        for module in model.modules():
            if (
                type(module) is nn.Linear
                and "forward" not in vars(module)
                and module.weight.dtype == torch.float32
                and module.weight.device.type == "cpu"
            ):
                module.forward = partial(routed_linear, module)


def routed_linear(layer: nn.Linear, input: torch.Tensor) -> torch.Tensor:
    """`layer(input)` through oneDNN where this thread asked for it and the op applies; otherwise plain `F.linear`
    (under autograd, since the op has no backward, and for other dtypes, devices or tensor subclasses)."""
    weight = layer.weight
    if (
        not getattr(_onednn, "enabled", False)
        or torch.is_grad_enabled()
        or type(input) is not torch.Tensor
        or input.dtype != torch.float32
        or weight.dtype != torch.float32
        or weight.device.type != "cpu"
        or input.device.type != "cpu"
    ):
        return nn.functional.linear(input, weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(input, weight, layer.bias, "none", [], "")


def prefills_clip_by_clip(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, min_width: int = CLIP_BY_CLIP_MIN_WIDTH
) -> bool:
    """Whether `generate` should encode and prefill each clip alone: on a CPU, for a batch of prompts of different
    lengths that end in text, with an LLM at least `min_width` wide. Such a model is compute-bound there, so batching
    gains nothing and padding to the longest clip is wasted arithmetic; narrower models gain from the batch."""
    return (
        model.device.type == "cpu"
        and model.config.text_config.hidden_size >= min_width
        and attention_mask is not None
        and not bool(attention_mask.all())
        and not bool((input_ids[:, -1] == model.config.audio_token_id).any())
    )


def shared_prefix_length(input_ids: torch.Tensor, starts: list[int], audio_token_id: int) -> int:
    """How many tokens before the first audio placeholder every left-padded prompt (row `i` starting at `starts[i]`)
    begins with: the chat template's text before the audio, 0 when the prompts differ there."""
    first_prompt = input_ids[0, starts[0] :]
    length = int((first_prompt == audio_token_id).int().argmax())
    prefixes = [input_ids[row, start : start + length] for row, start in enumerate(starts)]
    return length if all(torch.equal(prefix, prefixes[0]) for prefix in prefixes) else 0


def prefill_clip_by_clip(
    model, input_ids, attention_mask, input_features, input_features_mask, reading_ids=None
) -> DynamicCache:
    """The KV cache of every prompt but its last token, merged into one left-padded batch cache; `generate` then
    runs the last prompt token and decodes the batch. The text before the audio, the same in every prompt, is
    prefilled once; after it, each clip is encoded and prefilled alone, at its own length (a `TokenReadout` model's
    clips: their `reading_ids`)."""
    width = input_ids.shape[1] - 1
    decoder, text_config = model.language_model.get_decoder(), model.language_model.config
    starts = (width + 1 - attention_mask.sum(-1)).tolist()
    prefix_length = shared_prefix_length(input_ids, starts, model.config.audio_token_id)
    prefix = DynamicCache(config=text_config)
    if prefix_length:
        prefix_embeds = model.get_input_embeddings()(input_ids[:1, starts[0] : starts[0] + prefix_length])
        decoder(inputs_embeds=prefix_embeds, cache=prefix, use_cache=True)
    caches = []
    for row, (start, frames) in enumerate(zip(starts, input_features_mask.sum(-1).tolist())):
        inputs_embeds = model.embed_prompt(
            input_ids[row : row + 1, start + prefix_length : width],
            input_features[row : row + 1, :, :frames],
            input_features_mask[row : row + 1, :frames],
            reading_ids=None if reading_ids is None else reading_ids[row : row + 1],
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
