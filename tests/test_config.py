"""ASRConfig is built complete in one go, and the processor shares its prompt defaults and prompt check."""

import pytest

from configuration_asr import PROCESSOR_SETTINGS, ASRConfig
from modeling_asr import ASRModel
from processing_asr import ASRProcessor
from tiny_audio.presets import MODEL_PRESETS, build


def test_built_config_is_complete_and_loading_the_bases_changes_nothing(tiny_random):
    model, processor = tiny_random
    config = model.config
    assert config.trained_weights_only and config.base_seed == 0
    assert config.audio_token_id == processor.audio_token_id
    assert config.audio_config.d_model == MODEL_PRESETS["tiny-random"]["audio_config"]["d_model"]
    for key in PROCESSOR_SETTINGS:
        assert getattr(config, key) == getattr(processor, key), key
    before = config.to_dict()
    ASRModel.from_base_models(config)
    assert config.to_dict() == before


def test_from_base_configs_refuses_bases_that_cannot_be_rebuilt():
    settings = MODEL_PRESETS["tiny-random"]
    with pytest.raises(ValueError, match="needs `base_seed`"):
        ASRConfig.from_base_configs(audio_token_id=5, **settings)
    config = ASRConfig.from_base_configs(audio_token_id=5, base_seed=3, **settings)
    assert (config.audio_token_id, config.base_seed, config.trained_weights_only) == (5, 3, True)


def test_from_base_models_needs_a_config_built_for_it():
    config = ASRConfig(**MODEL_PRESETS["tiny-random"], base_seed=0, audio_token_id=5)
    with pytest.raises(ValueError, match="ASRConfig.from_base_configs"):
        ASRModel.from_base_models(config)


def test_build_overrides_reach_the_config_and_the_processor():
    model, processor = build("tiny-random", seed=4, system_prompt="be brief", pad_audio_to_30s=True)
    assert model.config.system_prompt == processor.system_prompt == "be brief"
    assert model.config.pad_audio_to_30s and processor.pad_audio_to_30s
    assert model.config.base_seed == 4 and model.config.audio_token_id == processor.audio_token_id


def test_processor_defaults_are_the_config_defaults(tiny_random):
    _, processor = tiny_random
    default = ASRProcessor(processor.feature_extractor, processor.tokenizer)
    config = ASRConfig()
    for key in PROCESSOR_SETTINGS:
        assert getattr(default, key) == getattr(config, key), key
    assert default.system_prompt == "/no_think" and "/no_think" in default.prompt


def test_config_and_processor_reject_a_prompt_without_placeholder_alike(tiny_random):
    _, processor = tiny_random
    settings = {"audio_token": "<clip>", "user_prompt": "Hi <audio>"}
    messages = []
    for make in (
        lambda: ASRConfig(**settings),
        lambda: ASRProcessor(processor.feature_extractor, processor.tokenizer, **settings),
    ):
        with pytest.raises(ValueError) as error:
            make()
        messages.append(str(error.value))
    assert messages == ["user_prompt 'Hi <audio>' must contain the audio placeholder '<clip>'"] * 2


def test_chunk_length_is_checked_and_the_tiny_presets_match_their_corpus():
    for bad in (45, 0.5):
        with pytest.raises(ValueError, match=rf"chunk_length_s must lie in \[1, 30\] seconds, got {bad}"):
            ASRConfig(chunk_length_s=bad)
    assert ASRConfig().chunk_length_s == 30
    assert MODEL_PRESETS["tiny"]["chunk_length_s"] == MODEL_PRESETS["tiny-base"]["chunk_length_s"] == 8
    assert MODEL_PRESETS["tiny-base-tokens"]["chunk_length_s"] == 15


def test_unknown_projector_output_is_a_clear_error():
    with pytest.raises(ValueError, match="projector_output must be one of"):
        ASRConfig(projector_output="logits")


@pytest.mark.parametrize("settings", [{"readout_spelling_buckets": -1}, {"readout_spelling_width": 0}])
def test_impossible_spelling_vectors_are_a_clear_error(settings):
    with pytest.raises(ValueError, match="readout_spelling_buckets must be >= 0 and readout_spelling_width >= 1"):
        ASRConfig(**settings)


@pytest.mark.parametrize("settings", [{"reading_beam_size": 0}, {"reading_lm_weight": -0.5}])
def test_impossible_reading_search_is_a_clear_error(settings):
    with pytest.raises(ValueError, match="reading_beam_size must be >= 1 and reading_lm_weight >= 0"):
        ASRConfig(**settings)
    assert ASRConfig().reading_beam_size == 1  # greedy unless a model asks for the search
