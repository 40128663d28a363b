"""train_trainer.py: the smoke recipe learns, bad data is counted or refused, resume is exact, stages chain."""

import csv
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO
from safetensors.torch import load_file

import train_trainer
from processing_asr import ASRProcessor
from tiny_audio.data import (
    ASRCollator,
    SkipCounter,
    build_encoder_cache,
    open_dataset,
    open_mixture,
    scan,
    synthetic_tones,
    tone_clip,
)
from tiny_audio.presets import build
from train_trainer import main, parse_args


def run(tmp_path, *args) -> dict:
    return main(["--preset", "tiny-random", "--output_dir", str(tmp_path), "--report_to", "none", *args])


def logged_losses(checkpoint_dir) -> list[float]:
    state = json.loads((checkpoint_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_smoke_recipe_learns_and_saves_only_trained_weights(tmp_path):
    metrics = run(
        tmp_path,
        "--max_steps",
        "40",
        "--save_strategy",
        "steps",
        "--save_steps",
        "40",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "20",
    )
    losses = logged_losses(tmp_path / "checkpoint-40")
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.5, losses
    history = json.loads((tmp_path / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_wer" in entry] == [20, 40]
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert "eval_wer" in results and results["eval_wer"] == metrics["eval_wer"]
    for folder in (tmp_path, tmp_path / "checkpoint-40"):
        assert set(load_file(folder / "model.safetensors")) == {
            f"projector.{name}"
            for name in (
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "linear1.weight",
                "linear1.bias",
                "linear2.weight",
                "linear2.bias",
                "norm.weight",
            )
        }
        assert (folder / "modeling_asr.py").exists() and (folder / "pipeline_asr.py").exists()
    record = json.loads((tmp_path / "training_run.json").read_text())
    assert record["preset"] == "tiny-random" and record["stages"][-1]["stage"] == "llm"
    assert record["data"]["train"]["samples"] == 64 and record["results"]["eval_wer"] == results["eval_wer"]


def test_resume_continues_exactly(tmp_path, caplog):
    """8 steps straight and 4 + resume + 4 end at the same weights (tolerance: 1e-6 absolute), without a warning
    about the frozen bases that a checkpoint leaves out."""
    common = ["--save_strategy", "steps", "--save_steps", "4", "--eval_split_name", ""]
    run(tmp_path / "straight", "--max_steps", "8", *common)
    run(tmp_path / "resumed", "--max_steps", "4", *common)
    caplog.clear()
    run(
        tmp_path / "resumed",
        "--max_steps",
        "8",
        *common,
        "--resume_from_checkpoint",
        str(tmp_path / "resumed/checkpoint-4"),
    )
    straight = load_file(tmp_path / "straight/model.safetensors")
    resumed = load_file(tmp_path / "resumed/model.safetensors")
    halfway = load_file(tmp_path / "resumed/checkpoint-4/model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0)
    assert any(not torch.equal(halfway[name], straight[name]) for name in straight)
    assert not [record for record in caplog.records if "missing keys" in record.getMessage()]


def test_activation_checkpointing_trains_to_the_same_weights(tmp_path):
    """`--gradient_checkpointing` recomputes the bases' activations in the backward: less memory, the same steps."""
    common = ["--max_steps", "3", "--lora_rank", "4", "--eval_split_name", ""]
    run(tmp_path / "stored", *common)
    run(tmp_path / "recomputed", *common, "--gradient_checkpointing", "true")
    stored = load_file(tmp_path / "stored/model.safetensors")
    recomputed = load_file(tmp_path / "recomputed/model.safetensors")
    assert stored.keys() == recomputed.keys() and any("lora" in name for name in stored)
    for name in stored:
        torch.testing.assert_close(recomputed[name], stored[name], atol=1e-6, rtol=0)


def write_folder(root, rows):
    """An audiofolder split: root/train/metadata.csv beside the audio files."""
    split = root / "train"
    split.mkdir(parents=True)
    with open(split / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for name, audio, text in rows:
            if isinstance(audio, bytes):
                (split / name).write_bytes(audio)
            else:
                sf.write(split / name, audio, 16_000, subtype="FLOAT")
            writer.writerow([name, text])
    return root


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """20 good clips plus one corrupt file, one empty transcript, one NaN clip and one over-long clip."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        words = list(rng.choice(["one", "two", "red", "blue", "cat"], size=3))
        rows.append((f"good{i}.wav", tone_clip(words), " ".join(words)))
    nan_clip = tone_clip(["one"])
    nan_clip[100] = np.nan
    rows += [
        ("corrupt.wav", b"RIFF\x00\x00not really a wave file", "one two"),
        ("empty_text.wav", tone_clip(["two"]), " "),
        ("nan.wav", nan_clip, "one"),
        ("long.wav", np.tile(tone_clip(["red", "blue"]), 20), "red blue"),
    ]
    return write_folder(tmp_path_factory.mktemp("messy"), rows)


@pytest.mark.parametrize("streamed", [False, True], ids=["scanned", "streamed_in_dataloader_workers"])
def test_bad_data_is_skipped_and_counted_per_reason(tmp_path, messy_folder, caplog, streamed):
    caplog.set_level(logging.INFO)
    stream = ("--streaming", "true", "--dataloader_num_workers", "2", "--per_device_train_batch_size", "4")
    run(
        tmp_path,
        *("--dataset_name", str(messy_folder), "--eval_split_name", "", "--max_steps", "3"),
        *("--max_duration_in_seconds", "10", *(stream if streamed else ())),
    )
    counts = json.loads((tmp_path / "training_run.json").read_text())["data"]["train"]
    assert counts["seen"] == 24 and counts["kept"] == 20
    assert counts["skipped"] == {"undecodable": 1, "empty_transcript": 1, "non_finite": 1, "too_long": 1}
    if not streamed:  # a finite set is checked whole before training, and says so
        summary = [r.getMessage() for r in caplog.records if "'skipped'" in r.getMessage()]
        assert summary and all(
            reason in summary[-1] for reason in ("undecodable", "empty_transcript", "non_finite", "too_long")
        )


def test_a_local_dataset_is_recorded_by_its_absolute_path(tmp_path, messy_folder, monkeypatch):
    """hub_push would take a relative folder such as `outputs/corpus` for a Hub dataset id once it is gone."""
    monkeypatch.chdir(messy_folder.parent)
    run(tmp_path, "--dataset_name", messy_folder.name, "--eval_split_name", "", "--max_steps", "1")
    record = json.loads((tmp_path / "training_run.json").read_text())
    assert record["data"]["train"]["dataset"] == str(messy_folder.resolve())


def test_too_much_bad_data_is_a_clear_error(tmp_path, messy_folder):
    with pytest.raises(ValueError, match=r"examples are unusable .*--max_bad_fraction 0.01"):
        run(
            tmp_path,
            "--dataset_name",
            str(messy_folder),
            "--eval_split_name",
            "",
            "--max_steps",
            "3",
            "--max_duration_in_seconds",
            "10",
            "--max_bad_fraction",
            "0.01",
        )


def test_skip_counter_refuses_a_broken_stream_early():
    counter = SkipCounter("stream", max_bad_fraction=0.1, min_examples=20)
    for _ in range(17):
        counter.record(None)
    with pytest.raises(ValueError, match="3 of 20 examples are unusable"):
        for _ in range(3):
            counter.record("undecodable")


def test_a_short_stream_with_too_much_bad_data_is_a_clear_error(tmp_path, messy_folder):
    """Fewer clips than the counter's `min_examples`: the stream is checked at its end."""
    folder = tmp_path / "short"
    shutil.copytree(messy_folder, folder)
    rows = (folder / "train" / "metadata.csv").read_text().splitlines()
    (folder / "train" / "metadata.csv").write_text("\n".join(rows[:11] + rows[-4:]) + "\n")  # 10 good, 4 bad
    with pytest.raises(ValueError, match=r"4 of 14 examples are unusable"):
        run(
            tmp_path / "run",
            *("--dataset_name", str(folder), "--streaming", "true", "--eval_split_name", ""),
            *("--max_steps", "2", "--per_device_train_batch_size", "4", "--max_duration_in_seconds", "10"),
        )


def test_streamed_data_trains_and_is_evaluated_on_the_first_clips_of_its_streamed_eval_split(
    tmp_path, messy_folder, monkeypatch
):
    """Loading the eval split whole would download a Hub dataset's whole config, its training split included."""
    folder = tmp_path / "data"
    shutil.copytree(messy_folder, folder)
    shutil.copytree(folder / "train", folder / "validation")
    opened = []

    def recording_open_mixture(*args, split, streaming, **kwargs):
        opened.append((split, streaming))
        return open_mixture(*args, split=split, streaming=streaming, **kwargs)

    monkeypatch.setattr(train_trainer, "open_mixture", recording_open_mixture)
    metrics = run(
        tmp_path / "run",
        "--dataset_name",
        str(folder),
        "--streaming",
        "true",
        "--max_eval_samples",
        "6",
        "--max_wer_samples",
        "3",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--max_duration_in_seconds",
        "10",
    )
    record = json.loads((tmp_path / "run" / "training_run.json").read_text())
    assert record["data"]["eval"]["samples"] == 6 and "eval_wer" in metrics
    assert opened == [("train", True), ("validation", True)]
    assert (tmp_path / "run" / "model.safetensors").exists()


def record_collator_calls(monkeypatch) -> list[tuple[bool, bool]]:
    """(SpecAugment on, reading_ids in the batch) of every batch that an ASRCollator makes."""
    calls, collate = [], ASRCollator.__call__

    def recording(self, examples):
        batch = collate(self, examples)
        calls.append((self.spec_augment, "reading_ids" in batch))
        return batch

    monkeypatch.setattr(ASRCollator, "__call__", recording)
    return calls


def test_eval_only_evaluates_without_training_or_augmenting(tmp_path, monkeypatch):
    calls = record_collator_calls(monkeypatch)
    metrics = run(tmp_path, "--eval_only", "true", "--ctc_warmup_steps", "20", "--spec_augment", "true")
    record = json.loads((tmp_path / "training_run.json").read_text())
    assert record["stages"] == [] and record["data"]["train"] is None and "eval_loss" in metrics
    assert calls and not any(spec_augmented for spec_augmented, _ in calls)
    with pytest.raises(ValueError, match="--eval_only needs an --eval_split_name"):
        run(tmp_path, "--eval_only", "true", "--eval_split_name", "")


def test_evaluation_batches_give_the_llm_what_the_model_hears_not_the_transcript(tmp_path, monkeypatch):
    calls = record_collator_calls(monkeypatch)
    run(
        tmp_path,
        *("--projector_output", "ctc_tokens", "--lora_rank", "4", "--ctc_warmup_steps", "10"),
        *("--max_steps", "2", "--max_eval_samples", "8", "--max_wer_samples", "0", "--spec_augment", "true"),
    )
    training, evaluation = calls[:-1], calls[-1:]  # 8 eval clips: one batch, the last
    assert all(call == (True, True) for call in training) and evaluation == [(False, False)]


def test_mixed_datasets_are_interleaved_for_training_and_read_once_each_for_evaluation(tmp_path, messy_folder):
    small = tmp_path / "small"
    shutil.copytree(messy_folder, small)
    rows = (small / "train" / "metadata.csv").read_text().splitlines()
    (small / "train" / "metadata.csv").write_text("\n".join(rows[:3]) + "\n")
    names, kwargs = [str(messy_folder), str(small)], {"split": "train", "config": None, "streaming": False}
    kwargs |= {"audio_column": "audio", "text_column": "text"}
    evaluation = open_mixture(names, [0.1, 0.9], 0, interleave=False, **kwargs)
    assert len(evaluation) == 24 + 2
    assert len(open_mixture(names, [0.1, 0.9], 0, **kwargs)) > 100  # the small one repeated until both are used up
    with pytest.raises(ValueError, match="one value per dataset"):
        open_mixture(names[:1], [0.9, 0.1], 0, **kwargs)


def test_a_folder_without_split_folders_is_its_train_split_alone(tmp_path):
    flat = tmp_path / "flat"
    (write_folder(tmp_path, [("a.wav", tone_clip(["one", "two"]), "one two")]) / "train").rename(flat)
    assert open_dataset(str(flat), None, "train", "audio", "text", False)["text"] == ["one two"]
    with pytest.raises(FileNotFoundError, match="no 'validation' split in .*flat"):
        open_dataset(str(flat), None, "validation", "audio", "text", False)


def test_cached_encoder_outputs_give_the_same_loss(tiny_random):
    model, processor = tiny_random
    dataset = scan(synthetic_tones("train", 6), SkipCounter("tones"), 30.0)
    cache = build_encoder_cache(model, processor, dataset, batch_size=4)
    examples = list(dataset)
    cached = [dict(e, cache_index=i) for i, e in enumerate(examples)]
    collator = ASRCollator(processor, cache)
    with torch.no_grad():
        direct = model(**collator(examples)).loss
        from_cache = model(**collator(cached)).loss
    torch.testing.assert_close(from_cache, direct, atol=2e-3, rtol=1e-3)


def test_config_file_sets_flags_below_the_command_line_and_refuses_unknown_ones(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 0.02\nmax_steps: 7\nlora_rank: 4\n")
    argv = ["--preset", "tiny-random", "--output_dir", str(tmp_path), "--config", str(config), "--max_steps", "9"]
    model_args, _, _, training, preset = parse_args(argv)
    assert (preset, training.learning_rate, training.max_steps) == ("tiny-random", 0.02, 9)
    assert model_args.lora_rank == 4
    config.write_text("learning_rate: 0.02\nlearnin_rate: 0.5\n")
    with pytest.raises(ValueError, match=r"unknown flags \['learnin_rate'\]"):
        parse_args(argv)


def test_ctc_warmup_then_lora_stage_from_an_earlier_checkpoint(tmp_path):
    stage1 = tmp_path / "stage1"
    run(stage1, "--max_steps", "3", "--ctc_warmup_steps", "4", "--ctc_batch_size", "4", "--eval_split_name", "")
    record = json.loads((stage1 / "training_run.json").read_text())
    assert [stage["stage"] for stage in record["stages"]] == ["ctc_warmup", "llm"]
    stage2 = tmp_path / "stage2"
    run(
        stage2,
        "--init_from",
        str(stage1),
        "--lora_rank",
        "4",
        "--freeze_projector",
        "true",
        "--max_steps",
        "3",
        "--eval_split_name",
        "",
        "--learning_rate",
        "1e-2",
    )
    weights1, weights2 = load_file(stage1 / "model.safetensors"), load_file(stage2 / "model.safetensors")
    assert any("lora_A" in name for name in weights2) and any("lora_B" in name for name in weights2)
    for name, value in weights1.items():
        assert torch.equal(weights2[name], value), f"{name} changed although the projector was frozen"
    assert json.loads((stage2 / "config.json").read_text())["lora_rank"] == 4
    # the frozen projector counts too: trained by the first stage, saved with the adapters
    trained = json.loads((stage2 / "training_run.json").read_text())["trained_parameters"]
    assert trained == sum(value.numel() for value in weights2.values())


def test_frozen_projector_is_trained_by_stage_0_and_left_alone_by_the_llm_stage(tmp_path):
    common = ["--ctc_warmup_steps", "4", "--ctc_batch_size", "4", "--eval_split_name", "", "--lora_rank", "4"]
    run(tmp_path / "one", *common, "--max_steps", "1", "--freeze_projector", "true")
    run(tmp_path / "three", *common, "--max_steps", "3", "--freeze_projector", "true", "--learning_rate", "1e-2")
    one, three = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "three" / "model.safetensors")
    fresh = build("tiny-random")[0].state_dict()
    projector = [name for name in one if name.startswith("projector.")]
    assert projector and all(torch.equal(one[name], three[name]) for name in projector)
    assert not torch.equal(one["projector.linear1.weight"], fresh["projector.linear1.weight"])
    lora = [name for name in one if "lora_B" in name]
    assert lora and not all(torch.equal(one[name], three[name]) for name in lora)


def test_ctc_warmup_and_llm_stage_train_the_top_encoder_layer_over_cached_outputs(tmp_path):
    run(
        tmp_path,
        "--max_steps",
        "2",
        "--ctc_warmup_steps",
        "4",
        "--ctc_batch_size",
        "4",
        "--eval_split_name",
        "",
        "--trained_encoder_layers",
        "1",
        "--cache_encoder_outputs",
        "true",
    )
    saved = load_file(tmp_path / "model.safetensors")
    fresh, _ = build("tiny-random", trained_encoder_layers=1)
    top = "audio_encoder.layers.1.fc1.weight"
    assert top in saved and not torch.equal(saved[top], fresh.state_dict()[top])
    assert not any(".layers.0." in name for name in saved)


def test_trained_encoder_layers_get_a_scaled_learning_rate_in_both_stages(tmp_path):
    from transformers import TrainingArguments

    from tiny_audio.ctc_warmup import CTCWarmup
    from train_trainer import ASRTrainer

    model, processor = build("tiny-random", trained_encoder_layers=1)
    dataset = scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0)
    encoder = {id(p) for module in model.audio_encoder.trained_modules() for p in module.parameters()}
    warmup = CTCWarmup(model, processor, dataset, learning_rate=1e-3, encoder_learning_rate_scale=0.1)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to=[])
    trainer = ASRTrainer(model=model, args=args, processing_class=processor, encoder_learning_rate_scale=0.1)
    for optimizer in (warmup.optimizer, trainer.create_optimizer()):
        rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        assert {rates[i] for i in encoder} == {1e-4}
        assert rates[id(model.projector.linear1.weight)] == 1e-3
        assert sum(len(group["params"]) for group in optimizer.param_groups) == len(rates)
    decay = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    top = model.audio_encoder.layers[-1]
    assert decay[id(top.fc1.weight)] == decay[id(model.projector.linear1.weight)] == 0.1
    assert decay[id(top.fc1.bias)] == decay[id(model.audio_encoder.layer_norm.weight)] == 0.0  # as the Trainer does


def test_ctc_auxiliary_loss_adds_the_weighted_ctc_loss_of_the_llm_batch(tmp_path):
    from transformers import TrainingArguments

    from tiny_audio.ctc_warmup import CTCWarmup
    from train_trainer import ASRTrainer

    model, processor = build("tiny-random")
    dataset = scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0)
    warmup = CTCWarmup(model, processor, dataset)
    batch = ASRCollator(processor)(list(dataset))
    assert [t.tolist() for t in warmup.targets_from_labels(batch["labels"])] == [t.tolist() for t in warmup.targets]
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    losses = {}
    for weight in (0.0, 0.5):
        trainer = ASRTrainer(
            model=model, args=args, processing_class=processor, ctc_warmup=warmup, ctc_auxiliary_weight=weight
        )
        model.train()
        with torch.no_grad():
            losses[weight] = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        projected, lengths = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        ctc = warmup.loss(projected, lengths, warmup.targets)
    assert ctc > 0
    torch.testing.assert_close(losses[0.5], losses[0.0] + 0.5 * ctc)
    # accumulating 4 batches, the Trainer sums their losses, each normalised by the tokens of all 4: so is the CTC term
    accumulated, tokens = {}, int((batch["labels"][:, 1:] != -100).sum()) * 4
    for weight in (0.0, 0.5):
        trainer = ASRTrainer(
            model=model, args=args, processing_class=processor, ctc_warmup=warmup, ctc_auxiliary_weight=weight
        )
        trainer.current_gradient_accumulation_steps = 4
        with torch.no_grad():
            accumulated[weight] = trainer.compute_loss(model, dict(batch), num_items_in_batch=tokens)
    torch.testing.assert_close(accumulated[0.5], accumulated[0.0] + 0.5 * ctc / 4)
    assert not any(p.requires_grad for p in warmup.head.parameters())  # stage 0's head is the fixed reference
    with pytest.raises(ValueError, match="ctc_warmup_steps"):
        ASRTrainer(model=model, args=args, processing_class=processor, ctc_auxiliary_weight=0.5)


def test_stage_0_reads_the_spoken_form_of_the_transcripts():
    """Case and punctuation are not heard: stage 0's targets are the transcripts in lower case without punctuation,
    each word with its leading space, and the auxiliary loss makes the same targets from the LLM's cased labels."""
    from configuration_asr import spoken_form
    from tiny_audio.ctc_warmup import CTCWarmup

    assert spoken_form('Mr. Quilter\'s "gospel", well-known!') == " mr quilter's gospel well known"
    assert spoken_form("'Tis the END...") == " tis the end"
    assert spoken_form("") == spoken_form(" ... ") == ""
    model, processor = build("tiny-random")
    tones = synthetic_tones("train", 4)
    cased = scan(tones.map(lambda row: {"text": row["text"].capitalize() + "."}), SkipCounter("tones"), 30.0)
    warmup = CTCWarmup(model, processor, cased)
    readings = [processor.tokenizer.decode([warmup.vocab[c - 1] for c in row]) for row in warmup.targets]
    assert readings == [" " + text for text in tones["text"]]
    labels = ASRCollator(processor)(list(cased))["labels"]
    assert [t.tolist() for t in warmup.targets_from_labels(labels)] == [t.tolist() for t in warmup.targets]


def test_ctc_tokens_model_hands_the_llm_the_embeddings_of_the_tokens_stage_0_hears(tmp_path):
    """With projector_output=ctc_tokens, stage 0 trains the model's own readout, which is saved and reloaded; every
    clip's audio frames reach the LLM as the input embeddings of its greedy CTC reading (repeats collapsed, blanks
    dropped) side by side, then zeros."""
    from modeling_asr import ASRModel

    stage_0 = ["--projector_output", "ctc_tokens", "--ctc_warmup_steps", "4", "--ctc_batch_size", "4"]
    stage_0 += ["--readout_spelling_buckets", "64"]
    with pytest.raises(ValueError, match="trains only LoRA in the LLM stage: set --lora_rank"):
        run(tmp_path, *stage_0)
    run(tmp_path, *stage_0, "--lora_rank", "4", "--max_steps", "1", "--eval_split_name", "")
    run(tmp_path / "llm", "--init_from", str(tmp_path), "--max_steps", "1", "--eval_split_name", "")
    saved = load_file(tmp_path / "llm" / "model.safetensors")
    assert saved["projector.readout.token_mask"].any() and saved["projector.readout.spelling.features"].any()
    assert saved["projector.readout.spelling.to_hidden.weight"].any()  # stage 0 trained the spelling vectors

    model = ASRModel.from_pretrained(tmp_path / "llm")
    readout = model.projector.readout
    assert torch.equal(readout.token_mask, saved["projector.readout.token_mask"])
    assert torch.equal(readout.spelling.features, saved["projector.readout.spelling.features"])
    assert torch.equal(readout.spelling.to_hidden.weight, saved["projector.readout.spelling.to_hidden.weight"])
    processor = ASRProcessor.from_pretrained(tmp_path / "llm")
    batch = processor(audio=[tone_clip(["one", "red", "cat"]), tone_clip(["sun"])])
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        frames, lengths = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        greedy, _ = model.project_audio(batch["input_features"], batch["input_features_mask"])
        classes = readout(greedy, embeddings).argmax(-1)
    for row, classes_row, length in zip(frames, classes, lengths):
        heard = [c for c in torch.unique_consecutive(classes_row[:length]).tolist() if c]
        expected = torch.zeros_like(row[:length])
        expected[: len(heard)] = embeddings[readout.token_ids[torch.tensor(heard, dtype=torch.long) - 1]]
        assert torch.equal(row[:length], expected)


def test_teacher_readings_put_the_spoken_transcript_where_the_readout_s_reading_goes():
    """In the LLM stage the LLM reads each transcript's spoken form (cut to the clip's audio tokens) in place of the
    readout's greedy reading; a non-speech clip reads nothing."""
    from configuration_asr import spoken_form
    from tiny_audio.ctc_warmup import CTCWarmup

    model, processor = build("tiny-random", projector_output="ctc_tokens")
    dataset = scan(synthetic_tones("train", 2), SkipCounter("tones"), 30.0)
    CTCWarmup(model, processor, dataset)  # gives the readout its tokens
    examples = list(dataset)
    examples[1] = {**examples[1], "text": ""}
    batch = ASRCollator(processor, teacher_readings=True)(examples)
    expected = processor.tokenizer(spoken_form(examples[0]["text"]), add_special_tokens=False)["input_ids"]
    assert batch["reading_ids"][0].tolist() == expected and (batch["reading_ids"][1] == -100).all()
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        frames, lengths = model.get_audio_features(
            batch["input_features"], batch["input_features_mask"], reading_ids=batch["reading_ids"]
        )
        assert model(**batch).loss.isfinite()
    assert torch.equal(frames[0, : len(expected)], embeddings[expected])
    assert not frames[0, len(expected) :].any() and not frames[1].any()


def test_ctc_warmup_trains_a_ctc_tokens_model_s_own_readout():
    from tiny_audio.ctc_warmup import CTCWarmup

    model, processor = build("tiny-random", projector_output="ctc_tokens")
    with pytest.raises(ValueError, match="token readout has no tokens yet"):
        batch = processor(audio=[tone_clip(["one", "two"])])
        model.get_audio_features(batch["input_features"], batch["input_features_mask"])
    dataset = scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0)
    warmup = CTCWarmup(model, processor, dataset)
    assert warmup.head is model.projector.readout
    assert warmup.head.token_ids.tolist() == warmup.vocab
    optimized = [p for group in warmup.optimizer.param_groups for p in group["params"]]
    assert len({id(p) for p in optimized}) == len(optimized)
    assert {id(p) for p in model.projector.readout.parameters()} <= {id(p) for p in optimized}


def test_ctc_warmup_scores_along_the_way_with_the_projector_in_eval_mode():
    from tiny_audio.ctc_warmup import CTCWarmup

    model, processor = build("tiny-random", projector_output="ctc_tokens")
    warmup = CTCWarmup(model, processor, scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0), batch_size=2)
    modes = []

    def evaluate():
        modes.append(model.projector.training)
        return {"score": len(modes)}

    history = warmup.train(4, log_every=1, evaluate=evaluate, evaluate_every=2)
    assert [(entry["ctc_step"], entry["score"]) for entry in history if "score" in entry] == [(2, 1), (4, 2)]
    assert modes == [False, False] and model.projector.training


def test_stage_0_backward_skips_only_the_frames_with_almost_no_gradient():
    from tiny_audio.ctc_warmup import TeachingFramesSimilarity

    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 5, 8, generator=generator, requires_grad=True)
    class_vectors_t = torch.randn(8, 30, generator=generator, requires_grad=True)
    grad = torch.randn(2, 5, 30, generator=generator)
    confident = torch.zeros(2, 5, dtype=torch.bool)
    confident[0, 1] = confident[1, 3] = True  # frames the readout already reads: a tiny gradient in every class
    grad[confident] *= 1e-4
    similarities = TeachingFramesSimilarity.apply(frames, class_vectors_t, 1e-3, 0.0)
    assert torch.equal(similarities, frames @ class_vectors_t)
    similarities.backward(grad)
    with torch.no_grad():
        assert torch.allclose(frames.grad[~confident], (grad @ class_vectors_t.T)[~confident], atol=1e-5)
        assert torch.all(frames.grad[confident] == 0)
        assert torch.allclose(class_vectors_t.grad, frames[~confident].T @ grad[~confident], atol=1e-5)


def test_stage_0_backward_samples_the_other_frames_without_bias():
    from tiny_audio.ctc_warmup import TeachingFramesSimilarity

    torch.manual_seed(0)
    frames = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    class_vectors_t = torch.randn(8, 30, dtype=torch.float64)
    grad = torch.randn(40, 30, dtype=torch.float64) * torch.logspace(0, -3, 40, dtype=torch.float64)[:, None]
    draws = []
    for _ in range(2000):
        frames.grad = None
        TeachingFramesSimilarity.apply(frames, class_vectors_t, 0.1, 0.25).backward(grad)
        draws.append(frames.grad.clone())
    exact = (grad @ class_vectors_t.T).detach()
    row_error = (torch.stack(draws).mean(0) - exact).abs().amax(-1) / exact.abs().amax(-1)
    assert (draws[0] == 0).all(-1).sum() > 20  # a draw leaves most of the small frames out
    assert row_error.max() < 0.2  # on average, each frame's gradient is there (0.04 expected, 1 if left out)


def test_stage_0_backward_is_exact_at_zero_tolerance():
    from tiny_audio.ctc_warmup import CTCWarmup

    model, processor = build("tiny-random", projector_output="ctc_tokens")
    warmup = CTCWarmup(model, processor, scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0))
    gradients = {}
    warmup.gradient_rest_share = 0.0
    for tolerance in (0.0, 1e-12, 0.5):
        warmup.gradient_tolerance = tolerance
        model.projector.zero_grad()
        projected, lengths = warmup._audio_embeddings([0, 1, 2, 3])
        warmup.loss(projected, lengths, [warmup.targets[i] for i in range(4)]).backward()
        gradients[tolerance] = model.projector.linear2.weight.grad.clone()
    assert torch.allclose(gradients[1e-12], gradients[0.0], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(gradients[0.5], gradients[0.0], rtol=1e-2)


@pytest.mark.parametrize("tolerance, rest_share", [(1.0, 0.1), (-0.1, 0.1), (1e-2, 1.5)])
def test_stage_0_backward_settings_out_of_range_get_a_clear_error(tolerance, rest_share):
    from tiny_audio.ctc_warmup import CTCWarmup

    with pytest.raises(ValueError, match="gradient_tolerance must lie in"):
        CTCWarmup(None, None, None, gradient_tolerance=tolerance, gradient_rest_share=rest_share)


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a norm that misses its fused kernel under autocast
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16])
def test_ctc_warmup_runs_bfloat16_matmuls_on_bfloat16_bases_and_keeps_float32_weights(base_dtype):
    from tiny_audio.ctc_warmup import CTCWarmup

    model, processor = build("tiny-random", projector_output="ctc_tokens")
    model.audio_encoder.to(base_dtype), model.language_model.to(base_dtype)  # as --base_dtype loads pretrained bases
    warmup = CTCWarmup(model, processor, scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0), batch_size=4)
    computed = []
    model.projector.linear1.register_forward_hook(lambda module, args, output: computed.append(output.dtype))
    losses = [warmup.step([0, 1, 2, 3]) for _ in range(20)]
    assert set(computed) == {base_dtype}
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "picked"),
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_base_dtype_is_bfloat16_only_on_cpus_that_compute_it_natively(monkeypatch, avx512_bf16, amx, picked):
    """An AVX2-only CPU computes bfloat16 matmuls many times slower than float32, so `--base_dtype auto` (the `tiny`
    preset's) keeps the bases in float32 there; an explicit dtype is taken as given, and an unknown one named."""
    import train_trainer

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert train_trainer.base_dtype("auto", torch.device("cpu")) == picked
    assert train_trainer.base_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert train_trainer.base_dtype("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="--base_dtype 'float33'"):
        train_trainer.base_dtype("float33", torch.device("cpu"))


def test_push_to_hub_publishes_checkpoints_through_hub_push(tmp_path, monkeypatch):
    import hub_push

    pushed = []

    def record_push(folder, repo_id, private, token, revision, **kwargs):
        pushed.append((Path(folder), repo_id, private, token, revision))

    monkeypatch.setattr(hub_push, "push_to_hub", record_push)
    run(
        tmp_path,
        *("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_split_name", ""),
        *("--push_to_hub", "--hub_model_id", "me/tiny-audio-test", "--hub_private_repo", "true"),
        *("--hub_token", "hf_test", "--hub_revision", "dev"),
    )
    target = ("me/tiny-audio-test", True, "hf_test", "dev")
    assert pushed == [(tmp_path / "checkpoint-2", *target), (tmp_path / "checkpoint-4", *target), (tmp_path, *target)]
    assert not (tmp_path / "checkpoint-4" / "README.md").exists()  # the Trainer's own upload path was not used


def test_push_to_hub_without_a_token_fails_before_training(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token found"):
        run(tmp_path, "--push_to_hub", "--hub_model_id", "me/tiny-audio-test")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(tmp_path):
    """torchrun --nproc_per_node=2 with gloo: ranks see different data and one checkpoint is written."""
    wrapper = tmp_path / "train_recording.py"
    wrapper.write_text(
        textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(REPO)!r})
        import train_trainer
        from tiny_audio import data as asr_data
        seen, call = [], asr_data.ASRCollator.__call__
        def recording(self, examples):
            seen.extend(e["text"] for e in examples)
            return call(self, examples)
        asr_data.ASRCollator.__call__ = recording
        train_trainer.main(sys.argv[1:])
        with open(os.path.join({str(tmp_path)!r}, f"seen_{{os.environ['RANK']}}.json"), "w") as f:
            json.dump(seen, f)
    """)
    )
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        str(wrapper),
        "--preset",
        "tiny-random",
        "--max_steps",
        "3",
        "--output_dir",
        str(output),
        "--eval_split_name",
        "",
        "--save_strategy",
        "steps",
        "--save_steps",
        "3",
        "--ddp_backend",
        "gloo",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**__import__("os").environ})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen_{rank}.json").read_text()) for rank in (0, 1)]
    assert min(map(len, seen)) >= 3 * 8 and seen[0] != seen[1]  # (the loader may fetch one batch ahead)
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (output / "model.safetensors").exists()


@pytest.mark.slow
def test_time_budget_stops_every_torchrun_rank_at_the_same_step(tmp_path):
    """Rank 0's budget is spent from the start and rank 1's never: both stop after the first step and the run ends
    (a rank going on alone would wait forever for the other's gradients)."""
    wrapper = tmp_path / "train_skewed.py"
    wrapper.write_text(
        textwrap.dedent(f"""
        import math, os, sys
        sys.path.insert(0, {str(REPO)!r})
        import train_trainer
        start = train_trainer.TimeBudget.__init__
        def skewed(self, minutes):
            start(self, minutes)
            self.deadline = -math.inf if os.environ["RANK"] == "0" else math.inf
        train_trainer.TimeBudget.__init__ = skewed
        train_trainer.main(sys.argv[1:])
    """)
    )
    output = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(wrapper)]
    command += ["--preset", "tiny-random", "--max_steps", "5", "--max_train_minutes", "10", "--output_dir", str(output)]
    command += ["--eval_split_name", "", "--ddp_backend", "gloo"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 1
