"""ASRConfig, ASRModel and ASRProcessor: token counts, splicing, loss, freezing, generation, save/load."""

import json
import math
import textwrap
import threading

import pytest
import torch
from conftest import noise, run_like_a_user
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoProcessor, GenerationConfig, TextIteratorStreamer

import cpu_inference_asr
from configuration_asr import ASRConfig, num_audio_tokens
from cpu_inference_asr import onednn_available, onednn_linear_layers, prefills_clip_by_clip
from modeling_asr import ASRModel
from processing_asr import IGNORE_INDEX, ASRProcessor
from tiny_audio.presets import CHATML_TEMPLATE, build, build_offline_tokenizer

LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_audio_token_count_agrees_between_processor_and_model(tiny_random):
    """One definition of samples -> audio tokens: the processor's placeholders match the model's projector output,
    swept from 0.05 s to 30 s with odd sample counts, all in one padded batch."""
    model, processor = tiny_random
    lengths = [
        800,
        801,
        1599,
        1600,
        1601,
        3333,
        8000,
        16001,
        24_017,
        64_000,
        99_999,
        160_003,
        320_001,
        479_999,
        480_000,
    ]
    clips = [noise(n / 16_000, seed=n) for n in lengths]
    batch = processor(audio=clips)
    placeholders = (batch["input_ids"] == processor.audio_token_id).sum(-1)
    with torch.no_grad():
        _, model_lengths = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
    assert placeholders.tolist() == model_lengths.tolist()
    assert placeholders.tolist() == [num_audio_tokens(n) for n in lengths]
    assert num_audio_tokens(4 * 16_000) == 50  # 12.5 audio tokens per second, not 750
    assert num_audio_tokens(30 * 16_000) == 375
    assert num_audio_tokens(4 * 16_000, pad_audio_to_30s=True) == 375  # padded: every clip costs 30 s


def test_padding_inside_a_batch_changes_nothing(tiny_random):
    model, processor = tiny_random
    short, long = noise(1.3, seed=1), noise(4.7, seed=2)
    with torch.no_grad():
        alone = processor(audio=[short])
        batch = processor(audio=[short, long])
        embeds_alone, n_alone = model.get_audio_features(alone["input_features"], alone["input_features_mask"])
        embeds_batch, n_batch = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
    assert n_alone[0] == n_batch[0]
    torch.testing.assert_close(embeds_batch[0, : n_alone[0]], embeds_alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("template", "assistant_header", "end_of_turn"),
    [
        (CHATML_TEMPLATE, "<|im_start|>assistant\n", "<|im_end|>"),
        (LLAMA3_TEMPLATE, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ],
)
def test_prompts_and_labels_with_different_chat_templates(tiny_random, template, assistant_header, end_of_turn):
    tokenizer = build_offline_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]}
    )
    feature_extractor = tiny_random[1].feature_extractor
    processor = ASRProcessor(feature_extractor, tokenizer, chat_template=template, system_prompt="be brief")
    assert processor.prompt.endswith(assistant_header) and "be brief" in processor.prompt
    assert processor.tokenizer.convert_ids_to_tokens(processor.end_of_turn_token_id) == end_of_turn
    train = processor(audio=[noise(2.0)], text=["one two"])
    infer = processor(audio=[noise(2.0)])
    prompt_length = infer["input_ids"].shape[1]
    assert torch.equal(train["input_ids"][0, :prompt_length], infer["input_ids"][0])
    target = train["input_ids"][0, prompt_length:]
    assert torch.equal(train["labels"][0, prompt_length:], target)
    assert target[-1] == processor.end_of_turn_token_id
    assert processor.tokenizer.decode(target[:-1]) == "one two"
    assert (infer["input_ids"] == processor.audio_token_id).sum() == num_audio_tokens(32_000)


def test_training_prompt_is_exactly_the_inference_prompt(tiny_random):
    _, processor = tiny_random
    train = processor(audio=[noise(1.0)], text=["seven eight"])
    infer = processor(audio=[noise(1.0)])
    prompt_length = infer["input_ids"].shape[1]
    assert torch.equal(train["input_ids"][0, :prompt_length], infer["input_ids"][0])
    assert (train["labels"][0, :prompt_length] == IGNORE_INDEX).all()
    assert (train["labels"][0, prompt_length:] != IGNORE_INDEX).all()


def test_loss_uses_the_lm_head_only_on_labelled_positions(tiny_random):
    model, processor = tiny_random
    batch = processor(audio=[noise(2.0), noise(3.1)], text=["one two three", "four"])
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        loss = model(**batch).loss
    finally:
        hook.remove()
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert rows == [torch.Size([labelled, model.config.text_config.hidden_size])]
    assert torch.isfinite(loss)


def test_only_the_projector_trains_and_frozen_parts_stay_in_eval_mode(tiny_random):
    model, processor = tiny_random
    model.train()
    try:
        assert not model.audio_encoder.training and not model.language_model.training
        assert model.projector.training
        trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"projector"}
        batch = processor(audio=[noise(1.5)], text=["five six"])
        model(**batch).loss.backward()
        assert model.projector.linear1.weight.grad is not None
        assert all(p.grad is None for p in model.audio_encoder.parameters())
        assert all(p.grad is None for p in model.language_model.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_projector_output_scale_matches_token_embeddings(tiny_random):
    model, processor = tiny_random
    batch = processor(audio=[noise(2.0)])
    with torch.no_grad():
        audio_embeds, _ = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
    embedding_rms = model.get_input_embeddings().weight.pow(2).mean(-1).sqrt().mean()
    audio_rms = audio_embeds.pow(2).mean(-1).sqrt().mean()
    assert 0.5 < float(audio_rms / embedding_rms) < 2.0


def test_reference_architecture_on_meta_device():
    """The real whisper-large-v3-turbo + SmolLM3-3B widths (no download): projector shapes and parameter count."""
    config = ASRConfig(audio_token_id=128_256)
    with torch.device("meta"):
        model = ASRModel(config)
    projector = model.projector
    assert projector.conv1.weight.shape == (1280, 1280, 3) and projector.conv2.weight.shape == (1280, 1280, 3)
    assert projector.linear1.weight.shape == (2048, 1280) and projector.linear2.weight.shape == (2048, 2048)
    assert projector.norm.weight.shape == (2048,)
    assert sum(p.numel() for p in projector.parameters()) == 16_654_848
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 16_654_848
    assert model.config.text_config.vocab_size == 128_256 and model.config.audio_config.num_mel_bins == 128


def test_batched_generation_equals_one_at_a_time(tiny_random):
    model, processor = tiny_random
    clips = [noise(s, seed=i) for i, s in enumerate((0.4, 2.3, 5.0, 1.1))]
    kwargs = {"eos_token_id": processor.end_of_turn_token_id, "pad_token_id": processor.tokenizer.pad_token_id}
    batch = processor(audio=clips)
    together = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for row, clip in enumerate(clips):
        single = processor(audio=[clip])
        alone = model.generate(**single, **kwargs)[0, single["input_ids"].shape[1] :]
        expected = together[row][: alone.numel()]
        assert torch.equal(alone, expected)
        assert (together[row][alone.numel() :] == processor.tokenizer.pad_token_id).all()


def test_cpu_batch_of_a_wide_model_is_prefilled_clip_by_clip_without_padding(tiny_random):
    """On CPU a wide model prefills the text before the audio once, then each clip's encoder and prefill run at its
    own length (padding would be wasted arithmetic); the batch then decodes together, with the tokens of the padded
    batched prefill, which narrow models keep (they gain from the batch)."""
    model, processor = tiny_random
    batch = processor(audio=[noise(2.1), noise(0.4, seed=1), noise(1.2, seed=2)])
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4, "pad_token_id": 0}
    shapes = []

    def record(module, args, kwargs):
        shapes.append(tuple(kwargs["inputs_embeds"].shape[:2]))

    def generate_recording_prefill_shapes(**extra):
        shapes.clear()
        hook = model.language_model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
        try:
            return model.generate(**batch, **kwargs, **extra)
        finally:
            hook.remove()

    padded_length = batch["input_ids"].shape[1]
    batched = generate_recording_prefill_shapes()
    assert shapes == [(3, padded_length)] + [(3, 1)] * 3  # tiny-random is 64 wide
    clip_by_clip = generate_recording_prefill_shapes(clip_by_clip_min_width=model.config.text_config.hidden_size)
    text_before_audio = processor.prompt.split(processor.audio_token)[0]
    prefix = len(processor.tokenizer(text_before_audio, add_special_tokens=False)["input_ids"])
    prompt_lengths = batch["attention_mask"].sum(-1).tolist()
    assert prefix > 0
    assert shapes == [(1, prefix)] + [(1, length - prefix - 1) for length in prompt_lengths] + [(3, 1)] * 4
    assert torch.equal(clip_by_clip, batched)


def test_prompts_ending_in_audio_keep_the_padded_batch_prefill(tiny_random):
    """Clip-by-clip prefill leaves the last prompt token to `generate`; a prompt that ends in audio keeps the padded
    batch instead of failing."""
    model, processor = tiny_random
    plain = ASRProcessor(
        processor.feature_extractor, processor.tokenizer, chat_template="{{ messages[-1]['content'] }}"
    )
    batch = plain(audio=[noise(1.4), noise(0.5, seed=1)])
    assert (batch["input_ids"][:, -1] == plain.audio_token_id).all()
    assert not prefills_clip_by_clip(model, batch["input_ids"], batch["attention_mask"], min_width=0)
    generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, pad_token_id=0, clip_by_clip_min_width=0)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 3)


def test_several_sequences_per_clip_keep_the_padded_batch_prefill(tiny_random):
    """`generate` does not widen a cache it is given into beams or returned sequences, so a wide model on a CPU
    prefills those from the padded batch."""
    model, processor = tiny_random
    batch = processor(audio=[noise(1.4), noise(0.5, seed=1)])
    kwargs = {"max_new_tokens": 3, "min_new_tokens": 3, "pad_token_id": 0, "clip_by_clip_min_width": 0}
    sampled = model.generate(**batch, **kwargs, do_sample=True, num_return_sequences=2)
    beams = model.generate(**batch, **kwargs, num_beams=2, num_return_sequences=2)
    assert sampled.shape == beams.shape == (4, batch["input_ids"].shape[1] + 3)


def test_attention_stays_off_cudnn_whose_graphs_are_rebuilt_per_length(tiny_random):
    """cuDNN attention plans again for every new sequence length, and every batch brings new clip lengths."""
    model, processor = tiny_random
    seen = []

    def record(module, args):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())

    hooks = [model.audio_encoder.layers[0].register_forward_pre_hook(record)]
    hooks.append(model.language_model.get_decoder().layers[0].register_forward_pre_hook(record))
    try:
        batch = processor(audio=[noise(1.3)], text=["hello"])
        model(**batch)
        model.generate(**processor(audio=[noise(0.7)]), max_new_tokens=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) >= 4 and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # only the model's own calls are affected


@pytest.mark.skipif(not onednn_available(), reason="needs an x86 CPU with oneDNN (the routing is off elsewhere)")
def test_cpu_generation_runs_linear_layers_through_onednn(tiny_random, monkeypatch):
    """MKL's float32 sgemm is slow at decoding's few rows, so oneDNN computes them; the tokens must not change, and
    outside `generate` the layers compute with `F.linear` again."""
    model, processor = tiny_random
    batch = processor(audio=[noise(1.2), noise(0.6, seed=1)])
    kwargs = {"max_new_tokens": 5, "eos_token_id": -1, "pad_token_id": 0}
    with torch.profiler.profile() as profile:
        routed = model.generate(**batch, **kwargs)
    ops = {event.name for event in profile.events()}
    assert "mkldnn::_linear_pointwise" in ops and "aten::linear" not in ops
    with torch.profiler.profile() as profile, torch.no_grad():
        model(**batch)
    ops = {event.name for event in profile.events()}
    assert "aten::linear" in ops and "mkldnn::_linear_pointwise" not in ops
    monkeypatch.setattr(cpu_inference_asr, "onednn_available", lambda: False)
    assert torch.equal(routed, model.generate(**batch, **kwargs))


@pytest.mark.skipif(not onednn_available(), reason="needs an x86 CPU with oneDNN (the routing is off elsewhere)")
def test_onednn_layers_match_f_linear_and_leave_autograd_bfloat16_and_hooked_layers_alone():
    model = nn.ModuleDict(
        {"routed": nn.Linear(64, 96), "bf16": nn.Linear(64, 96).bfloat16(), "hooked": nn.Linear(8, 8)}
    )
    model["hooked"].forward = hooked = lambda input: input  # like accelerate's hooks
    last_position = torch.randn(3, 7, 64)[:, -1:]  # a strided slice, as the LM head gets it
    expected = model["routed"](last_position)
    with onednn_linear_layers(model):
        with torch.no_grad(), torch.profiler.profile() as profile:
            torch.testing.assert_close(model["routed"](last_position), expected)
        assert "mkldnn::_linear_pointwise" in {event.name for event in profile.events()}
        assert "forward" in vars(model["routed"]) and "forward" not in vars(model["bf16"])
        assert model["hooked"].forward is hooked
        model["routed"](last_position).square().sum().backward()  # autograd on: plain F.linear
    assert model["routed"].weight.grad.abs().sum() > 0
    assert model["hooked"].forward is hooked
    with torch.no_grad(), torch.profiler.profile() as profile:  # after the block: plain F.linear again
        torch.testing.assert_close(model["routed"](last_position), expected)
    assert "mkldnn::_linear_pointwise" not in {event.name for event in profile.events()}


def test_threads_generating_at_once_get_the_tokens_of_one_after_the_other(tiny_random):
    """The CPU routing is shared by the layers of one model; two threads generating at once (one padded batch, one
    prefilled clip by clip) must not disturb each other, round after round."""
    model, processor = tiny_random
    kwargs = {"max_new_tokens": 6, "eos_token_id": -1, "pad_token_id": 0}
    jobs = [
        (processor(audio=[noise(1.1, seed=3), noise(0.5, seed=4)]), {}),
        (processor(audio=[noise(2.4, seed=5), noise(0.8, seed=6)]), {"clip_by_clip_min_width": 0}),
    ]
    expected = [model.generate(**batch, **kwargs, **extra) for batch, extra in jobs]
    for _ in range(6):
        start, results, errors = threading.Barrier(len(jobs)), [None] * len(jobs), []

        def transcribe(index, start=start, results=results, errors=errors):
            batch, extra = jobs[index]
            try:
                start.wait()
                results[index] = model.generate(**batch, **kwargs, **extra)
            except Exception as error:  # re-raised in the main thread below
                errors.append(error)

        threads = [threading.Thread(target=transcribe, args=(index,)) for index in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for result, tokens in zip(results, expected):
            assert torch.equal(result, tokens)


@pytest.mark.skipif(not onednn_available(), reason="needs an x86 CPU with oneDNN (the routing is off elsewhere)")
def test_onednn_routing_holds_only_in_the_thread_that_asked_for_it():
    """A thread generating must not change how the shared layers compute for another thread."""
    layer, input = nn.Linear(64, 96), torch.randn(2, 64)
    entered, finished = threading.Event(), threading.Event()

    def generating_thread():
        with onednn_linear_layers(layer):
            entered.set()
            finished.wait(timeout=60)

    holder = threading.Thread(target=generating_thread)
    holder.start()
    try:
        assert entered.wait(timeout=60)
        with torch.no_grad(), torch.profiler.profile() as profile:
            layer(input)
    finally:
        finished.set()
        holder.join()
    ops = {event.name for event in profile.events()}
    assert "aten::linear" in ops and "mkldnn::_linear_pointwise" not in ops


def test_new_tokens_are_capped_by_audio_duration(tiny_random):
    model, processor = tiny_random
    batch = processor(audio=[noise(1.0)])
    generated = model.generate(**batch, eos_token_id=-1, pad_token_id=0)  # a model that never stops
    assert generated.shape[1] - batch["input_ids"].shape[1] == model.config.max_new_tokens_for(16_000)


def test_a_length_the_caller_sets_replaces_the_duration_cap(tiny_random, monkeypatch):
    model, processor = tiny_random
    batch = processor(audio=[noise(1.0)])
    prompt_length, cap = batch["input_ids"].shape[1], model.config.max_new_tokens_for(16_000)
    never_stops = {"eos_token_id": -1, "pad_token_id": 0}

    def new_tokens(**kwargs) -> int:
        return model.generate(**batch, **kwargs).shape[1] - prompt_length

    assert new_tokens(max_new_tokens=cap + 5, **never_stops) == cap + 5
    assert new_tokens(max_length=prompt_length + 3, **never_stops) == 3
    assert new_tokens(generation_config=GenerationConfig(max_new_tokens=cap + 5, **never_stops)) == cap + 5
    assert new_tokens(generation_config=GenerationConfig(max_new_tokens=3, **never_stops)) == 3
    monkeypatch.setattr(model.generation_config, "max_new_tokens", 3)
    assert new_tokens(**never_stops) == 3


def test_generate_streams_text(tiny_random):
    model, processor = tiny_random
    batch = processor(audio=[noise(1.0)])
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True)
    generated = model.generate(**batch, streamer=streamer, eos_token_id=-1, pad_token_id=0)
    streamed = "".join(streamer)
    new_text = processor.tokenizer.decode(generated[0, batch["input_ids"].shape[1] :])
    assert streamed == new_text and streamed


def _outputs(model, processor):
    batch = processor(audio=[noise(1.7, seed=5)], text=["one two"])
    with torch.no_grad():
        return model(**batch).loss


def test_save_and_reload_holds_only_trained_weights_and_reproduces_outputs(tmp_path, tiny_random):
    model, processor = tiny_random
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == {
        name for name, _ in model.named_parameters() if name.startswith("projector.")
    }
    assert {"modeling_asr.py", "cpu_inference_asr.py", "pipeline_asr.py"} <= {path.name for path in tmp_path.iterdir()}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSpeechSeq2Seq"] == "modeling_asr.ASRModel"
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"] == "pipeline_asr.ASRPipeline"
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert AutoConfig.from_pretrained(tmp_path, trust_remote_code=True).model_type == "tiny_audio"
    torch.testing.assert_close(_outputs(reloaded, reloaded_processor), _outputs(model, processor))


@pytest.mark.slow
def test_a_saved_model_loads_without_the_pipelines_audio_packages(tmp_path, tiny_random):
    """`AutoModel` needs the model's files only: soundfile and soxr are for the pipeline's audio decoding."""
    tiny_random[0].save_pretrained(tmp_path / "model")
    script = textwrap.dedent(
        """
        import sys
        sys.modules.update(soundfile=None, soxr=None)  # as if not installed: imports fail, find_spec says absent
        from transformers import AutoModel
        model = AutoModel.from_pretrained("model", trust_remote_code=True)
        assert type(model).__name__ == "ASRModel"
        assert not any(name.split(".")[-1] == "pipeline_asr" for name in sys.modules)
        print("OK")
        """
    )
    run_like_a_user(script, tmp_path)


def test_loading_trained_weights_passes_loader_keywords_to_the_bases(tmp_path, tiny_random):
    model, processor = tiny_random
    model.save_pretrained(tmp_path)
    eager = ASRModel.from_pretrained(tmp_path, attn_implementation="eager", device_map="cpu", local_files_only=True)
    assert eager.language_model.config._attn_implementation == "eager"
    assert eager.audio_encoder.config._attn_implementation == "eager"
    assert model.language_model.config._attn_implementation == "sdpa"  # the default that it replaced
    torch.testing.assert_close(_outputs(eager, processor), _outputs(model, processor))


def test_loading_trained_weights_refuses_keywords_it_cannot_honour(tmp_path, tiny_random):
    tiny_random[0].save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"cannot honour \['output_loading_info'\]"):
        ASRModel.from_pretrained(tmp_path, output_loading_info=True)
    with pytest.raises(TypeError, match=r"random weights cannot take \['device_map'\]"):
        ASRModel.from_pretrained(tmp_path, device_map="auto")  # random bases are built, not placed by accelerate


def test_random_model_without_rebuildable_bases_saves_everything(tmp_path, tiny_random):
    _, processor = tiny_random
    config = ASRConfig.from_dict(tiny_random[0].config.to_dict())
    config.trained_weights_only, config.base_seed = False, None
    model = ASRModel(config).eval()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert any(key.startswith("audio_encoder.") for key in saved)
    assert any(key.startswith("language_model.") for key in saved)
    reloaded = ASRModel.from_pretrained(tmp_path)
    torch.testing.assert_close(_outputs(reloaded, processor), _outputs(model, processor))
    trainable = {name for name, p in reloaded.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("projector.") for name in trainable)


def test_lora_adapters_are_saved_and_reloaded(tmp_path):
    model, processor = build("tiny-random", lora_rank=4)
    lora = [name for name, p in model.named_parameters() if "lora_" in name]
    assert lora and all(p.requires_grad for name, p in model.named_parameters() if "lora_" in name)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # LoRA B starts at zero; make the adapters matter
    model.eval().save_pretrained(tmp_path)
    assert set(lora) <= set(load_file(tmp_path / "model.safetensors"))
    reloaded = ASRModel.from_pretrained(tmp_path)
    torch.testing.assert_close(_outputs(reloaded, processor), _outputs(model, processor))


def test_trained_weights_offloaded_to_the_meta_device_are_a_clear_error():
    """Offloading a base model's layer (a `device_map` with `max_memory` or `offload_folder`) leaves the LoRA adapters
    added to it on the meta device, where `load_state_dict` would do nothing and the model would run untrained."""
    model, _ = build("tiny-random", lora_rank=4)
    trained = {key: value for key, value in model.state_dict().items() if model.is_trained_weight(key)}
    model.language_model.model.layers[-1].to("meta")
    with pytest.raises(ValueError, match=r"4 trained weights \(language_model\.model\.layers\.1\..*lie on the meta"):
        model.load_trained_weights(trained)


def test_top_encoder_layers_train_and_are_saved_with_the_projector(tmp_path):
    model, processor = build("tiny-random", trained_encoder_layers=1)
    top, bottom = model.audio_encoder.layers[-1], model.audio_encoder.layers[0]
    assert all(p.requires_grad for p in top.parameters()) and not any(p.requires_grad for p in bottom.parameters())
    with torch.no_grad():
        top.fc2.bias.add_(0.5)  # a trained change that a reload must bring back
    model.train()
    model(**processor(audio=[noise(1.2)], text=["one two"])).loss.backward()
    assert top.fc1.weight.grad is not None and bottom.fc1.weight.grad is None
    model.eval().save_pretrained(tmp_path)
    saved = set(load_file(tmp_path / "model.safetensors"))
    assert {f"audio_encoder.layers.1.{name}" for name, _ in top.named_parameters()} <= saved
    assert "audio_encoder.layer_norm.weight" in saved and not any(".layers.0." in key for key in saved)
    reloaded = ASRModel.from_pretrained(tmp_path)
    torch.testing.assert_close(_outputs(reloaded, processor), _outputs(model, processor))


def test_random_bases_take_the_dtype_asked_for_and_are_rebuilt_in_it(tmp_path):
    model, processor = build("tiny-random", dtype=torch.bfloat16)
    assert model.audio_encoder.conv1.weight.dtype == model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.projector.linear1.weight.dtype == torch.float32
    model.save_pretrained(tmp_path)
    reloaded = ASRModel.from_pretrained(tmp_path, dtype="bfloat16")
    assert reloaded.get_input_embeddings().weight.dtype == torch.bfloat16
    torch.testing.assert_close(_outputs(reloaded, processor), _outputs(model, processor))


def test_trained_encoder_layers_keep_float32_weights_on_bfloat16_bases():
    mixed, processor = build("tiny-random", dtype=torch.bfloat16, trained_encoder_layers=1)
    assert all(
        p.dtype == torch.float32 for module in mixed.audio_encoder.trained_modules() for p in module.parameters()
    )
    assert mixed.audio_encoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert torch.isfinite(mixed(**processor(audio=[noise(1.2)], text=["one two"])).loss)


def test_lora_adapters_keep_float32_weights_on_bfloat16_bases():
    mixed, processor = build("tiny-random", dtype=torch.bfloat16, lora_rank=4)
    lora = {name: p for name, p in mixed.named_parameters() if "lora_" in name}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    assert mixed.language_model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    loss = mixed(**processor(audio=[noise(1.2)], text=["one two"])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora.values())


def test_cached_frozen_encoder_outputs_give_the_same_audio_embeddings():
    model, processor = build("tiny-random", trained_encoder_layers=1)
    batch = processor(audio=[noise(0.8), noise(2.1, seed=1)])
    with torch.no_grad():
        direct, lengths = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        frozen = model.audio_encoder.forward_frozen(batch["input_features"], batch["input_features_mask"].sum(-1))
        cached, cached_lengths = model.get_audio_features(mm_encoder_outputs={"audio": frozen})
    assert torch.equal(lengths, cached_lengths)
    torch.testing.assert_close(direct, cached)


def test_more_trained_encoder_layers_than_the_encoder_has_is_a_clear_error():
    with pytest.raises(ValueError, match="trained_encoder_layers must lie in"):
        build("tiny-random", trained_encoder_layers=3)


def test_broken_checkpoint_is_refused(tmp_path, tiny_random):
    model, processor = tiny_random
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["projector_hidden_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|does not match"):
        ASRModel.from_pretrained(tmp_path)


def test_prompt_without_placeholder_is_rejected(tiny_random):
    _, processor = tiny_random
    with pytest.raises(ValueError, match="must contain the audio placeholder '<audio>'"):
        ASRConfig(user_prompt="Transcribe this.")
    with pytest.raises(ValueError, match="must contain the audio placeholder '<audio>'"):
        ASRProcessor(processor.feature_extractor, processor.tokenizer, user_prompt="Transcribe this.")


def test_mismatched_placeholders_are_a_clear_error(tiny_random):
    model, processor = tiny_random
    long, short = processor(audio=[noise(1.0)]), processor(audio=[noise(0.5)])
    with pytest.raises(ValueError, match="does not match the audio tokens"):
        model(
            input_ids=short["input_ids"],
            input_features=long["input_features"],
            input_features_mask=long["input_features_mask"],
        )


def test_features_without_their_mask_are_a_clear_error(tiny_random):
    model, processor = tiny_random
    batch = processor(audio=[noise(1.0)])
    with pytest.raises(ValueError, match="input_features need their input_features_mask"):
        model(input_ids=batch["input_ids"], input_features=batch["input_features"])


def test_token_readout_hands_the_llm_its_greedy_reading_side_by_side():
    """Repeats collapse, blanks drop out, padding frames are not read; the tokens heard come first, then zeros."""
    from modeling_asr import TokenReadout

    torch.manual_seed(0)
    embeddings = torch.randn(10, 16)
    readout = TokenReadout(10, 16)
    readout.set_tokens([2, 5, 7])
    blank = readout.blank.detach()
    spoken = [[5, 5, None, 5, 2, None, 7], [7, None, 2, 2, 7, 7, 7]]  # row 0 is padded after 6 frames, row 1 after 3
    frames = torch.stack([torch.stack([blank if t is None else embeddings[t] for t in row]) for row in spoken])
    lengths = torch.tensor([6, 3])
    reading_ids = readout.greedy_reading(frames, lengths, embeddings)
    assert reading_ids.tolist() == [[5, 5, 2], [7, 2, -100]]
    with torch.no_grad():
        reading = readout.reading_embeddings(reading_ids, lengths, embeddings)
    zeros = torch.zeros(16)
    expected = [[5, 5, 2, None, None, None], [7, 2, None, None, None, None]]
    assert reading.shape == (2, 6, 16)
    for row, tokens in zip(reading, expected):
        for frame, token in zip(row, tokens):
            assert torch.equal(frame, zeros if token is None else embeddings[token])


def test_ctc_beam_search_sums_the_alignments_of_each_reading():
    """Two frames, each blank 0.6 and token 0.4: the best alignment is blank-blank (0.36, the greedy reading says
    nothing), but three alignments spell the token (0.64). A class repeated across frames is one token, unless a blank
    lies between."""
    from modeling_asr import ctc_beam_search

    unsure = torch.tensor([[0.6, 0.4], [0.6, 0.4]]).log()
    readings = ctc_beam_search(unsure, beam_size=4)
    assert [reading for reading, _ in readings] == [[1], []]
    assert [math.exp(score) for _, score in readings] == pytest.approx([0.64, 0.36])

    certain = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]).clamp(1e-9).log()
    assert ctc_beam_search(certain, beam_size=2)[0][0] == [1, 1]
    assert ctc_beam_search(certain[2:], beam_size=2)[0][0] == [1]


@pytest.mark.parametrize(
    ("table_dtype", "tolerance"), [(torch.float32, {}), (torch.bfloat16, {"atol": 0.05, "rtol": 0.01})]
)
def test_token_readout_scores_blank_then_tokens_by_scaled_cosine_and_trains_only_its_own_parameters(
    table_dtype, tolerance
):
    """Class 0 is the learned blank, class i + 1 the i-th marked token; each logit is the cosine similarity times the
    learned scale, computed in the embedding table's dtype (float32 logits either way). The frozen embedding table
    gets no gradient; blank, scale and frames do."""
    from modeling_asr import TokenReadout

    torch.manual_seed(0)
    embeddings = torch.randn(10, 16).to(table_dtype)
    readout = TokenReadout(10, 16, init_scale=4.0)
    readout.set_tokens([7, 2, 5])
    frames = torch.randn(2, 3, 16, requires_grad=True)
    logits = readout(frames, embeddings)
    classes = torch.cat([readout.blank[None], embeddings[[2, 5, 7]].float()])
    expected = 4.0 * nn.functional.cosine_similarity(frames[:, :, None], classes[None, None], dim=-1)
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, 4)
    torch.testing.assert_close(logits, expected, **tolerance)
    logits.sum().backward()
    assert embeddings.grad is None
    assert readout.blank.grad.abs().sum() > 0 and readout.log_scale.grad != 0 and frames.grad.abs().sum() > 0


def test_token_spelling_starts_at_zero_and_links_only_tokens_spelled_alike():
    """A readout with spelling vectors starts exactly where one without starts (the input embeddings alone). What one
    token's class vector learns through its n-grams moves the class vector of a token spelled alike, and leaves a
    token that shares no n-gram with it where it was."""
    from modeling_asr import TokenReadout

    torch.manual_seed(0)
    embeddings = torch.randn(10, 16)
    texts = {2: " cotton", 5: " cottage", 7: "zebra"}  # "zebra" continues a word: no "<"
    plain = TokenReadout(10, 16)
    spelled = TokenReadout(10, 16, spelling_buckets=4096, spelling_width=8)
    spelled.load_state_dict(plain.state_dict(), strict=False)  # the same blank and scale
    plain.set_tokens(list(texts))
    spelled.set_tokens(list(texts), list(texts.values()))
    frames = torch.randn(2, 3, 16)
    torch.testing.assert_close(spelled(frames, embeddings), plain(frames, embeddings))

    features = {token: set(spelled.spelling.features[token].tolist()) - {0} for token in texts}
    assert features[2] & features[5] and not features[2] & features[7]
    nn.init.normal_(spelled.spelling.to_hidden.weight)  # as after some training
    before = spelled.class_vectors(embeddings).detach()
    spelled.class_vectors(embeddings)[0].sum().backward()  # class 0 is token 2, " cotton"
    with torch.no_grad():
        spelled.spelling.embedding.weight -= spelled.spelling.embedding.weight.grad
    after = spelled.class_vectors(embeddings).detach()
    assert not torch.allclose(after[0], before[0]) and not torch.allclose(after[1], before[1])
    assert torch.equal(after[2], before[2])


def test_a_spelling_readout_needs_the_text_of_its_tokens():
    from modeling_asr import TokenReadout

    readout = TokenReadout(10, 16, spelling_buckets=64)
    with pytest.raises(ValueError, match="needs the text of each token"):
        readout.set_tokens([2, 5])
    readout.set_tokens([2, 5], [" same", " same"])
    vectors = readout.spelling(torch.tensor([2, 5]))
    assert torch.equal(vectors[0], vectors[1])
