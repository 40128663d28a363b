"""Named model builds, each the `ASRConfig` settings it overrides: the reference build, the offline `tiny` builds and
the random `tiny-random` smoke build."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast, WhisperFeatureExtractor, set_seed

from configuration_asr import PROCESSOR_SETTINGS, ASRConfig, from_pretrained_or_mirror
from modeling_asr import ASRModel
from processing_asr import ASRProcessor

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BASE_MODEL_KEYS = ("audio_model_id", "audio_model_revision", "text_model_id", "text_model_revision")
TINY_RANDOM_WORDS = (
    "the a an and of to in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said each she which do their time if "
    "will way about many then them write would like so these her long make thing see him two has look more day could "
    "go come did number sound no most people my over know water than call first who may down side been now find"
).split()


TINY = {
    "audio_model_id": "openai/whisper-tiny.en",
    "text_model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "system_prompt": "Transcribe speech.",  # short: SmolLM2's template otherwise adds a long default
    "user_prompt": "<audio>",
    "projector_hidden_size": 2048,  # the width the README's `tiny` results were trained with
    "chunk_length_s": 8.0,  # pieces near the corpus's clip lengths: longer ones come out cut short (README)
}

# Whisper base: 6 encoder layers of width 512 instead of tiny.en's 4 x 384
TINY_BASE = {**TINY, "audio_model_id": "openai/whisper-base"}

MODEL_PRESETS = {
    "reference": {},
    "tiny": TINY,
    "tiny-base": TINY_BASE,
    # Whisper base, and the LLM reads the tokens that stage 0's CTC readout hears, so it copies them instead of writing
    # text of its own where the audio is unclear; with it, 15 s pieces read real speech best, the readout's class
    # vectors learn the tokens' spellings, and the LLM picks the likeliest text among 8 CTC readings (README)
    "tiny-base-tokens": {
        **TINY_BASE,
        "projector_output": "ctc_tokens",
        "chunk_length_s": 15.0,
        "readout_spelling_buckets": 32768,
        "reading_beam_size": 8,
    },
    "tiny-random": {
        "audio_model_id": None,
        "text_model_id": None,
        "system_prompt": "/no_think",
        "audio_config": {
            "model_type": "whisper",
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_layers": 1,
            "decoder_attention_heads": 4,
            "decoder_ffn_dim": 128,
            "num_mel_bins": 80,
            "max_source_positions": 1500,
        },
        "text_config": {
            "model_type": "smollm3",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 512,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            "initializer_range": 0.3,  # logits that depend on the input, so a projector can steer them
            "pad_token_id": 0,  # the ids of build_offline_tokenizer's special tokens
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    },
}


def build_offline_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with a ChatML chat template, trained in-process (no download)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [" ".join(TINY_RANDOM_WORDS[i:] + TINY_RANDOM_WORDS[:i]) for i in range(len(TINY_RANDOM_WORDS))]
    tokenizer.train_from_iterator(corpus + ["Transcribe the audio: system user assistant /no_think"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build(preset: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A fresh (untrained projector) model and its processor for a named preset; `dtype` is the bases' dtype.

    The tokenizer and the base configs come first, so that the `ASRConfig` is built complete, once.
    """
    settings = {**MODEL_PRESETS[preset], **overrides}
    set_seed(seed)
    if settings.get("audio_config") is not None:  # random bases, built from the configs the preset gives
        feature_extractor = WhisperFeatureExtractor(feature_size=settings["audio_config"]["num_mel_bins"])
        tokenizer = build_offline_tokenizer(settings["text_config"]["vocab_size"])
        settings["base_seed"] = seed
    else:
        feature_extractor, tokenizer = load_pretrained_bases(settings)
    processor = ASRProcessor(
        feature_extractor, tokenizer, **{key: settings[key] for key in PROCESSOR_SETTINGS if key in settings}
    )
    config = ASRConfig.from_base_configs(audio_token_id=processor.audio_token_id, **settings)
    model = ASRModel.from_base_models(config, dtype=dtype)
    model.generation_config.eos_token_id = processor.end_of_turn_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model, processor


def load_pretrained_bases(settings: dict):
    """Loads (Hub or mirror) the feature extractor and tokenizer of the settings' base model ids (the config's
    defaults where unset), and puts the bases' configs into `settings`."""
    ids = {key: settings.get(key, getattr(ASRConfig, key)) for key in BASE_MODEL_KEYS}
    audio = (ids["audio_model_id"], ids["audio_model_revision"])
    text = (ids["text_model_id"], ids["text_model_revision"])
    settings["audio_config"] = from_pretrained_or_mirror(AutoConfig, *audio)
    settings["text_config"] = from_pretrained_or_mirror(AutoConfig, *text)
    return from_pretrained_or_mirror(WhisperFeatureExtractor, *audio), from_pretrained_or_mirror(AutoTokenizer, *text)
