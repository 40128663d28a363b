"""Publish a trained Tiny Audio model (a final model folder or a Trainer `checkpoint-N` folder) on the Hugging Face Hub.

    python hub_push.py outputs/run/checkpoint-1000 --repo-id me/tiny-audio [--private] [--revision BRANCH]
        [--commit-message MSG] [--create-pr] [--license apache-2.0] [--dry-run --export-dir DIR]

`assemble` copies only what the model repo needs into a fresh folder and writes a model card from the checkpoint's
own files; `verify` loads that folder with `pipeline(..., trust_remote_code=True)` in a fresh process outside the
project; only then does `upload` push it in one commit. The checkpoint folder is only read.
"""

from __future__ import annotations

import argparse
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

import httpx2
import huggingface_hub
from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HfUriError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import parse_hf_uri
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_import_files

RUN_RECORD = "training_run.json"
TRAINER_STATE = "trainer_state.json"
RESULTS_FILES = ("eval_results.json", "all_results.json", RUN_RECORD)  # the run record keeps them under "results"
SCORES_FILE = "demo_results.json"  # `tiny_audio.demo`'s scores: synthetic test, real speech, non-speech
PROJECT_PACKAGE = "tiny_audio"  # installed by `pip install -e .`; shipped code must never need it
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
RETRY_STATUS = {429, 500, 502, 503, 504}
NO_TOKEN = "no Hugging Face token found: run `hf auth login` or set HF_TOKEN to a token with write access"


class HubPushError(Exception):
    """A problem the user can act on; the CLI prints its message (no traceback) and exits with status 1."""


class VerificationError(HubPushError):
    """The assembled folder does not load or transcribe in a fresh process."""


def _read_json(path: Path) -> dict | None:
    """The JSON in `path`, or None when there is no such file."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError as error:
        raise HubPushError(f"{path} is not valid JSON ({error})") from error


def _eval_metrics(data: dict | None) -> dict:
    """The eval_* numbers of a metrics dict, without timings."""
    return {
        key: value
        for key, value in (data or {}).items()
        if key.startswith("eval_")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not key.endswith(("_runtime", "_per_second"))
    }


@dataclass
class Checkpoint:
    """What a final model folder or a Trainer `checkpoint-N` folder (with its output dir) says about its weights."""

    folder: Path
    config: dict
    step: int | None = None  # N of a `checkpoint-N` folder, whose output dir is its parent
    run_record: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # eval_* metrics of these weights
    results_source: str | None = None
    scores: dict = field(default_factory=dict)  # `SCORES_FILE` of a final model folder
    notes: list[str] = field(default_factory=list)  # what was left out or taken from elsewhere, for the user

    @classmethod
    def read(cls, folder: str | Path) -> Checkpoint:
        """Config, run record, progress and eval results; a `checkpoint-N` also looks in its output dir."""
        folder = Path(folder).absolute()  # "." has no name, and a checkpoint-N is known by its name
        if not folder.is_dir():
            raise HubPushError(f"{folder} is not a folder")
        config = _read_json(folder / "config.json")
        if config is None:
            raise HubPushError(f"{folder} has no config.json: pass a model folder or a Trainer checkpoint-N folder")
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        checkpoint = cls(folder, config, step=int(match[1]) if match else None)
        places = [folder] if match is None else [folder, folder.parent]  # then the checkpoint's output dir
        checkpoint.run_record = next(filter(None, (_read_json(place / RUN_RECORD) for place in places)), {})
        checkpoint._find_results()
        if match is None:
            checkpoint.scores = _read_json(folder / SCORES_FILE) or {}
        return checkpoint

    def _find_results(self) -> None:
        """The folder's own results files; for `checkpoint-N` next the output dir's final results when its trainer
        state ties them to step N, else the checkpoint's own eval at step N."""
        if self._take_results(self.folder) or self.step is None:
            return
        output_dir = self.folder.parent
        final = _read_json(output_dir / TRAINER_STATE) or {}
        final_step, best = final.get("global_step"), final.get("best_model_checkpoint")
        if final_step == self.step and Path(best or self.folder).name == self.folder.name:
            if self._take_results(output_dir):
                return
        elif any((output_dir / name).is_file() for name in RESULTS_FILES):
            best = f", best {Path(best).name}" if best else ""
            self.notes.append(
                f"left the output dir's eval results out of the card: they are of the final model "
                f"(step {final_step}{best}), not of step {self.step}"
            )
        log = (_read_json(self.folder / TRAINER_STATE) or {}).get("log_history", [])
        self.results = _eval_metrics(
            {key: value for entry in log if entry.get("step") == self.step for key, value in entry.items()}
        )
        self.results_source = f"{TRAINER_STATE} (eval at step {self.step})"

    def _take_results(self, place: Path) -> bool:
        for name in RESULTS_FILES:
            data = _read_json(place / name) or {}
            metrics = _eval_metrics(data.get("results") if name == RUN_RECORD else data)
            if metrics:
                self.results, self.results_source = metrics, ("" if place == self.folder else "../") + name
                return True
        return False


def _code_references(data, where: str):
    """(`module.Class`, where it is named) for each `auto_map` entry and custom pipeline `impl` in a JSON tree."""
    if isinstance(data, list):
        data = dict(enumerate(data))
    for key, value in data.items() if isinstance(data, dict) else ():
        if key == "auto_map" and isinstance(value, dict):
            yield from (
                (reference, f"{where} auto_map {auto_class}")
                for auto_class, references in value.items()
                for reference in (references if isinstance(references, list) else [references])
                if reference
            )
        elif key == "custom_pipelines" and isinstance(value, dict):
            yield from (
                (spec["impl"], f"{where} custom_pipelines {task}") for task, spec in value.items() if "impl" in spec
            )
        else:
            yield from _code_references(value, where)


def code_files(folder: Path, json_files: dict[str, dict]) -> list[str]:
    """The code files the JSON files name (code of other repos, `repo--module.Class`, aside) and, as transformers
    finds them, the files those import relatively."""
    named = {}
    for json_name, data in json_files.items():
        for reference, where in _code_references(data, json_name):
            if "--" not in reference:
                named.setdefault(reference.rsplit(".", 1)[0].replace(".", "/") + ".py", f"{where} ({reference})")
    for name, why in named.items():
        if not (folder / name).is_file():
            raise HubPushError(f"checkpoint {folder} is missing the code file {name}, named by {why}")
    files = list(named)
    for name in named:
        try:
            files += [Path(path).name for path in get_relative_import_files(folder / name)]
        except FileNotFoundError as error:
            raise HubPushError(
                f"checkpoint {folder} is missing the code file {Path(error.filename).name}, imported by {name}"
            ) from error
    return list(dict.fromkeys(files))


def weight_files(folder: Path) -> list[str]:
    """`model.safetensors`; pickled, missing or truncated weights are refused (a model this size is not sharded)."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        if pickles := ", ".join(sorted(path.name for path in folder.glob("pytorch_model*.bin"))):
            raise HubPushError(
                f"checkpoint {folder} has only pickled weights ({pickles}); only safetensors are "
                "published: load the model and save it again with save_pretrained"
            )
        raise HubPushError(f"checkpoint {folder} has no weights file (model.safetensors)")
    try:
        with safe_open(weights, framework="np"):
            pass
    except Exception as error:
        raise HubPushError(f"{weights} is truncated or not a safetensors file ({error})") from error
    return [weights.name]


def _datasets(part: dict, folder: Path) -> tuple[str | None, list[str]]:
    """(what the card calls the datasets of a run record data entry, those that are Hub ids). A mixture is joined
    with commas; a local folder shows as its last component only, so the card leaks no local path."""
    labels, hub_ids, anchors = [], [], [Path.cwd(), folder.resolve(), *folder.resolve().parents]
    for name in filter(None, (name.strip() for name in str(part.get("dataset") or "").split(","))):
        local = name.startswith(("/", ".", "~")) or any((anchor / name).is_dir() for anchor in anchors)
        if not local and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name):
            hub_ids.append(name)
        labels.append(name if name in hub_ids else Path(name).name)
    return " + ".join(labels) or None, hub_ids


def _pairs(mapping: dict, skip: str = "") -> str:
    """`key value, ...` of a dict's scalar entries (no None, no lists such as a loss history)."""
    return ", ".join(
        f"{key} {value}" for key, value in mapping.items() if key != skip and isinstance(value, (str, int, float))
    )


def _cell(value) -> str:
    """A table cell: strings as code, a dash for None."""
    return "—" if value is None else f"`{value}`" if isinstance(value, str) else str(value)


def _table(header: tuple[str, ...], *rows: tuple) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(str, row)) + " |" for row in rows
    ]


def _metric_table(metrics: dict) -> list[str]:
    """A metric / value table of the scalar entries (a breakdown by condition stays in its file); floats to 4
    significant digits."""
    scalars = {key: value for key, value in metrics.items() if isinstance(value, (int, float, str))}
    rows = ((key, f"{value:.4g}" if isinstance(value, float) else value) for key, value in scalars.items())
    return _table(("metric", "value"), *rows)


def _base_model(config: dict, part: str, keys: tuple[str, ...]) -> str:
    """The audio or text base model: its Hub id or the seed of its random weights, then its shape."""
    model_id, revision, seed = (
        config.get(f"{part}_model_id"),
        config.get(f"{part}_model_revision"),
        config.get("base_seed"),
    )
    if model_id:
        source = f"`{model_id}`" + (f" (revision `{revision}`)" if revision else "")
    else:
        source = "random weights" + (f" from seed {seed}" if seed is not None else "") + " (a smoke-test base)"
    sub_config = config.get(f"{part}_config") or {}
    details = [sub_config.get("model_type")] + [f"{key} {sub_config[key]}" for key in keys if key in sub_config]
    return f"{source} — {', '.join(filter(None, details))}"


class _CardWriter:
    """The sections of a model card, each from the checkpoint's files; a field without a source is left out."""

    def __init__(self, checkpoint: Checkpoint, repo_id: str | None):
        self.checkpoint, self.repo_id = checkpoint, repo_id
        self.config, self.record, self.results = checkpoint.config, checkpoint.run_record, checkpoint.results
        data = self.record.get("data") or {}
        self.train, self.evaluation = data.get("train") or {}, data.get("eval") or {}
        self.train_label, self.train_ids = _datasets(self.train, checkpoint.folder)
        self.eval_label, self.eval_ids = _datasets(self.evaluation, checkpoint.folder)
        self.base_ids = [self.config.get(f"{part}_model_id") for part in ("audio", "text")]
        self.title = repo_id.split("/")[-1] if repo_id else checkpoint.folder.name
        self.split = self.evaluation.get("split")
        results = self.results
        self.samples = results.get("eval_wer_samples", results.get("eval_samples", self.evaluation.get("samples")))

    def eval_results(self) -> list[EvalResult] | None:
        """The model-index entry: the WER, on the evaluation data the run record names."""
        wer = self.results.get("eval_wer")
        if wer is None or not self.eval_label:
            return None
        details = ", ".join(
            filter(None, [self.split and f"{self.split} split", self.samples and f"{self.samples} samples"])
        )
        return [
            EvalResult(
                task_type="automatic-speech-recognition",
                task_name="Automatic Speech Recognition",
                dataset_type=self.eval_label,
                dataset_name=self.eval_label + (f" ({details})" if details else ""),
                dataset_config=self.evaluation.get("config"),
                dataset_split=self.split,
                metric_type="wer",
                metric_value=wer,
                metric_name="WER",
            )
        ]

    def metadata(self, license: str | None, language: str | None) -> ModelCardData:
        eval_results = self.eval_results()
        model_types = [(self.config.get(f"{part}_config") or {}).get("model_type") for part in ("audio", "text")]
        return ModelCardData(
            license=license or None,
            language=[language] if language else None,
            library_name="transformers",
            pipeline_tag="automatic-speech-recognition",
            base_model=list(filter(None, self.base_ids)) or None,
            datasets=list(dict.fromkeys(self.train_ids + self.eval_ids)) or None,
            tags=list(dict.fromkeys(["tiny-audio", "speech-llm", "custom_code", *filter(None, model_types)])),
            model_name=self.title if eval_results else None,
            eval_results=eval_results,
        )

    def architecture(self) -> list[str]:
        config, record = self.config, self.record
        items = {
            "Audio encoder": _base_model(config, "audio", ("d_model", "encoder_layers")),
            "Projector": "trained"
            + (f", hidden size {config['projector_hidden_size']}" if config.get("projector_hidden_size") else ""),
            "Language model": _base_model(config, "text", ("hidden_size", "num_hidden_layers", "vocab_size")),
            "LoRA adapters": config.get("lora_rank")
            and (
                f"on the language model, rank {config['lora_rank']}, alpha {config.get('lora_alpha')}, modules "
                f"{', '.join(config.get('lora_target_modules') or [])}"
            ),
            "Trained parameters": record.get("trained_parameters") and f"{record['trained_parameters']:,}",
            "Weights in this repo": config.get("trained_weights_only")
            and (
                "only the trained ones; on loading, each base model is downloaded from its Hub id (network or a local "
                "cache) or, without one, rebuilt from the seed"
            ),
        }
        return ["## Architecture", "", *(f"- **{name}**: {value}" for name, value in items.items() if value)]

    def training(self) -> list[str]:
        """Preset, stages and checkpoint step, then tables of the data and the hyperparameters."""
        record = self.record
        items = {
            "Preset": record.get("preset") and f"`{record['preset']}`",
            "Stages": "; ".join(f"{stage['stage']} ({_pairs(stage, 'stage')})" for stage in record.get("stages") or []),
            "Checkpoint": self.checkpoint.step is not None and f"after {self.checkpoint.step} optimizer steps",
        }
        lines = [
            "## Training",
            "",
            *([] if record else [f"No training record (`{RUN_RECORD}`) came with this checkpoint."]),
            *(f"- **{name}**: {value}" for name, value in items.items() if value),
        ]
        data = (("Training data", self.train, self.train_label), ("Evaluation data", self.evaluation, self.eval_label))
        for role, part, label in data:
            if part:
                row = tuple(map(_cell, (label, part.get("config"), part.get("split"), part.get("samples"))))
                lines += ["", f"### {role}", "", *_table(("dataset", "config", "split", "samples"), row)]
                if part.get("skipped"):
                    seen = f" of {part['seen']} seen" if part.get("seen") is not None else ""
                    lines += ["", f"Examples skipped while loading{seen}: {_pairs(part['skipped'])}."]
        if record.get("hyperparameters"):
            rows = ((key, _cell(value)) for key, value in record["hyperparameters"].items())
            lines += ["", "### Hyperparameters", "", *_table(("name", "value"), *rows)]
        return lines

    def results_section(self) -> list[str]:
        scores = self.checkpoint.scores
        if not (self.results or scores):
            return ["## Results", "", "No evaluation results came with this checkpoint."]
        lines = ["## Results"]
        if self.results:
            where = (
                f" on {self.eval_label}" + (f" ({self.split} split)" if self.split else "") if self.eval_label else ""
            )
            source = self.checkpoint.results_source
            lines += ["", f"Measured{where} by the training run, from `{source}`:", "", *_metric_table(self.results)]
        if scores:
            lines += [
                "",
                f"Scored after training by `python -m tiny_audio.demo` (synthetic test split, real recordings, "
                f"non-speech clips), from `{SCORES_FILE}`:",
                "",
                *_metric_table(scores),
            ]
        return lines

    def usage(self) -> list[str]:
        return [
            "## Usage",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'asr = pipeline("automatic-speech-recognition", model="{self.repo_id or "OWNER/NAME"}", '
            "trust_remote_code=True)",
            'print(asr("speech.wav")["text"])  # a file path, or a 16 kHz numpy array',
            "```",
        ]

    def limitations(self) -> list[str]:
        lines = [
            "## Limitations",
            "",
            "- Loading runs the Python code in this repo (`trust_remote_code=True`); review it before use.",
        ]
        scores = self.checkpoint.scores
        if "real_speech_wer" in scores:
            lines.append(
                f"- Real speech: {scores['real_speech_wer']:.1%} WER on {scores.get('real_speech_samples', 'a set of')} "
                "recordings of people never used in training; accuracy on other speakers, domains, accents, noise or "
                "languages is unknown."
            )
        elif self.results and self.eval_label:
            lines.append(
                f"- Measured on {self.eval_label} only"
                + (f" ({self.samples} samples)" if self.samples else "")
                + "; accuracy on other speakers, domains, accents, noise or languages is unknown."
            )
        if self.train_label:
            lines.append(f"- Trained on {self.train_label}; expect errors on speech unlike it.")
        if not all(self.base_ids):
            lines.append("- A base model here is random, not pretrained: this model is for testing the code path only.")
        return lines


def render_model_card(
    checkpoint: Checkpoint,
    *,
    repo_id: str | None = None,
    license: str | None = "apache-2.0",
    language: str | None = "en",
) -> ModelCard:
    """The README.md; every field comes from the checkpoint's files, and one without a source is left out."""
    card = _CardWriter(checkpoint, repo_id)
    if checkpoint.config.get("projector_output") == "ctc_tokens":
        handover = (
            "whose CTC readout reads the audio as the language model's own tokens; a decoder-only language model "
            "gets the embeddings of that reading in place of the audio placeholder tokens of its prompt and writes "
            "the transcript"
        )
    else:
        handover = (
            "whose output embeddings take the place of audio placeholder tokens in the prompt of a decoder-only "
            "language model that writes the transcript"
        )
    intro = f"A speech recognition model built with Tiny Audio: a Whisper audio encoder feeds a trained projector, {handover}."
    sections = [[f"# {card.title}"], [intro], card.architecture(), card.training(), card.results_section()]
    sections += [card.usage(), card.limitations()]
    body = "\n\n".join("\n".join(section) for section in sections)  # sections apart by a blank line
    return ModelCard(f"---\n{card.metadata(license, language).to_yaml()}\n---\n\n{body}\n")


@dataclass
class Assembly:
    """An upload folder: the files copied into it, the checkpoint they came from, and what verification saw."""

    export_dir: Path
    files: list[str]
    checkpoint: Checkpoint
    verified: dict | None = None


def assemble(
    checkpoint_dir: str | Path,
    export_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: str | None = "en",
) -> Assembly:
    """Copies what the model repo needs from `checkpoint_dir` into the new or empty `export_dir`, and writes the card.

    Raises `HubPushError` for missing or pickled weights, a missing code file, or an export dir in the way.
    """
    source, export_dir = Path(checkpoint_dir), Path(export_dir)
    checkpoint = Checkpoint.read(source)
    resolved, target = source.resolve(), export_dir.resolve()
    if target == resolved or resolved in target.parents or target in resolved.parents:
        raise HubPushError(f"export dir {export_dir} must lie outside the checkpoint {source} (and not contain it)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HubPushError(f"export dir {export_dir} exists and is not empty: choose a new or empty folder")

    processor_names = [name for name in PROCESSOR_FILES if (source / name).is_file()]
    json_files = {name: _read_json(source / name) for name in ["config.json", *processor_names] if ".json" in name}
    files = ["config.json", *code_files(source, json_files), *weight_files(source), *processor_names]
    files += ["generation_config.json"] if (source / "generation_config.json").is_file() else []
    for name in files:
        (export_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, export_dir / name)
    render_model_card(checkpoint, repo_id=repo_id, license=license, language=language).save(export_dir / "README.md")
    return Assembly(export_dir, sorted(files), checkpoint)


VERIFY_SCRIPT = r"""
import importlib.abc, json, sys

folder, blocked = sys.argv[1], set(sys.argv[2].split(","))


class BlockProjectModules(importlib.abc.MetaPathFinder):
    # The model's code must come from the folder itself, never from a copy that happens to be importable.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (only the folder's own code may load)", name=name)


sys.meta_path.insert(0, BlockProjectModules())
import numpy as np
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
impl = json.load(open(f"{folder}/config.json")).get("custom_pipelines", {}).get("automatic-speech-recognition", {})
if impl.get("impl") and type(asr).__name__ != impl["impl"].rsplit(".", 1)[-1]:
    raise TypeError(f"pipeline() built {type(asr).__name__}, not the model's own {impl['impl']}")
text = asr((0.3 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32))["text"]
print("HUB_PUSH_RESULT " + json.dumps({"text": str(text)}))
"""


def verify(export_dir: str | Path, *, timeout: float = 1800) -> dict:
    """Loads `export_dir` with `pipeline(..., trust_remote_code=True)` in a fresh process and transcribes a tone.

    The process runs in an empty directory without PYTHONPATH, a private module cache, and the folder's and this
    project's package blocked, so the code must work from the folder alone. Returns {"text"}.
    """
    folder = Path(export_dir).resolve()
    modules = sorted({path.stem for path in folder.glob("*.py")} | {PROJECT_PACKAGE})
    with tempfile.TemporaryDirectory(prefix="hub_push_verify_") as workdir:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(
            HF_MODULES_CACHE=str(Path(workdir) / "modules"),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            TQDM_DISABLE="1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        try:
            process = subprocess.run(
                [sys.executable, "-c", VERIFY_SCRIPT, str(folder), ",".join(modules)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as error:
            raise VerificationError(f"verification of {folder} timed out after {timeout:.0f} s") from error
    results = [line for line in process.stdout.splitlines() if line.startswith("HUB_PUSH_RESULT ")]
    if process.returncode != 0 or not results:
        # What was logged and the exceptions, without traceback frames (lines indented by two spaces)
        kept = [
            line.rstrip()
            for line in process.stderr.splitlines()
            if line.strip() and not line.startswith(("  ", "Traceback (most recent call last)"))
        ]
        tail = "\n".join(kept[-15:]) or f"exit status {process.returncode}, no output"
        raise VerificationError(
            f"verification failed: {kept[-1].strip() if kept else tail}\n{folder} does not load and transcribe with "
            f"pipeline(trust_remote_code=True) in a fresh process; its stderr ends with:\n{tail}"
        )
    return json.loads(results[-1].removeprefix("HUB_PUSH_RESULT "))


def prepare(
    checkpoint_dir: str | Path,
    export_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: str | None = "en",
    timeout: float = 1800,
) -> Assembly:
    """`assemble`, then `verify`."""
    assembly = assemble(checkpoint_dir, export_dir, repo_id=repo_id, license=license, language=language)
    assembly.verified = verify(assembly.export_dir, timeout=timeout)
    return assembly


def parse_repo_id(repo_id: str) -> str:
    """`owner/name` from a model repo id or URL; refuses dataset, Space and bucket ids."""
    try:
        uri = parse_hf_uri(repo_id if "://" in repo_id else "hf://" + repo_id)
    except HfUriError:
        uri = None
    if uri is not None and uri.type != "model":
        raise HubPushError(
            f"--repo-id {repo_id} names a {uri.type}, but hub_push uploads a model: use a model repo id OWNER/NAME"
        )
    if uri is None or uri.revision or uri.path_in_repo:
        raise HubPushError(f"--repo-id {repo_id!r} is not a model repo id of the form OWNER/NAME")
    return uri.id


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _is_network_error(error: BaseException) -> bool:
    return isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError)) and not isinstance(
        error, OfflineModeIsEnabled
    )


def _explain(error: BaseException, repo_id: str, attempts: int) -> str:
    """A one-line, actionable message for an upload failure."""
    status = _status(error)
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset HF_HUB_OFFLINE and run again"
    if status in (401, 403) or isinstance(error, RepositoryNotFoundError):  # 401: invalid token; 403: read-only
        return (
            f"no permission to write to {repo_id} ({status}): the token is invalid or has no write access to "
            f"{repo_id.split('/')[0]}; check --repo-id, then run `hf auth login` or set HF_TOKEN to a write token"
        )
    if status in RETRY_STATUS:
        return f"the Hugging Face Hub kept failing ({status}) after {attempts} attempts: try again later"
    if _is_network_error(error):
        return (
            f"could not reach the Hugging Face Hub after {attempts} attempts ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}): check the network connection, proxy and HF_ENDPOINT"
        )
    message = getattr(error, "server_message", None) or str(error)
    return f"upload to {repo_id} failed ({status or type(error).__name__}): {' '.join(message.split())[:300]}"


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
    """Creates the model repo if needed (and the branch `revision`), then uploads `export_dir` in one commit that
    replaces the branch's files, so that the repo holds exactly the verified folder (no file of an earlier push).

    A new repo without `private` takes its owner's default visibility; `private` refuses an existing public repo,
    whose visibility `create_repo` would leave as it is. The token is `token` or huggingface_hub's (HF_TOKEN,
    `hf auth login`). Each Hub call is retried with exponential backoff on network errors, 429 and 5xx. Returns the
    CommitInfo; raises `HubPushError` with a one-line message.
    """
    repo_id = parse_repo_id(repo_id)
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubPushError(NO_TOKEN)
    api = huggingface_hub.HfApi(token=token)

    def with_retries(name: str, call: Callable[[], object]):
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except Exception as error:
                if attempt == attempts or not (_status(error) in RETRY_STATUS or _is_network_error(error)):
                    raise HubPushError(_explain(error, repo_id, attempts)) from error
                delay = base_delay * 2 ** (attempt - 1)
                print(
                    f"{name} failed ({_status(error) or type(error).__name__}); retry {attempt}/{attempts - 1} "
                    f"in {delay:.0f} s",
                    file=sys.stderr,
                )
                sleep(delay)

    visibility = True if private else None  # False would make a new repo public whatever its owner's default
    with_retries("create_repo", lambda: api.create_repo(repo_id, private=visibility, exist_ok=True, repo_type="model"))
    if private and not with_retries("repo_info", lambda: api.repo_info(repo_id, repo_type="model")).private:
        raise HubPushError(f"{repo_id} exists and is public: make it private on the Hub first, or push elsewhere")
    if revision and revision != "main":
        with_retries(
            "create_branch", lambda: api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        )
    return with_retries(
        "upload_folder",
        lambda: api.upload_folder(
            repo_id=repo_id,
            folder_path=str(export_dir),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload Tiny Audio model",
            create_pr=create_pr,
            delete_patterns=["*"],  # huggingface_hub keeps .gitattributes
        ),
    )


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
    """assemble -> verify -> upload. Returns (Assembly, CommitInfo, or None for a dry run).

    Without `export_dir` the folder is assembled in a temporary directory, removed afterwards.
    """
    repo_id = parse_repo_id(repo_id)
    if dry_run and export_dir is None:
        raise HubPushError("--dry-run needs --export-dir DIR to leave the assembled folder in")
    Checkpoint.read(checkpoint_dir)  # a missing folder or config.json is reported before anything else
    if not dry_run and not (token or huggingface_hub.get_token()):  # before the minutes of verification
        raise HubPushError(NO_TOKEN)
    if not dry_run and constants.HF_HUB_OFFLINE:
        raise HubPushError(_explain(OfflineModeIsEnabled(), repo_id, attempts))
    with tempfile.TemporaryDirectory(prefix="hub_push_") as scratch:
        target = Path(export_dir) if export_dir is not None else Path(scratch) / repo_id.split("/")[-1]
        assembly = prepare(checkpoint_dir, target, repo_id=repo_id, license=license, language=language, timeout=timeout)
        if dry_run:
            return assembly, None
        return assembly, upload(
            target,
            repo_id,
            private=private,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            token=token,
            attempts=attempts,
            sleep=sleep,
        )


def main(argv: list[str] | None = None, *, sleep: Callable[[float], None] = time.sleep) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", type=Path, help="final model folder or a Trainer checkpoint-N folder")
    parser.add_argument("--repo-id", required=True, help="model repo OWNER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (created when missing)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    parser.add_argument("--license", default="apache-2.0", help="license in the model card")
    parser.add_argument("--language", default="en", help="language in the model card")
    parser.add_argument("--dry-run", action="store_true", help="assemble and verify only; needs --export-dir")
    parser.add_argument("--export-dir", type=Path, help="where to assemble the upload folder (new or empty)")
    parser.add_argument("--verify-timeout", type=float, default=1800, help="seconds allowed for verification")
    args = parser.parse_args(argv)
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
    except OSError as error:  # an unreadable checkpoint file or a full disk
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for note in assembly.checkpoint.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"verified: pipeline loads from a fresh process and transcribed a test tone as {assembly.verified['text']!r}")
    if args.dry_run:
        print(f"\nassembled {assembly.export_dir}:")
        for name in [*assembly.files, "README.md"]:
            print(f"  {(assembly.export_dir / name).stat().st_size:>12,} B  {name}")
        print(f"\nREADME.md:\n\n{(assembly.export_dir / 'README.md').read_text(encoding='utf-8')}")
        return 0
    url = getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None)
    print(f"uploaded to {args.repo_id}" + (f": {url}" if url else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
