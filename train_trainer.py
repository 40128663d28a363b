"""Train Tiny Audio with the Hugging Face Trainer.

    python train_trainer.py --preset tiny-random --max_steps 40 --output_dir outputs/smoke      # offline smoke run
    python train_trainer.py --preset tiny --output_dir outputs/demo                             # offline CPU demo
    python train_trainer.py --preset a40 --output_dir outputs/a40                               # reference recipe

`--preset NAME` sets defaults (model build, data and TrainingArguments); `--config FILE` (yaml or json) sets more;
any command-line flag overrides both. Every `TrainingArguments` flag works.
"""

import json
import logging
import os
import sys
import time
from argparse import RawDescriptionHelpFormatter
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import huggingface_hub
import torch
import yaml
from datasets import Dataset
from datasets.distributed import split_dataset_by_node
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

import hub_push
from configuration_asr import DEFAULT_LORA_TARGETS
from modeling_asr import ASRModel
from processing_asr import ASRProcessor, load_audio
from tiny_audio.ctc_warmup import CTCWarmup
from tiny_audio.data import (
    SYNTHETIC_TONES,
    ASRCollator,
    DecodedStream,
    SkipCounter,
    add_non_speech,
    build_encoder_cache,
    open_mixture,
    scan,
)
from tiny_audio.evaluation import evaluate_model, word_error_rate
from tiny_audio.parameter_groups import audio_parameters, trained_encoder_parameters
from tiny_audio.presets import MODEL_PRESETS, build

logger = logging.getLogger("train_trainer")

COMMON_DEFAULTS = {
    "report_to": "none",
    "remove_unused_columns": False,  # the collator needs the raw `audio` and `text` columns
    "train_sampling_strategy": "group_by_length",  # batches of similar duration: little padding
    "length_column_name": "length",
    "prediction_loss_only": True,
    "logging_first_step": True,
}
TRAINING_PRESETS = {
    "tiny-random": {
        "model_preset": "tiny-random",
        "dataset_name": SYNTHETIC_TONES,
        "eval_split_name": "validation",
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 40,
        "logging_steps": 5,
        "save_strategy": "no",
        "max_wer_samples": 16,
        "use_cpu": True,
    },
    "tiny": {
        "model_preset": "tiny-base-tokens",  # beat tiny-base and tiny on real speech in the demo's budget (README)
        "dataset_name": "outputs/speech_corpus",
        "eval_split_name": "validation",
        "base_dtype": "auto",
        "cache_encoder_outputs": True,
        "non_speech_fraction": 0.05,
        "ctc_warmup_steps": 1500,  # 4 passes in batches of 8 over the 3,000 clips of the default corpus
        "ctc_batch_size": 8,  # half the batch, twice the steps, the same clips seen: fits them better (README)
        "ctc_learning_rate": 7e-4,
        "lora_rank": 16,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 0.4,
        "lr_scheduler_type": "cosine",
        "max_steps": 25,  # the words come from stage 0's reading: these steps teach case and punctuation (README)
        "max_train_minutes": 10,
        "logging_steps": 10,
        "save_strategy": "no",
        "max_eval_samples": 100,
        "max_wer_samples": 100,
        "use_cpu": True,
    },
    "a40": {
        "model_preset": "reference",
        "dataset_name": "speechbrain/LoquaciousSet",
        "dataset_config_name": "medium",
        "audio_column_name": "wav",
        "text_column_name": "text",
        "train_split_name": "train",
        "eval_split_name": "dev",
        "streaming": True,
        "bf16": True,
        "base_dtype": "bfloat16",
        "optim": "adamw_torch_fused",
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "warmup_steps": 1000,
        "lr_scheduler_type": "cosine",
        "per_device_train_batch_size": 16,
        "gradient_accumulation_steps": 4,
        "max_steps": 40000,
        "eval_strategy": "steps",
        "eval_steps": 2000,
        "save_steps": 2000,
        "save_total_limit": 3,
        "logging_steps": 25,
        "max_eval_samples": 500,
        "max_wer_samples": 200,
        "dataloader_num_workers": 4,
    },
}


@dataclass
class ModelArguments:
    model_preset: str = field(
        default="tiny",
        metadata={
            "help": "model build: reference, tiny (Whisper tiny.en), tiny-base (Whisper base), tiny-base-tokens (Whisper "
            "base, the LLM reads stage 0's CTC tokens) or tiny-random",
            "choices": sorted(MODEL_PRESETS),
        },
    )
    init_from: str | None = field(default=None, metadata={"help": "start from the weights of an earlier checkpoint"})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: no LoRA)"})
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = field(
        default=",".join(DEFAULT_LORA_TARGETS), metadata={"help": "comma-separated module names"}
    )
    freeze_projector: bool = field(
        default=False,
        metadata={
            "help": "the LLM stage trains only the LoRA adapters, not the projector nor trained encoder layers "
            "(stage 0 still trains them)"
        },
    )
    trained_encoder_layers: int = field(
        default=0,
        metadata={
            "help": "a fresh model's top N Whisper encoder layers train too (the frozen ones below stay cacheable)"
        },
    )
    projector_output: str | None = field(
        default=None,
        metadata={
            "help": "a fresh model's input to the LLM, when not the model preset's: embeddings (the projector's "
            "output) or ctc_tokens (the embeddings of what stage 0's CTC readout reads, token after token; needs "
            "--ctc_warmup_steps)"
        },
    )
    readout_spelling_buckets: int | None = field(
        default=None,
        metadata={
            "help": "a fresh model's buckets of token spelling n-grams in its CTC readout's class vectors, when not "
            "the model preset's (0: the LLM's input embeddings alone)"
        },
    )
    base_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the frozen encoder and LLM: float32, bfloat16, float16, or auto (bfloat16 where the "
            "training device computes it natively, else float32); trained weights stay float32"
        },
    )


@dataclass
class RecipeArguments:
    ctc_warmup_steps: int = field(default=0, metadata={"help": "stage 0: projector-only CTC steps before the LLM loss"})
    ctc_learning_rate: float = 1e-3
    encoder_learning_rate_scale: float = field(
        default=0.1,
        metadata={
            "help": "learning rate of trained encoder layers "
            "(pretrained weights) relative to that of the projector, in both stages"
        },
    )
    ctc_batch_size: int = 16
    ctc_gradient_tolerance: float = field(
        default=1e-2,
        metadata={
            "help": "stage 0's backward through the readout skips the frames that hold only this share of the "
            "gradient's squared norm (frames read with confidence); 0: exact"
        },
    )
    ctc_gradient_rest_share: float = field(
        default=0.1,
        metadata={
            "help": "the share of those skipped frames that the backward samples anyway, their gradient scaled by its "
            "inverse, so that the step stays unbiased"
        },
    )
    ctc_auxiliary_weight: float = field(
        default=0.0,
        metadata={
            "help": "keep stage 0's CTC loss on the projector during the LLM stage, with this weight (needs "
            "--ctc_warmup_steps), so the projector stays readable token by token while it learns to prompt the LLM"
        },
    )
    teacher_readings: bool = field(
        default=True,
        metadata={
            "help": "ctc_tokens models: in the LLM stage the LLM reads each transcript's spoken form, as a perfect "
            "readout would read it, instead of stage 0's reading, so it learns to copy and not to rewrite"
        },
    )
    cache_encoder_outputs: bool = field(default=False, metadata={"help": "run the frozen encoder once per clip"})
    max_train_minutes: float | None = field(default=None, metadata={"help": "stop the LLM stage after this long"})
    eval_only: bool = field(default=False, metadata={"help": "evaluate the model (e.g. --init_from DIR), no training"})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default=SYNTHETIC_TONES, metadata={"help": "Hub id(s) or local folder(s), comma-separated"}
    )
    dataset_weights: str | None = field(default=None, metadata={"help": "comma-separated mixing weights"})
    dataset_config_name: str | None = None
    train_split_name: str = "train"
    eval_split_name: str | None = "validation"
    audio_column_name: str = "audio"
    text_column_name: str = "text"
    streaming: bool = field(default=False, metadata={"help": "stream the training data (for corpora too big to fetch)"})
    max_duration_in_seconds: float = 30.0
    max_train_samples: int | None = None
    max_eval_samples: int | None = 200
    max_wer_samples: int = field(
        default=64, metadata={"help": "eval clips transcribed for eval_wer at each evaluation"}
    )
    max_bad_fraction: float = field(default=0.2, metadata={"help": "fail when more of the data than this is unusable"})
    spec_augment: bool = False
    non_speech_fraction: float = field(
        default=0.0,
        metadata={
            "help": "add this many generated non-speech clips (noise, music, tones; empty transcript) per training "
            "example, so the model learns to say nothing for them (finite training sets only)"
        },
    )


class TimeBudget(TrainerCallback):
    """Stops training (then saves and evaluates as usual) once a wall-clock budget is spent. Under torchrun every
    rank stops at the step where the first one runs out: a rank that went on alone would wait on the others forever."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + 60 * minutes

    def on_step_end(self, args, state, control, **kwargs):
        spent = time.monotonic() > self.deadline
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor(int(spent), device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            spent = bool(flag.item())
        if spent:
            logger.info(f"time budget spent after {state.global_step} steps; stopping")
            control.should_training_stop = True
        return control


class HubPush(TrainerCallback):
    """`--push_to_hub`: every saved checkpoint goes through hub_push (assembled, verified, only needed files)."""

    def __init__(self, push_kwargs: dict):
        self.push_kwargs = push_kwargs

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            hub_push.push_to_hub(
                checkpoint, **self.push_kwargs, commit_message=f"checkpoint at step {state.global_step}"
            )


class ASRTrainer(Trainer):
    """Trainer whose evaluation adds generation-based `eval_wer` to `eval_loss`, whose optimizer gives trained
    encoder layers `encoder_learning_rate_scale` times the learning rate, and whose training loss may add
    `ctc_auxiliary_weight` times the CTC loss of a `CTCWarmup`'s (frozen) head on the projector's output."""

    def __init__(
        self,
        *args,
        wer_examples=None,
        encoder_learning_rate_scale: float = 1.0,
        ctc_warmup: CTCWarmup | None = None,
        ctc_auxiliary_weight: float = 0.0,
        eval_data_collator=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self.wer_examples = wer_examples
        self.encoder_learning_rate_scale = encoder_learning_rate_scale
        self.ctc_warmup, self.ctc_auxiliary_weight = ctc_warmup, ctc_auxiliary_weight
        if ctc_auxiliary_weight and ctc_warmup is None:
            raise ValueError(
                "--ctc_auxiliary_weight needs the CTC head of stage 0, which runs only with --ctc_warmup_steps > 0 "
                "and not when resuming from a checkpoint"
            )
        if ctc_auxiliary_weight:
            ctc_warmup.head.requires_grad_(False)  # the head of stage 0 is the fixed reference the projector keeps to

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.ctc_auxiliary_weight and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        captured = {}
        hook = model.projector.register_forward_hook(lambda module, args, output: captured.update(audio=output))
        try:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            hook.remove()
        projected, lengths = captured["audio"]
        targets = self.ctc_warmup.targets_from_labels(inputs["labels"])
        ctc_loss = self.ctc_warmup.loss(projected, lengths, targets)
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # the LLM loss is already divided over the accumulated batches, so the Trainer will not divide this sum
            ctc_loss = ctc_loss / self.current_gradient_accumulation_steps
        loss = loss + self.ctc_auxiliary_weight * ctc_loss
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (no weight decay on biases and norms), with trained encoder layers in groups of
        their own at `encoder_learning_rate_scale` times the learning rate."""
        encoder = {id(p) for p in trained_encoder_parameters(self.model) if p.requires_grad}
        if self.optimizer is None and encoder:
            decays = set(self.get_decay_parameter_names(self.model))
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            groups = defaultdict(list)  # (in the encoder, decayed) -> parameters, in one pass over the model
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    groups[id(p) in encoder, name in decays].append(p)
            encoder_lr = {"lr": kwargs["lr"] * self.encoder_learning_rate_scale}
            self.optimizer = optimizer_cls(
                [
                    {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
                    | (encoder_lr if in_encoder else {})
                    for (in_encoder, decayed), params in groups.items()
                ],
                **kwargs,
            )
        return super().create_optimizer(model)

    def _issue_warnings_after_load(self, load_result) -> None:
        """A checkpoint of trained weights only lacks the frozen bases by design: only a missing trained weight (or
        an unexpected one) is worth the Trainer's warning on resuming."""
        if self.model.config.trained_weights_only:
            missing = [key for key in load_result.missing_keys if self.model.is_trained_weight(key)]
            load_result = load_result._replace(missing_keys=missing)
        super()._issue_warnings_after_load(load_result)

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation batches from `eval_data_collator` when given: no SpecAugment, and no teacher readings, which
        would hand the LLM each reference transcript."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        training_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix) if self.eval_dataset else {}
        if self.wer_examples:
            result = evaluate_model(self.model, self.processing_class, self.wer_examples, self.args.eval_batch_size)
            wer = {f"{metric_key_prefix}_wer": result["wer"], f"{metric_key_prefix}_wer_samples": result["samples"]}
            self.log(wer)
            metrics.update(wer)
        return metrics


def parse_args(argv: list[str]):
    """(model, recipe, data, training arguments, preset name): preset defaults < config file < command line."""
    argument_classes = (ModelArguments, RecipeArguments, DataArguments, TrainingArguments)
    parser = HfArgumentParser(argument_classes, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        choices=sorted(TRAINING_PRESETS),
        default=None,
        help="a recipe's defaults (the flags above show the bare ones)",
    )
    parser.add_argument("--config", default=None, help="yaml or json file of flag values")
    known, _ = parser.parse_known_args(argv)
    defaults = {**COMMON_DEFAULTS, **TRAINING_PRESETS.get(known.preset, {})}
    if known.config:
        from_file = yaml.safe_load(Path(known.config).read_text()) or {}  # yaml is a superset of json
        # set_defaults takes any key, so a misspelt flag in the file would otherwise be dropped without a word
        unknown = sorted(set(from_file) - {item.name for cls in argument_classes for item in fields(cls)})
        if unknown:
            raise ValueError(f"{known.config}: unknown flags {unknown}; see `python train_trainer.py --help`")
        defaults.update(from_file)
    parser.set_defaults(**defaults)
    *arguments, extra = parser.parse_args_into_dataclasses(argv)
    return (*arguments, extra.preset)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively: a GPU that supports it, or a CPU with avx512_bf16 or AMX.
    Elsewhere (an AVX2-only CPU, say) bfloat16 runs many times slower than float32 (README, Performance)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def base_dtype(name: str, device: torch.device) -> torch.dtype:
    """The frozen bases' dtype for `--base_dtype` on the training `device`: "auto" picks bfloat16 where it is native."""
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--base_dtype {name!r}: expected float32, bfloat16, float16 or auto")
    return getattr(torch, name)


def build_model(model_args: ModelArguments, device: torch.device) -> tuple[ASRModel, ASRProcessor]:
    """A new model for the preset, or the weights of `--init_from` (then LoRA as asked), with bases in the dtype that
    `--base_dtype` picks for `device`."""
    targets = model_args.lora_target_modules.split(",")
    dtype = base_dtype(model_args.base_dtype, device)
    logger.info(f"frozen bases in {dtype} on {device}")
    if model_args.init_from:
        model = ASRModel.from_pretrained(model_args.init_from, dtype=dtype)
        processor = ASRProcessor.from_pretrained(model_args.init_from, trust_remote_code=True)  # its own tokenizer
        if model_args.lora_rank and model.config.lora_rank == 0:
            model.add_lora_adapters(model_args.lora_rank, model_args.lora_alpha, model_args.lora_dropout, targets)
    else:
        unless_preset = {
            "projector_output": model_args.projector_output,
            "readout_spelling_buckets": model_args.readout_spelling_buckets,
        }
        model, processor = build(
            model_args.model_preset,
            dtype=dtype,
            lora_rank=model_args.lora_rank,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            lora_target_modules=targets,
            trained_encoder_layers=model_args.trained_encoder_layers,
            **{key: value for key, value in unless_preset.items() if value is not None},  # None: the preset's
        )
    return model, processor


def load_split(
    data_args: DataArguments,
    split: str,
    seed: int,
    max_samples: int | None,
    streaming: bool,
    rank: int = 0,
    world_size: int = 1,
):
    counter = SkipCounter(f"{data_args.dataset_name}:{split}", data_args.max_bad_fraction)
    dataset = open_mixture(
        data_args.dataset_name.split(","),
        [float(w) for w in data_args.dataset_weights.split(",")] if data_args.dataset_weights else None,
        seed,
        interleave=split == data_args.train_split_name,
        config=data_args.dataset_config_name,
        split=split,
        audio_column=data_args.audio_column_name,
        text_column=data_args.text_column_name,
        streaming=streaming,
    )
    if streaming and split != data_args.train_split_name:
        # evaluation reads a finite set: the split's first clips, streamed (loading it whole would download the
        # whole config, training split included)
        dataset = Dataset.from_list(list(dataset.take(max_samples) if max_samples else dataset))
    elif streaming:
        if data_args.non_speech_fraction:
            raise ValueError("--non_speech_fraction needs a finite training set (no --streaming)")
        if world_size > 1:  # each rank reads its own shard of the stream
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        return dataset.take(max_samples) if max_samples else dataset, counter
    dataset = scan(dataset, counter, data_args.max_duration_in_seconds, max_samples)
    if split == data_args.train_split_name and data_args.non_speech_fraction:
        dataset = add_non_speech(dataset, data_args.non_speech_fraction, seed)
    return dataset, counter


def trained_parameters(model: ASRModel) -> int:
    """The parameters this project trains on top of the frozen bases, in whichever stage (projector with its
    readout, LoRA, trained encoder layers): the weights a checkpoint saves."""
    return sum(p.numel() for name, p in model.named_parameters() if model.is_trained_weight(name))


def hub_push_kwargs(training_args: TrainingArguments) -> dict | None:
    """With `--push_to_hub`, the `hub_push.push_to_hub` keywords of `--hub_model_id`, `--hub_private_repo`,
    `--hub_token` and `--hub_revision`, checked before training (a missing token would otherwise end the run at its
    first save); else None. The Trainer's own upload is turned off, since pushes go through hub_push (an assembled,
    verified folder instead of everything in the output folder)."""
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id OWNER/NAME")
    if not (training_args.hub_token or huggingface_hub.get_token()):
        raise ValueError(f"--push_to_hub: {hub_push.NO_TOKEN}, or pass --hub_token")
    training_args.push_to_hub = False
    return {
        "repo_id": training_args.hub_model_id,
        "private": bool(training_args.hub_private_repo),
        "token": training_args.hub_token,
        "revision": training_args.hub_revision,
    }


def load_data(data_args: DataArguments, training_args: TrainingArguments, training: bool = True):
    """(training data and its skip counter, or None and None when not `training`; evaluation data or None); a
    stream is sharded across ranks."""
    if not training and not data_args.eval_split_name:
        raise ValueError("--eval_only needs an --eval_split_name to evaluate on")
    train_data = train_counter = eval_data = None
    if training:
        train_data, train_counter = load_split(
            data_args,
            data_args.train_split_name,
            training_args.seed,
            data_args.max_train_samples,
            data_args.streaming,
            training_args.process_index,
            training_args.world_size,
        )
    if data_args.streaming and training_args.world_size > 1:
        training_args.accelerator_config.dispatch_batches = False  # ranks read their own shards
    if data_args.eval_split_name:
        eval_data, _ = load_split(
            data_args, data_args.eval_split_name, training_args.seed, data_args.max_eval_samples, data_args.streaming
        )
    return train_data, train_counter, eval_data


def prepare_train_data(model, processor, train_data, train_counter, recipe, data_args, training_args):
    """(training data, encoder cache or None): a stream is decoded on the fly; a finite set may get its frozen
    encoder's outputs computed once, each example then naming its row of the cache."""
    if data_args.streaming:
        stream = DecodedStream(
            train_data, train_counter, data_args.max_duration_in_seconds, training_args.per_device_train_batch_size
        )
        return stream, None
    if not recipe.cache_encoder_outputs:
        return train_data, None
    if data_args.spec_augment:
        raise ValueError(
            "--spec_augment changes the features every epoch; it cannot be used with cached encoder outputs"
        )
    encoder_cache = build_encoder_cache(model, processor, train_data)
    return train_data.add_column("cache_index", list(range(len(train_data)))), encoder_cache


def run_ctc_warmup(model, processor, train_data, encoder_cache, recipe, data_args, seed, wer_examples):
    """Stage 0: CTC training of the projector; returns its stage record, with the greedy CTC WER on the eval clips,
    and the `CTCWarmup` (whose head the LLM stage's auxiliary CTC loss uses)."""
    if data_args.streaming:
        raise ValueError("--ctc_warmup_steps needs a finite training set (no --streaming)")
    warmup = CTCWarmup(
        model,
        processor,
        train_data,
        encoder_cache,
        recipe.ctc_batch_size,
        recipe.ctc_learning_rate,
        recipe.encoder_learning_rate_scale,
        seed,
        recipe.ctc_gradient_tolerance,
        recipe.ctc_gradient_rest_share,
    )
    stage = {"stage": "ctc_warmup", "steps": recipe.ctc_warmup_steps, "loss": warmup.train(recipe.ctc_warmup_steps)}
    if wer_examples:
        readings = warmup.transcribe([load_audio(example["audio"]) for example in wer_examples])
        wer = word_error_rate([example["text"] for example in wer_examples], readings)
        stage["greedy_ctc_wer"] = round(wer, 4)
        logger.info(f"greedy CTC reading after stage 0: WER {wer:.1%} on {len(wer_examples)} eval clips")
    return stage, warmup


def train_llm(trainer: ASRTrainer, resume_from_checkpoint) -> tuple[dict, dict]:
    """Stage 1: train through the LLM, save the model and state; returns (its stage record, training metrics)."""
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    stage = {"stage": "llm", "steps": result.global_step, "lora_rank": trainer.model.config.lora_rank}
    return stage, result.metrics


def evaluate_and_save(trainer: ASRTrainer) -> dict:
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model_args, recipe, data_args, training_args, preset = parse_args(argv)
    push_kwargs = hub_push_kwargs(training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    model, processor = build_model(model_args, training_args.device)
    reads_tokens = model.config.projector_output == "ctc_tokens"  # argmax: the LLM loss reaches no projector weight
    if reads_tokens and not model.config.lora_rank and not recipe.eval_only:
        raise ValueError(
            "a model whose LLM reads CTC tokens (ctc_tokens) trains only LoRA in the LLM stage: set --lora_rank"
        )
    logger.info(f"trained parameters: {trained_parameters(model):,}")
    if not (training_args.deepspeed or training_args.fsdp):
        model.to(training_args.device)  # where the Trainer would put it, already for the encoder cache and stage 0
    training = not recipe.eval_only
    train_data, train_counter, eval_data = load_data(data_args, training_args, training)
    wer_examples = list(eval_data.select(range(min(len(eval_data), data_args.max_wer_samples)))) if eval_data else None

    encoder_cache, stages, warmup = None, [], None
    if training:
        train_data, encoder_cache = prepare_train_data(
            model, processor, train_data, train_counter, recipe, data_args, training_args
        )
        if recipe.ctc_warmup_steps and not training_args.resume_from_checkpoint:
            stage, warmup = run_ctc_warmup(
                model, processor, train_data, encoder_cache, recipe, data_args, training_args.seed, wer_examples
            )
            stages.append(stage)
    if model_args.freeze_projector or reads_tokens:
        for parameter in audio_parameters(model):
            parameter.requires_grad_(False)
    trainer = ASRTrainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=ASRCollator(
            processor,
            encoder_cache,
            data_args.spec_augment,
            training_args.seed,
            reads_tokens and recipe.teacher_readings,
        ),
        eval_data_collator=ASRCollator(processor),
        processing_class=processor,
        wer_examples=wer_examples,
        encoder_learning_rate_scale=recipe.encoder_learning_rate_scale,
        ctc_warmup=warmup if recipe.ctc_auxiliary_weight else None,  # else its optimizer state need not stay alive
        ctc_auxiliary_weight=recipe.ctc_auxiliary_weight if training else 0.0,
    )
    if recipe.max_train_minutes:
        trainer.add_callback(TimeBudget(recipe.max_train_minutes))
    if push_kwargs:
        trainer.add_callback(HubPush(push_kwargs))

    metrics = {}
    if training:
        stage, train_metrics = train_llm(trainer, training_args.resume_from_checkpoint)
        stages.append(stage)
        metrics.update(train_metrics)
    if eval_data is not None:
        metrics.update(evaluate_and_save(trainer))
    if trainer.is_world_process_zero():
        write_run_record(
            training_args.output_dir,
            argv,
            preset,
            model,
            (model_args, recipe, data_args),
            training_args,
            train_counter,
            eval_data,
            stages,
            metrics,
        )
        if push_kwargs:
            hub_push.push_to_hub(training_args.output_dir, **push_kwargs)
    return metrics


def write_run_record(
    output_dir, argv, preset, model, arguments, training_args, train_counter, eval_data, stages, metrics
) -> None:
    """`training_run.json`: the exact command and config, base models, data counts, stages and results."""
    config, data_args = model.config, arguments[-1]
    # local folders as absolute paths, so that hub_push never takes one for a Hub dataset id (`outputs/corpus`)
    names = data_args.dataset_name.split(",")
    datasets = ",".join(str(Path(name).resolve()) if Path(name).is_dir() else name for name in names)
    record = {
        "preset": preset,
        "command": " ".join(["python", "train_trainer.py", *argv]),
        "base_models": {
            "audio": {"id": config.audio_model_id, "revision": config.audio_model_revision},
            "text": {"id": config.text_model_id, "revision": config.text_model_revision},
        },
        "trained_parameters": trained_parameters(model),
        "stages": stages,
        "data": {
            "train": None
            if train_counter is None
            else {
                "dataset": datasets,
                "config": data_args.dataset_config_name,
                "split": data_args.train_split_name,
                "samples": train_counter.summary()["kept"],
                **train_counter.summary(),
            },
            "eval": None
            if eval_data is None
            else {
                "dataset": datasets,
                "config": data_args.dataset_config_name,
                "split": data_args.eval_split_name,
                "samples": len(eval_data),
            },
        },
        "arguments": {type(group).__name__: asdict(group) for group in arguments},
        "hyperparameters": {
            key: getattr(training_args, key)
            for key in (
                "learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "max_steps",
                "warmup_steps",
                "lr_scheduler_type",
                "weight_decay",
                "bf16",
                "seed",
            )
        }
        | {"lora_rank": config.lora_rank},
        "results": {key: value for key, value in metrics.items() if key.startswith("eval_")},
    }
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, "training_run.json").write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
