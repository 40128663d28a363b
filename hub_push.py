"""Publish a trained Tiny Audio model (a final model folder or a Trainer `checkpoint-N` folder) on the Hugging Face Hub.

    python hub_push.py outputs/run/checkpoint-1000 --repo-id me/tiny-audio [--private] [--revision BRANCH]
        [--commit-message MSG] [--create-pr] [--license apache-2.0] [--dry-run --export-dir DIR]

Three steps, and nothing leaves the machine before the second has passed:

1. `assemble` copies into a fresh folder exactly what the model repo needs: `config.json`, the code files its
   `auto_map` / `custom_pipelines` name (and the files those import relatively), the safetensors weights (never
   pickles), the processor / tokenizer / chat-template / generation-config files, and writes a model card whose every
   field comes from the checkpoint (config, `training_run.json`, eval results, `trainer_state.json`).
2. `verify` loads that folder in a fresh Python process, from an empty working directory and with the project not
   importable, through `pipeline("automatic-speech-recognition", trust_remote_code=True)`, and transcribes a
   generated clip.
3. `upload` creates the repo (if needed) and uploads the folder in one commit, retrying transient errors.

The checkpoint folder itself is only read.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
RUN_RECORD_NAME = "training_run.json"
TRAINER_STATE_NAME = "trainer_state.json"
RESULTS_NAMES = ("eval_results.json", "all_results.json")
# Processor, feature extractor, tokenizer and chat template files `save_pretrained` may write.
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
ADDITIONAL_CHAT_TEMPLATES = "additional_chat_templates"
GENERATION_CONFIG_NAME = "generation_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"}
CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # OWNER/NAME
RESULT_MARKER = "HUB_PUSH_RESULT "
PIP_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python"}
RETRY_STATUS = {429, 500, 502, 503, 504}
NO_TOKEN = "no Hugging Face token found: run `hf auth login` or set HF_TOKEN to a token with write access"


class HubPushError(Exception):
    """A problem the user can act on; the CLI prints its message (no traceback) and exits with status 1."""


class VerificationError(HubPushError):
    """The assembled folder does not load or transcribe in a fresh process."""


# --------------------------------------------------------------------------------------------- reading a checkpoint


def _read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when the file is absent; a clear error when it is not valid JSON."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HubPushError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise HubPushError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checkpoint_step(folder: Path) -> int | None:
    match = CHECKPOINT_DIR_RE.match(folder.name)
    return int(match.group(1)) if match else None


@dataclass
class CheckpointInfo:
    """What the card may say about a checkpoint, each item with the file it came from."""

    folder: Path
    config: dict
    run_record: dict | None = None
    run_record_source: str | None = None
    results: dict = field(default_factory=dict)  # eval_* metrics of this checkpoint
    results_source: str | None = None
    global_step: int | None = None  # from trainer_state.json
    max_steps: int | None = None
    notes: list[str] = field(default_factory=list)  # what was looked at and left out, for the user


def _eval_metrics(data: dict | None) -> dict:
    """The eval_* numbers of a results file, without timings (eval_runtime, eval_*_per_second)."""
    if not data:
        return {}
    return {
        key: value
        for key, value in data.items()
        if key.startswith("eval_") and _is_number(value) and not key.endswith(("_runtime", "_per_second"))
    }


def _final_step(record: dict | None) -> int | None:
    """The run's last optimizer step per the run record: its `llm` stage's steps, else `max_steps` when positive."""
    for stage in (record or {}).get("stages") or []:
        if isinstance(stage, dict) and stage.get("stage") == "llm" and isinstance(stage.get("steps"), int):
            return stage["steps"]
    max_steps = ((record or {}).get("hyperparameters") or {}).get("max_steps")
    return max_steps if isinstance(max_steps, int) and max_steps > 0 else None


def _results_attributable(parent: Path, step: int, run_record: dict | None) -> tuple[bool, str]:
    """Whether the output dir's final results describe the weights of `checkpoint-{step}`."""
    state = _read_json(parent / TRAINER_STATE_NAME)
    if state is not None:
        best = state.get("best_model_checkpoint")
        if best and Path(best).name != f"checkpoint-{step}":
            return False, f"the output dir's results may be of {Path(best).name} (best_model_checkpoint)"
        if state.get("global_step") == step:
            return True, ""
        return False, f"the output dir's results are for step {state.get('global_step')}, not {step}"
    final = _final_step(run_record)
    if final == step:
        return True, ""
    if final is not None:
        return False, f"the output dir's results are for step {final}, not {step}"
    return False, f"nothing ties the output dir's results to step {step}"


def read_checkpoint(checkpoint_dir: str | Path) -> CheckpointInfo:
    """Config, run record, eval results and training progress of a final model folder or a `checkpoint-N` folder.

    For `checkpoint-N`, results and the run record are looked for in the folder, then in its parent output dir; the
    output dir's final results are used only when they belong to step N. Its own `trainer_state.json` eval at step N
    is the last resort.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise HubPushError(f"{folder} is not a folder")
    config = _read_json(folder / CONFIG_NAME)
    if config is None:
        raise HubPushError(f"{folder} has no {CONFIG_NAME}: pass a model folder or a Trainer checkpoint-N folder")
    info = CheckpointInfo(folder=folder, config=config)
    step = _checkpoint_step(folder)
    parent = folder.parent if step is not None else None

    for place in (folder, parent):
        if place is not None and info.run_record is None:
            info.run_record = _read_json(place / RUN_RECORD_NAME)
            if info.run_record is not None:
                info.run_record_source = RUN_RECORD_NAME if place == folder else f"../{RUN_RECORD_NAME}"

    state = _read_json(folder / TRAINER_STATE_NAME) or (_read_json(parent / TRAINER_STATE_NAME) if parent else None)
    if state is not None:
        info.global_step, info.max_steps = state.get("global_step"), state.get("max_steps")
    if step is not None:  # Trainer names checkpoints by their step
        info.global_step = step

    def take(place: Path, prefix: str) -> bool:
        for name in RESULTS_NAMES:
            metrics = _eval_metrics(_read_json(place / name))
            if metrics:
                info.results, info.results_source = metrics, prefix + name
                return True
        record = _read_json(place / RUN_RECORD_NAME)
        metrics = _eval_metrics((record or {}).get("results"))
        if metrics:
            info.results, info.results_source = metrics, prefix + RUN_RECORD_NAME
            return True
        return False

    if take(folder, ""):
        return info
    if parent is not None:
        if any((parent / name).is_file() for name in (*RESULTS_NAMES, RUN_RECORD_NAME)):
            ok, why = _results_attributable(parent, step, info.run_record)
            if ok and take(parent, "../"):
                return info
            if not ok:
                info.notes.append(f"left the output dir's eval results out of the card: {why}")
        own_state = _read_json(folder / TRAINER_STATE_NAME) or {}
        evals = [entry for entry in own_state.get("log_history", []) if entry.get("step") == step]
        metrics = _eval_metrics({key: value for entry in evals for key, value in entry.items()})
        if metrics:
            info.results, info.results_source = metrics, f"{TRAINER_STATE_NAME} (eval at step {step})"
    return info


# --------------------------------------------------------------------------------------------- choosing files


def _module_references(data, found: list[tuple[str, str]], where: str) -> None:
    """Collects `module.Class` references of every `auto_map` (and custom pipeline `impl`) in a JSON tree."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "auto_map" and isinstance(value, dict):
                for auto_class, reference in value.items():
                    for item in reference if isinstance(reference, list) else [reference]:
                        if isinstance(item, str):
                            found.append((item, f"{where} auto_map {auto_class}"))
            elif key == "custom_pipelines" and isinstance(value, dict):
                for task, spec in value.items():
                    if isinstance(spec, dict) and isinstance(spec.get("impl"), str):
                        found.append((spec["impl"], f"{where} custom_pipelines {task}"))
            else:
                _module_references(value, found, where)
    elif isinstance(data, list):
        for item in data:
            _module_references(item, found, where)


def _relative_imports(path: Path) -> list[str]:
    """Module files (`x.py`) a code file imports relatively from its own folder (`from .x import y`)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise HubPushError(f"code file {path.name} does not parse: {error}") from error
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                modules.append(node.module)
            else:
                modules.extend(alias.name for alias in node.names)
    return [module.replace(".", "/") + ".py" for module in modules]


def _third_party_imports(paths: list[Path], own_modules: set[str]) -> list[str]:
    """Top-level packages the code files import (the model's runtime requirements), without stdlib and own files."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    names -= set(sys.stdlib_module_names) | own_modules | {"__future__"}
    return sorted(PIP_NAMES.get(name, name) for name in names)


def code_files(folder: Path, json_files: dict[str, dict]) -> list[str]:
    """The code files (relative names) the configs reference, plus what they import relatively, recursively."""
    references: list[tuple[str, str]] = []
    for name, data in json_files.items():
        _module_references(data, references, name)
    pending: list[tuple[str, str]] = []
    for reference, where in references:
        if "--" in reference:  # "other/repo--module.Class": code that lives in another repo
            continue
        module = reference.rsplit(".", 1)[0]
        pending.append((module.replace(".", "/") + ".py", f"{where} ({reference})"))
    files: list[str] = []
    while pending:
        name, why = pending.pop(0)
        if name in files:
            continue
        if not (folder / name).is_file():
            raise HubPushError(f"checkpoint {folder} is missing the code file {name}, named by {why}")
        files.append(name)
        pending.extend((imported, f"a relative import in {name}") for imported in _relative_imports(folder / name))
    return files


def _check_safetensors(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, refusing a truncated or non-safetensors file."""
    try:
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if not 2 <= header_size <= 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise HubPushError(f"{path} is not a readable safetensors file ({error})") from error
    if path.stat().st_size < 8 + header_size + end:
        needed = 8 + header_size + end
        raise HubPushError(f"{path} is truncated: {path.stat().st_size} bytes, its header needs {needed}")
    return {key: entry["shape"] for key, entry in header.items() if key != "__metadata__"}


def weight_files(folder: Path) -> list[str]:
    """`model.safetensors`, or the index and every shard it lists; pickled weights are refused."""
    index = _read_json(folder / WEIGHTS_INDEX_NAME)
    if (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    elif index is not None:
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise HubPushError(f"{folder / WEIGHTS_INDEX_NAME} lists no weight files")
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise HubPushError(f"checkpoint {folder} is missing weight shards {missing} listed in {WEIGHTS_INDEX_NAME}")
        files = [WEIGHTS_INDEX_NAME, *shards]
    else:
        pickles = sorted(
            path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES and path.name not in NOT_WEIGHTS
        )
        if pickles:
            raise HubPushError(
                f"checkpoint {folder} has only pickled weights ({', '.join(pickles)}); only safetensors are published: "
                "load the model and save it again with save_pretrained (safetensors is the default)"
            )
        raise HubPushError(f"checkpoint {folder} has no weights file ({WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME})")
    for name in files:
        if name.endswith(".safetensors"):
            _check_safetensors(folder / name)
    return files


def processor_files(folder: Path) -> list[str]:
    names = [name for name in PROCESSOR_FILES if (folder / name).is_file()]
    templates = folder / ADDITIONAL_CHAT_TEMPLATES
    if templates.is_dir():
        names += [f"{ADDITIONAL_CHAT_TEMPLATES}/{path.name}" for path in sorted(templates.glob("*.jinja"))]
    return names


# --------------------------------------------------------------------------------------------- model card


def _dataset_label(name: str, folder: Path | None = None) -> tuple[str, bool]:
    """(what the card calls a dataset, whether it is a Hub dataset id).

    A name that is a local folder (absolute, or relative to the working directory or to the checkpoint or any folder
    above it) is shown by its last component only, so the card does not leak local paths.
    """
    path = Path(name).expanduser()
    anchors = [Path.cwd()] + ([folder.resolve(), *folder.resolve().parents] if folder is not None else [])
    local = (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or any((anchor / path).is_dir() for anchor in anchors)
    )
    if local or not HUB_ID_RE.match(name):
        return path.name or name, False
    return name, True


def _dataset_names(part: dict) -> list[str]:
    """The dataset names of a run record data entry (train_trainer joins a mixture with commas)."""
    return [name.strip() for name in str(part.get("dataset") or "").split(",") if name.strip()]


def _datasets_label(part: dict, folder: Path | None) -> str | None:
    names = [_dataset_label(name, folder)[0] for name in _dataset_names(part)]
    return " + ".join(names) if names else None


def _describe_stage(stage) -> str:
    if not isinstance(stage, dict):
        return str(stage)
    details = ", ".join(f"{key} {value}" for key, value in stage.items() if key != "stage" and value is not None)
    return f"{stage.get('stage', 'stage')}" + (f" ({details})" if details else "")


def _cell(value) -> str:
    return "—" if value is None else f"`{value}`" if isinstance(value, str) else str(value)


def _format_count(count: int) -> str:
    return f"{count:,}"


def render_model_card(
    info: CheckpointInfo,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: str | None = "en",
    trainable_parameters: int | None = None,
    requirements: list[str] | None = None,
) -> str:
    """The README.md: YAML metadata and a description where every statement comes from the checkpoint's files."""
    config, record = info.config, info.run_record or {}
    # The config, not the run record, says which base models this model loads.
    audio_id, text_id = config.get("audio_model_id"), config.get("text_model_id")
    audio_revision, text_revision = config.get("audio_model_revision"), config.get("text_model_revision")
    audio_config, text_config = config.get("audio_config") or {}, config.get("text_config") or {}
    data = record.get("data") or {}
    train_data, eval_data = data.get("train") or {}, data.get("eval") or {}
    title = repo_id.split("/")[-1] if repo_id else info.folder.name

    metadata: dict = {}
    if license:
        metadata["license"] = license
    if language:
        metadata["language"] = [language]
    metadata["library_name"] = "transformers"
    metadata["pipeline_tag"] = "automatic-speech-recognition"
    base_models = [model_id for model_id in (audio_id, text_id) if model_id]
    if base_models:
        metadata["base_model"] = base_models
    hub_datasets = []
    for part in (train_data, eval_data):
        for name in _dataset_names(part):
            label, on_hub = _dataset_label(name, info.folder)
            if on_hub and label not in hub_datasets:
                hub_datasets.append(label)
    if hub_datasets:
        metadata["datasets"] = hub_datasets
    tags = ["tiny-audio", "speech-llm", "custom_code"]
    for sub_config in (audio_config, text_config):
        if sub_config.get("model_type") and sub_config["model_type"] not in tags:
            tags.append(sub_config["model_type"])
    metadata["tags"] = tags

    wer = info.results.get("eval_wer")
    # eval_wer_samples: clips the WER was computed on (train_trainer may use fewer than for eval_loss)
    samples = info.results.get("eval_wer_samples", info.results.get("eval_samples", eval_data.get("samples")))
    eval_label = _datasets_label(eval_data, info.folder)
    if wer is not None and eval_label:
        details = [
            f"{eval_data['split']} split" if eval_data.get("split") else "",
            f"{samples} samples" if samples else "",
        ]
        details = [detail for detail in details if detail]
        dataset_name = eval_label + (f" ({', '.join(details)})" if details else "")
        dataset = {"name": dataset_name, "type": eval_label}
        if eval_data.get("config"):
            dataset["config"] = eval_data["config"]
        if eval_data.get("split"):
            dataset["split"] = eval_data["split"]
        metrics = [{"type": "wer", "value": wer, "name": "WER"}]
        if _is_number(info.results.get("eval_cer")):
            metrics.append({"type": "cer", "value": info.results["eval_cer"], "name": "CER"})
        metadata["model-index"] = [
            {
                "name": title,
                "results": [
                    {
                        "task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
                        "dataset": dataset,
                        "metrics": metrics,
                    }
                ],
            }
        ]
    elif wer is not None:
        info.notes.append("no eval dataset in the run record: WER is in the card text but not in model-index")

    lines = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {title}", ""]
    lines.append(
        "A speech recognition model built with Tiny Audio: a Whisper audio encoder feeds a trained projector, whose "
        "output embeddings take the place of audio placeholder tokens in the prompt of a decoder-only language model "
        "that writes the transcript."
    )
    lines += ["", "## Architecture", ""]

    def base_line(role: str, model_id, revision, sub_config: dict, keys: tuple[str, ...]) -> str:
        if model_id:
            described = f"`{model_id}`"
        elif config.get("base_seed") is not None:
            described = f"random weights from seed {config['base_seed']} (a smoke-test base, not a pretrained model)"
        else:
            described = "randomly initialised"
        if model_id and revision:
            described += f" (revision `{revision}`)"
        details = ", ".join(f"{key} {sub_config[key]}" for key in keys if key in sub_config)
        model_type = sub_config.get("model_type")
        kind = f" — {model_type}" if model_type else ""
        return f"- **{role}**: {described}{kind}" + (f", {details}" if details else "")

    lines.append(base_line("Audio encoder", audio_id, audio_revision, audio_config, ("d_model", "encoder_layers")))
    projector = "- **Projector**: trained"
    if config.get("projector_hidden_size"):
        projector += f", hidden size {config['projector_hidden_size']}"
    lines.append(projector)
    lines.append(
        base_line(
            "Language model", text_id, text_revision, text_config, ("hidden_size", "num_hidden_layers", "vocab_size")
        )
    )
    lora_rank = config.get("lora_rank")
    if lora_rank:
        lines.append(f"- **LoRA adapters** on the language model: rank {lora_rank}, alpha {config.get('lora_alpha')}, "
                     f"modules {', '.join(config.get('lora_target_modules') or [])}")
    if trainable_parameters is None and _is_number(record.get("trainable_parameters")):
        trainable_parameters = record["trainable_parameters"]
    if trainable_parameters is not None:
        lines.append(f"- **Trainable parameters**: {_format_count(trainable_parameters)}")
    if config.get("trained_weights_only"):
        sources = []
        if audio_id or text_id:
            sources.append("downloaded from their Hub ids")
        if not (audio_id and text_id) and config.get("base_seed") is not None:
            sources.append(f"rebuilt from seed {config['base_seed']}")
        lines.append(
            "- **Weights in this repo**: only the trained weights; the encoder and language model are "
            + " or ".join(sources or ["rebuilt"]) + " when the model loads."
        )
    prompt = [f"system `{config['system_prompt']}`"] if config.get("system_prompt") else []
    if config.get("user_prompt"):
        prompt.append(f"user `{config['user_prompt']}`")
    if prompt:
        lines.append(f"- **Prompt**: {', '.join(prompt)}")

    lines += ["", "## Training", ""]
    if not record:
        lines.append("No training record (`training_run.json`) came with this checkpoint.")
    else:
        if record.get("preset"):
            lines.append(f"- **Preset**: `{record['preset']}`")
        if record.get("stages"):
            lines.append(f"- **Stages**: {'; '.join(_describe_stage(stage) for stage in record['stages'])}")
    if info.global_step is not None:
        progress = f"- **Optimizer steps**: {info.global_step}"
        if info.max_steps and info.max_steps != info.global_step:
            progress += f" of {info.max_steps}"
        lines.append(progress)
    for role, part in (("Training data", train_data), ("Evaluation data", eval_data)):
        if not part:
            continue
        lines += ["", f"### {role}", "", "| dataset | config | split | samples |", "|---|---|---|---|"]
        label = _datasets_label(part, info.folder)
        cells = [label, part.get("config"), part.get("split"), part.get("samples")]
        lines.append("| " + " | ".join(_cell(value) for value in cells) + " |")
        skipped = part.get("skipped")
        if isinstance(skipped, dict) and (skipped or _is_number(part.get("seen"))):
            counts = ", ".join(f"{key} {value}" for key, value in skipped.items()) or "none"
            seen = f" of {part['seen']} seen" if _is_number(part.get("seen")) else ""
            lines += ["", f"Examples skipped while loading{seen}: {counts}."]
    hyperparameters = record.get("hyperparameters") or {}
    if hyperparameters:
        lines += ["", "### Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in hyperparameters.items()]

    lines += ["", "## Results", ""]
    if info.results:
        where = ""
        if eval_label:
            where = f" on {eval_label}" + (f" ({eval_data['split']} split)" if eval_data.get("split") else "")
        lines.append(f"Measured{where} by the training run, from `{info.results_source}`:")
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                  for key, value in info.results.items()]
    else:
        lines.append("No evaluation results came with this checkpoint.")

    model_ref = repo_id or "OWNER/NAME"
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'asr = pipeline("automatic-speech-recognition", model="{model_ref}", trust_remote_code=True)',
        'print(asr("speech.wav")["text"])  # a file path, or a 16 kHz numpy array',
        "```",
    ]
    if requirements:
        lines += ["", f"The model code imports: {', '.join(f'`{name}`' for name in requirements)}."]

    lines += ["", "## Limitations", ""]
    lines.append("- Loading runs the Python code in this repo (`trust_remote_code=True`); review it before use.")
    if info.results and eval_label:
        lines.append(
            f"- {'WER was' if wer is not None else 'Results were'} measured on {eval_label} only"
            + (f" ({samples} samples)" if samples else "")
            + "; accuracy on other speakers, domains, accents, noise or languages has not been measured here."
        )
    else:
        lines.append("- No evaluation on a named dataset came with this checkpoint; its accuracy is unmeasured here.")
    if train_data.get("dataset"):
        lines.append(
            f"- Trained on {_datasets_label(train_data, info.folder)}"
            + (f" ({train_data['samples']} samples)" if train_data.get("samples") else "")
            + "; expect errors on speech unlike it."
        )
    if config.get("trained_weights_only") and (audio_id or text_id):
        lines.append("- Loading needs the base models from the Hub (network access or a local Hugging Face cache).")
    if not (audio_id and text_id):
        lines.append("- A base model here is random, not pretrained: this model is for testing the code path only.")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- assembling


@dataclass
class Assembly:
    """An upload folder: what was copied and from where, its card, and notes for the user."""

    export_dir: Path
    files: list[str]
    info: CheckpointInfo
    requirements: list[str]
    card_options: dict
    trainable_parameters: int | None = None
    verified: dict | None = None

    @property
    def notes(self) -> list[str]:
        return self.info.notes

    def write_card(self, trainable_parameters: int | None = None) -> str:
        if trainable_parameters is not None:
            self.trainable_parameters = trainable_parameters
        card = render_model_card(
            self.info,
            trainable_parameters=self.trainable_parameters,
            requirements=self.requirements,
            **self.card_options,
        )
        (self.export_dir / CARD_NAME).write_text(card, encoding="utf-8")
        return card

    def listing(self) -> list[tuple[str, int]]:
        return [(name, (self.export_dir / name).stat().st_size) for name in [*self.files, CARD_NAME]]


def _check_export_dir(source: Path, export_dir: Path) -> None:
    source, target = source.resolve(), export_dir.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise HubPushError(f"export dir {export_dir} must lie outside the checkpoint {source} (and not contain it)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HubPushError(f"export dir {export_dir} exists and is not empty: choose a new or empty folder")


def assemble(
    checkpoint_dir: str | Path,
    export_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: str | None = "en",
    trainable_parameters: int | None = None,
) -> Assembly:
    """Copies what the model repo needs from `checkpoint_dir` into the new or empty `export_dir` and writes its card.

    `checkpoint_dir` is a model folder (`save_pretrained` output, maybe with Trainer files) or a Trainer
    `checkpoint-N` folder; it is only read. A `checkpoint-N` without processor files takes them from its output dir.
    Raises `HubPushError` for a checkpoint that lacks its weights or code, or holds pickled weights only.
    """
    source, export_dir = Path(checkpoint_dir), Path(export_dir)
    info = read_checkpoint(source)
    _check_export_dir(source, export_dir)

    json_files = {CONFIG_NAME: info.config}
    processor_source = source
    processor_names = processor_files(source)
    if not processor_names and _checkpoint_step(source) is not None and processor_files(source.parent):
        processor_source, processor_names = source.parent, processor_files(source.parent)
        info.notes.append(f"processor and tokenizer files taken from the output dir {source.parent}")
    for name in processor_names:
        if name.endswith(".json"):
            json_files[name] = _read_json(processor_source / name)
    code = code_files(source, json_files)
    weights = weight_files(source)
    plan = [(name, source) for name in [CONFIG_NAME, *code, *weights]]
    plan += [(name, processor_source) for name in processor_names]
    if (source / GENERATION_CONFIG_NAME).is_file():
        plan.append((GENERATION_CONFIG_NAME, source))

    export_dir.mkdir(parents=True, exist_ok=True)
    for name, folder in plan:
        (export_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, export_dir / name)
    own_modules = {Path(name).stem for name in code}
    assembly = Assembly(
        export_dir=export_dir,
        files=sorted(name for name, _ in plan),
        info=info,
        requirements=_third_party_imports([export_dir / name for name in code], own_modules),
        card_options={"repo_id": repo_id, "license": license, "language": language},
        trainable_parameters=trainable_parameters,
    )
    assembly.write_card()
    return assembly


# --------------------------------------------------------------------------------------------- verifying

VERIFY_SCRIPT = r"""
import importlib.abc, json, sys

folder, blocked, expected_pipeline = sys.argv[1], set(filter(None, sys.argv[2].split(","))), sys.argv[3]


class BlockProjectModules(importlib.abc.MetaPathFinder):
    # The model's code must come from the folder itself, never from a copy that happens to be importable.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (only the folder's own code may load)", name=name)
        return None


sys.meta_path.insert(0, BlockProjectModules())
import numpy as np
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
if expected_pipeline and type(asr).__name__ != expected_pipeline:
    raise TypeError(f"pipeline() built {type(asr).__name__}, not the model's own {expected_pipeline}")
time = np.arange(16_000) / 16_000
clip = 0.3 * np.sin(2 * np.pi * 440 * time) + 0.01 * np.random.default_rng(0).standard_normal(time.size)
output = asr(clip.astype(np.float32))
if not isinstance(output, dict) or not isinstance(output.get("text"), str):
    raise TypeError(f"the pipeline returned {output!r}, not a dict with a 'text' string")
# What training updates: the model's own rule when it has one (requires_grad does not survive every load path).
is_trained = getattr(asr.model, "is_trained_weight", None)
named = list(asr.model.named_parameters())
trainable = sum(p.numel() for name, p in named if (is_trained(name) if is_trained else p.requires_grad))
requires_grad = sum(p.numel() for name, p in named if p.requires_grad)
print("HUB_PUSH_RESULT " + json.dumps({"text": output["text"], "trainable_parameters": trainable,
                                        "requires_grad_parameters": requires_grad, "total_parameters":
                                        sum(p.numel() for _, p in named), "model_class": type(asr.model).__name__,
                                        "pipeline_class": type(asr).__name__}))
"""


ANSI_ESCAPE_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _stderr_tail(stderr: str, lines: int = 15) -> str:
    """The last lines of a process's stderr without traceback frames or progress bars: what was logged, then the
    exception itself as the last line."""
    kept, in_traceback = [], False
    for line in ANSI_ESCAPE_RE.sub("", stderr).splitlines():
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
            continue
        if in_traceback and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        in_traceback = False
        if line.strip() and "it/s]" not in line and "s/it]" not in line:
            kept.append(line.rstrip())
    return "\n".join(kept[-lines:])


def verify(export_dir: str | Path, *, timeout: float = 1800) -> dict:
    """Loads `export_dir` with `pipeline(..., trust_remote_code=True)` in a fresh process and transcribes a clip.

    The process runs in an empty temporary directory with PYTHONPATH removed, a private transformers module cache,
    and the folder's module names and this project's modules blocked as top-level imports (an editable install
    would otherwise make them importable), so the folder's code must work from the folder alone. HF_HUB_OFFLINE and the other settings of
    the caller's environment carry over. Returns {"text", "trainable_parameters", "model_class", "pipeline_class"};
    raises `VerificationError` with the last lines of the process's stderr.
    """
    folder = Path(export_dir).resolve()
    config = _read_json(folder / CONFIG_NAME) or {}
    # The folder's code and every top-level module of this project (importable anyway once `pip install -e .`)
    modules = sorted({path.stem for path in [*folder.glob("*.py"), *Path(__file__).resolve().parent.glob("*.py")]})
    impl = ((config.get("custom_pipelines") or {}).get("automatic-speech-recognition") or {}).get("impl", "")
    expected_pipeline = impl.rsplit(".", 1)[-1] if impl and "--" not in impl else ""
    with tempfile.TemporaryDirectory(prefix="hub_push_verify_") as workdir:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(
            HF_MODULES_CACHE=str(Path(workdir) / "modules"),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONDONTWRITEBYTECODE="1",
        )
        command = [sys.executable, "-c", VERIFY_SCRIPT, str(folder), ",".join(modules), expected_pipeline]
        try:
            process = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as error:
            raise VerificationError(f"verification of {folder} timed out after {timeout:.0f} s") from error
    results = [line for line in process.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if process.returncode != 0 or not results:
        tail = _stderr_tail(process.stderr) or f"exit status {process.returncode}, no output"
        raise VerificationError(
            f"verification failed: {tail.splitlines()[-1]}\n{folder} does not load and transcribe with "
            f"pipeline(trust_remote_code=True) in a fresh process; its stderr ends with:\n{tail}"
        )
    return json.loads(results[-1][len(RESULT_MARKER) :])


def prepare(
    checkpoint_dir: str | Path,
    export_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: str | None = "en",
    timeout: float = 1800,
) -> Assembly:
    """`assemble`, then `verify`. The card's trainable parameter count is the run record's, else the count of the
    loaded model's trained weights (`ASRModel.is_trained_weight`)."""
    assembly = assemble(checkpoint_dir, export_dir, repo_id=repo_id, license=license, language=language)
    assembly.verified = verify(assembly.export_dir, timeout=timeout)
    measured = assembly.verified.get("trainable_parameters")
    recorded = (assembly.info.run_record or {}).get("trainable_parameters")
    if _is_number(recorded):
        if measured is not None and recorded != measured:
            assembly.notes.append(f"{RUN_RECORD_NAME} says {recorded} trainable parameters, the loaded model's trained "
                                  f"weights hold {measured}")
        assembly.write_card(trainable_parameters=recorded)
    elif measured is not None:
        assembly.write_card(trainable_parameters=measured)
    return assembly


# --------------------------------------------------------------------------------------------- uploading


def parse_repo_id(repo_id: str) -> str:
    """`owner/name` from a repo id or model URL; a dataset or Space id is refused (this uploads models)."""
    value = repo_id.strip().rstrip("/")
    value = re.sub(r"^https?://[^/]+/", "", value)
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "Space"), ("buckets/", "bucket")):
        if value.startswith(prefix):
            raise HubPushError(
                f"--repo-id {repo_id} names a {kind}, but hub_push uploads a model: use a model repo id OWNER/NAME"
            )
    value = value.removeprefix("models/")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", value) or ".." in value or "--" in value:
        raise HubPushError(f"--repo-id {repo_id!r} is not a model repo id of the form OWNER/NAME")
    return value


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors += [getattr(module, name) for name in names if isinstance(getattr(module, name, None), type)]
    return tuple(errors)


def _is_offline_error(error: BaseException) -> bool:
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled
    except ImportError:  # pragma: no cover
        return False
    return isinstance(error, OfflineModeIsEnabled)


def _is_transient(error: BaseException) -> bool:
    if _is_offline_error(error):
        return False
    status = _status(error)
    if status is not None:
        return status in RETRY_STATUS
    return isinstance(error, _network_errors())


def _server_message(error: BaseException) -> str:
    message = getattr(error, "server_message", None) or str(error)
    return " ".join(message.split())[:300]


def _explain(error: BaseException, repo_id: str, attempts: int) -> str:
    """A one-line, actionable message for an upload failure."""
    try:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover
        RepositoryNotFoundError = RevisionNotFoundError = ()  # noqa: N806
    owner = repo_id.split("/")[0]
    status = _status(error)
    if _is_offline_error(error):
        return "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset HF_HUB_OFFLINE and run again"
    if isinstance(error, RevisionNotFoundError):
        return f"revision not found on {repo_id}: {_server_message(error)}"
    if status == 401 and not isinstance(error, RepositoryNotFoundError):
        return (
            "the Hugging Face Hub rejected the token (401 Unauthorized): it is invalid or expired; "
            "run `hf auth login` or set HF_TOKEN to a valid token with write access"
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"model repo {repo_id} is not reachable with this token ({status or 'not found'}): check --repo-id, "
            f"and that the token may write to {owner} (`hf auth whoami`)"
        )
    if status == 403:
        return (
            f"no permission to write to {repo_id} (403 Forbidden): use a token with write access to {owner} "
            "(https://huggingface.co/settings/tokens), then `hf auth login` or set HF_TOKEN"
        )
    if status == 409:
        return f"conflict on {repo_id} (409): {_server_message(error)}"
    if status in RETRY_STATUS:
        return (
            f"the Hugging Face Hub kept failing ({status}) after {attempts} attempts: try again later "
            "(https://status.huggingface.co)"
        )
    if status is not None:
        return f"the Hugging Face Hub refused the upload to {repo_id} ({status}): {_server_message(error)}"
    if isinstance(error, _network_errors()):
        return (
            f"could not reach the Hugging Face Hub after {attempts} attempts ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}): check the network connection, proxy and HF_ENDPOINT, then retry"
        )
    return f"upload to {repo_id} failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"


def with_retries(
    call: Callable,
    *,
    attempts: int = 4,
    base_delay: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    describe: str = "request",
):
    """`call()`, retried with exponential backoff (base_delay, 2x, 4x ...) on connection errors, 5xx and 429."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:
            if attempt == attempts or not _is_transient(error):
                raise
            delay = base_delay * 2 ** (attempt - 1)
            print(f"{describe} failed ({_status(error) or type(error).__name__}); retry {attempt}/{attempts - 1} in "
                  f"{delay:.0f} s", file=sys.stderr)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def upload(
    export_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    attempts: int = 4,
    base_delay: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
):
    """Creates the model repo if needed (and the branch `revision`), then uploads `export_dir` in one commit.

    The token is `token` or `huggingface_hub.get_token()` (HF_TOKEN, `hf auth login`). Returns the CommitInfo.
    Raises `HubPushError` with a one-line message for a missing token, 401/403, a repo of another type, or a network
    failure; connection errors, 5xx and 429 are retried `attempts` times with exponential backoff.
    """
    import huggingface_hub

    repo_id = parse_repo_id(repo_id)
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubPushError(NO_TOKEN)
    api = huggingface_hub.HfApi(token=token)
    retry = {"attempts": attempts, "base_delay": base_delay, "sleep": sleep}
    try:
        repo_url = with_retries(
            lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"),
            describe="create_repo", **retry,
        )
        repo_type = getattr(repo_url, "repo_type", "model")
        if isinstance(repo_type, str) and repo_type != "model":
            raise HubPushError(
                f"{repo_id} exists on the Hub as a {repo_type} repo, not a model repo: choose another --repo-id"
            )
        if revision and revision != "main":
            with_retries(
                lambda: api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True),
                describe="create_branch", **retry,
            )
        return with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=str(export_dir),
                repo_type="model",
                revision=revision,
                commit_message=commit_message or "Upload Tiny Audio model",
                create_pr=create_pr,
            ),
            describe="upload_folder", **retry,
        )
    except HubPushError:
        raise
    except Exception as error:
        raise HubPushError(_explain(error, repo_id, attempts)) from error


def push_to_hub(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    license: str = "apache-2.0",
    language: str | None = "en",
    export_dir: str | Path | None = None,
    dry_run: bool = False,
    token: str | None = None,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = 1800,
):
    """assemble -> verify -> upload. Returns (Assembly, CommitInfo or None for a dry run).

    Without `export_dir` the folder is assembled in a temporary directory, removed afterwards.
    """
    import huggingface_hub

    repo_id = parse_repo_id(repo_id)
    if dry_run and export_dir is None:
        raise HubPushError("--dry-run needs --export-dir DIR to leave the assembled folder in")
    if not dry_run and not (token or huggingface_hub.get_token()):  # fail before the minutes of verification
        raise HubPushError(NO_TOKEN)
    with tempfile.TemporaryDirectory(prefix="hub_push_") as scratch:
        target = Path(export_dir) if export_dir is not None else Path(scratch) / repo_id.split("/")[-1]
        assembly = prepare(checkpoint_dir, target, repo_id=repo_id, license=license, language=language, timeout=timeout)
        if dry_run:
            return assembly, None
        commit = upload(
            target, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr,
            token=token, attempts=attempts, sleep=sleep,
        )
        return assembly, commit


# --------------------------------------------------------------------------------------------- command line


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", type=Path, help="final model folder or a Trainer checkpoint-N folder")
    parser.add_argument("--repo-id", required=True, help="model repo OWNER/NAME")
    parser.add_argument(
        "--private", action="store_true", help="create the repo as private (an existing repo keeps its visibility)"
    )
    parser.add_argument("--revision", help="branch to commit to (created when missing)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    parser.add_argument("--license", default="apache-2.0", help="license in the model card (default: apache-2.0)")
    parser.add_argument("--language", default="en", help="language in the model card (default: en)")
    parser.add_argument("--dry-run", action="store_true", help="assemble and verify only; needs --export-dir")
    parser.add_argument("--export-dir", type=Path, help="where to assemble the upload folder (new or empty)")
    parser.add_argument("--verify-timeout", type=float, default=1800, help="seconds allowed for verification")
    return parser


def main(argv: list[str] | None = None, *, sleep: Callable[[float], None] = time.sleep) -> int:
    args = build_parser().parse_args(argv)
    try:
        assembly, commit = push_to_hub(
            args.checkpoint_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            license=args.license,
            language=args.language,
            export_dir=args.export_dir,
            dry_run=args.dry_run,
            sleep=sleep,
            timeout=args.verify_timeout,
        )
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. an unreadable checkpoint file or a full disk while assembling
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for note in assembly.notes:
        print(f"note: {note}", file=sys.stderr)
    transcript = (assembly.verified or {}).get("text", "")
    print(f"verified: pipeline loads from a fresh process and transcribed a test tone as {transcript!r}")
    if args.dry_run:
        print(f"\nassembled {assembly.export_dir}:")
        for name, size in assembly.listing():
            print(f"  {size:>12,} B  {_size(size):>9}  {name}")
        print(f"\n{CARD_NAME}:\n")
        print((assembly.export_dir / CARD_NAME).read_text(encoding="utf-8"))
        return 0
    url = getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None)
    print(f"uploaded to {args.repo_id}" + (f": {url}" if isinstance(url, str) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
