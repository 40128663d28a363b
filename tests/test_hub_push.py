"""Tests for hub_push: assembling, verifying (in a fresh process) and uploading a model folder, with the Hub mocked."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import httpx2
import huggingface_hub
import pytest
import yaml
from huggingface_hub import RepoUrl
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import hf_raise_for_status

import hub_push
from tiny_audio.presets import build

ROOT = Path(__file__).resolve().parents[1]

REPO_ID = "tester/tiny-audio-test"
MODEL_FILES = {
    "config.json",
    "configuration_asr.py",
    "modeling_asr.py",
    "cpu_inference_asr.py",
    "processing_asr.py",
    "pipeline_asr.py",
    "model.safetensors",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}
TRAINER_JUNK = {
    "optimizer.pt": b"\x80\x04pickle",
    "scheduler.pt": b"\x80\x04pickle",
    "rng_state.pth": b"\x80\x04pickle",
    "training_args.bin": b"\x80\x04pickle",
    "pytorch_model.bin": b"\x80\x04pickle",
    "notes.txt": b"stray notes",
}
RUN_RECORD = {
    "preset": "tiny",
    "command": "python train_trainer.py --preset tiny",
    "base_models": {"audio": {"id": None, "revision": None}, "text": {"id": None, "revision": None}},
    "trained_parameters": 33088,
    "stages": [
        {"stage": "ctc_warmup", "steps": 10, "final_loss": 3.5, "loss": [{"ctc_step": 10, "ctc_loss": 3.5}]},
        {"stage": "llm", "steps": 40, "lora_rank": 0},
    ],
    "data": {
        "train": {
            "dataset": "tester/speech-corpus",
            "config": None,
            "split": "train",
            "samples": 6000,
            "skipped": {"undecodable": 1, "empty_transcript": 0, "non_finite": 0, "too_long": 2},
        },
        "eval": {"dataset": "tester/speech-corpus", "config": None, "split": "test", "samples": 200},
    },
    "hyperparameters": {
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": 40,
        "warmup_steps": 5,
        "lr_scheduler_type": "cosine",
        "bf16": False,
        "lora_rank": 0,
    },
    "results": {"eval_wer": 0.5, "eval_loss": 9.0, "eval_samples": 200},
}
ALL_RESULTS = {"eval_wer": 0.3125, "eval_loss": 1.25, "eval_samples": 200, "train_loss": 2.5}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def run_main(argv, sleep=None) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = hub_push.main([str(arg) for arg in argv], **({"sleep": sleep} if sleep else {}))
    return code, stdout.getvalue(), stderr.getvalue()


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    assert code != 0
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def hub_error(status: int, url: str = "https://huggingface.co/api/repos/create", **headers) -> HfHubHTTPError:
    """The exception huggingface_hub itself raises for such a response."""
    response = httpx2.Response(status, request=httpx2.Request("POST", url), headers=headers, text="{}")
    try:
        hf_raise_for_status(response)
    except HfHubHTTPError as error:
        return error
    raise AssertionError(f"no error for status {status}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny-random model with Trainer leftovers, a run record and eval results beside it."""
    folder = tmp_path_factory.mktemp("model") / "final"
    model, processor = build("tiny-random")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for name, content in TRAINER_JUNK.items():
        (folder / name).write_bytes(content)
    (folder / "training_run.json").write_text(json.dumps(RUN_RECORD))
    (folder / "all_results.json").write_text(json.dumps(ALL_RESULTS))
    return folder


@pytest.fixture(scope="module")
def dry_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "OUT"
    before = tree_hashes(model_dir)
    code, stdout, stderr = run_main([model_dir, "--repo-id", REPO_ID, "--dry-run", "--export-dir", out])
    assert code == 0, stderr
    assert tree_hashes(model_dir) == before
    return out, stdout, stderr


@pytest.fixture
def hub(monkeypatch):
    """huggingface_hub.HfApi replaced at the boundary, with a token available."""
    api_class = mock.MagicMock(name="HfApi")
    api = api_class.return_value
    api.create_repo.return_value = RepoUrl(f"https://huggingface.co/{REPO_ID}")
    api.upload_folder.return_value = mock.Mock(commit_url=f"https://huggingface.co/{REPO_ID}/commit/abc", pr_url=None)
    monkeypatch.setattr(huggingface_hub, "HfApi", api_class)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # `make test` runs offline
    return api_class


@pytest.fixture
def fake_verify(monkeypatch):
    """Upload-error tests do not need the fresh-process check; it is covered by the dry-run and push tests."""
    calls = []

    def verify(export_dir, timeout=None):
        calls.append(Path(export_dir))
        return {"text": ""}

    monkeypatch.setattr(hub_push, "verify", verify)
    return calls


# --------------------------------------------------------------------------------------------- dry run


def test_dry_run_exports_only_what_the_model_needs(dry_run, model_dir):
    out, stdout, _ = dry_run
    assert {path.name for path in out.iterdir()} == MODEL_FILES | {"README.md"}
    for name in MODEL_FILES:
        assert (out / name).read_bytes() == (model_dir / name).read_bytes(), name
    for name in ("optimizer.pt", "training_args.bin", "notes.txt", "pytorch_model.bin", "all_results.json"):
        assert not (out / name).exists()
    for name in MODEL_FILES | {"README.md"}:  # the listing names every file with its size
        assert f"{(out / name).stat().st_size:,} B" in next(line for line in stdout.splitlines() if line.endswith(name))
    assert "model-index:" in stdout and "## Usage" in stdout  # the card is printed


def test_export_loads_in_a_fresh_process_outside_the_repo(dry_run, tmp_path):
    out, stdout, _ = dry_run
    assert "verified: pipeline loads from a fresh process" in stdout
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        project = set(sys.argv[2].split(","))

        class NoProject(importlib.abc.MetaPathFinder):  # as if the project were not installed (`pip install -e .`)
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in project:
                    raise ModuleNotFoundError(name)

        sys.meta_path.insert(0, NoProject())
        import numpy as np
        from transformers import pipeline
        asr = pipeline("automatic-speech-recognition", model=sys.argv[1], trust_remote_code=True)
        t = np.arange(16000) / 16000
        clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(1).standard_normal(16000))
        result = asr(clip.astype(np.float32))
        assert isinstance(result["text"], str)
        print("OK", type(asr).__name__)
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    process = subprocess.run(
        [sys.executable, "-c", script, str(out), ",".join([*(path.stem for path in ROOT.glob("*.py")), "tiny_audio"])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "OK ASRPipeline" in process.stdout


def test_card_metadata_parses_and_carries_the_measured_wer(dry_run):
    out, _, _ = dry_run
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == ["en"]
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "automatic-speech-recognition"
    assert "base_model" not in meta  # tiny-random: the config names no pretrained base
    assert meta["datasets"] == ["tester/speech-corpus"]
    assert "tiny-audio" in meta["tags"]
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "automatic-speech-recognition"
    assert result["dataset"]["type"] == "tester/speech-corpus"
    assert result["dataset"]["split"] == "test"
    assert "200 samples" in result["dataset"]["name"]
    assert result["metrics"] == [{"type": "wer", "value": ALL_RESULTS["eval_wer"], "name": "WER"}]
    # huggingface_hub reads the same model-index
    parsed = huggingface_hub.ModelCard.load(out / "README.md")
    assert parsed.data.eval_results[0].metric_value == ALL_RESULTS["eval_wer"]
    assert parsed.data.eval_results[0].dataset_split == "test"
    body = card.split("---\n", 2)[2]
    assert "33,088" in body  # trainable parameters from the run record
    assert "| learning_rate | 0.001 |" in body and "| max_steps | 40 |" in body
    assert "too_long 2" in body and "ctc_warmup (steps 10, final_loss 3.5)" in body
    assert "| eval_wer | 0.3125 |" in body and "all_results.json" in body
    assert f'model="{REPO_ID}", trust_remote_code=True' in body
    assert "## Limitations" in body
    assert "None" not in card and "null" not in card


def test_card_from_config_and_run_record_fields():
    config = {
        "audio_model_id": "openai/whisper-tiny.en",
        "audio_model_revision": "abc123",
        "text_model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "trained_weights_only": True,
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_target_modules": ["q_proj", "v_proj"],
        "audio_config": {"model_type": "whisper"},
        "text_config": {"model_type": "llama"},
    }
    record = {
        "data": {
            "train": {"dataset": "/home/someone/data/speech_corpus,openslr/librispeech_asr", "split": "train"},
            "eval": {"dataset": "synthetic-tones", "split": "validation", "samples": 64},
        }
    }
    checkpoint = hub_push.Checkpoint(
        folder=Path("/nonexistent/run"),
        config=config,
        run_record=record,
        results={"eval_wer": 0.4, "eval_wer_samples": 16, "eval_loss": 2.0},
        results_source="eval_results.json",
    )
    card = str(hub_push.render_model_card(checkpoint, repo_id=REPO_ID, license="mit", language="en"))
    meta = front_matter(card)
    assert meta["license"] == "mit"
    assert meta["base_model"] == ["openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert meta["datasets"] == ["openslr/librispeech_asr"]  # neither the local folder nor an un-namespaced name
    assert meta["tags"][-2:] == ["whisper", "llama"]
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset == {
        "name": "synthetic-tones (validation split, 16 samples)",
        "type": "synthetic-tones",
        "split": "validation",
    }  # WER was computed on 16 clips, not all 64
    assert "/home/someone" not in card and "speech_corpus + openslr/librispeech_asr" in card
    assert "revision `abc123`" in card and "LoRA adapters" in card and "rank 8" in card
    assert "downloaded from its Hub id" in card
    assert "Trained parameters" not in card  # the run record does not say


def test_card_of_a_demo_model_reports_its_scores_and_how_its_llm_reads_the_audio(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    config = {"projector_output": "ctc_tokens", "audio_config": {"model_type": "whisper"}}
    (folder / "config.json").write_text(json.dumps(config))
    scores = {
        "test_wer": 0.3679,
        "real_speech_wer": 0.3413,
        "real_speech_samples": 45,
        "test_wer_by_condition": {"engine espeak": {"clips": 40, "wer": 0.64}},
    }
    (folder / "demo_results.json").write_text(json.dumps(scores))
    card = str(hub_push.render_model_card(hub_push.Checkpoint.read(folder)))
    assert "CTC readout reads the audio as the language model's own tokens" in card
    assert "take the place of audio placeholder tokens" not in card
    assert "from `demo_results.json`" in card and "| real_speech_wer | 0.3413 |" in card
    assert "| real_speech_samples | 45 |" in card and "No evaluation results" not in card
    assert "test_wer_by_condition" not in card  # a breakdown stays in its file
    assert "- Real speech: 34.1% WER on 45 recordings of people never used in training" in card


def test_card_leaves_out_what_has_no_source(model_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in MODEL_FILES:
        shutil.copy(model_dir / name, bare / name)
    assembly = hub_push.assemble(bare, tmp_path / "out")
    meta = front_matter((tmp_path / "out" / "README.md").read_text())
    # no base_model, datasets or model-index: nothing names them
    assert set(meta) == {"license", "language", "library_name", "pipeline_tag", "tags"}
    body = (tmp_path / "out" / "README.md").read_text()
    assert "Trained parameters" not in body and "Hyperparameters" not in body
    assert "No evaluation results came with this checkpoint." in body
    assert sorted(assembly.files) == sorted(MODEL_FILES)


# --------------------------------------------------------------------------------------------- checkpoint-N and push


def make_output_dir(model_dir: Path, root: Path, step: int = 40) -> Path:
    """A Trainer output dir: checkpoint-{step}/ with model + optimizer state, run record and results in the parent."""
    output = root / "run"
    checkpoint = output / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(model_dir / name, checkpoint / name)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (checkpoint / name).write_bytes(TRAINER_JUNK[name])
    evaluation = {"step": step, "eval_wer": 0.75, "eval_loss": 3.0}
    state = {"global_step": step, "max_steps": step, "log_history": [evaluation]}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (output / "trainer_state.json").write_text(json.dumps(state))
    (output / "training_run.json").write_text(json.dumps(RUN_RECORD))
    (output / "all_results.json").write_text(json.dumps(ALL_RESULTS))
    return checkpoint


def test_push_from_a_checkpoint_folder(model_dir, tmp_path, hub, fake_verify):
    checkpoint = make_output_dir(model_dir, tmp_path)
    before = tree_hashes(checkpoint.parent)
    uploaded = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        uploaded.update(files={p.name for p in folder.iterdir()}, card=(folder / "README.md").read_text())
        return mock.Mock(commit_url=None, pr_url=f"https://huggingface.co/{REPO_ID}/discussions/1")

    hub.return_value.upload_folder.side_effect = upload_folder
    argv = [checkpoint, "--repo-id", REPO_ID, "--private", "--revision", "dev", "--commit-message", "first model"]
    code, stdout, stderr = run_main([*argv, "--create-pr"])
    assert code == 0, stderr
    assert "discussions/1" in stdout

    hub.assert_called_once_with(token="hf_test_token")
    api = hub.return_value
    api.create_repo.assert_called_once_with(REPO_ID, private=True, exist_ok=True, repo_type="model")
    api.repo_info.assert_called_once_with(REPO_ID, repo_type="model")  # (a MagicMock's .private is truthy)
    api.create_branch.assert_called_once_with(REPO_ID, branch="dev", repo_type="model", exist_ok=True)
    api.upload_folder.assert_called_once()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == REPO_ID and kwargs["repo_type"] == "model"
    assert kwargs["revision"] == "dev" and kwargs["create_pr"] is True and kwargs["commit_message"] == "first model"
    assert kwargs["delete_patterns"] == ["*"]  # the repo holds the verified folder, no file of an earlier push
    assert not Path(kwargs["folder_path"]).exists()  # temporary upload folder removed
    assert uploaded["files"] == MODEL_FILES | {"README.md"}
    meta = front_matter(uploaded["card"])
    # the output dir's final results belong to step 40 (its trainer_state says so)
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == ALL_RESULTS["eval_wer"]
    assert "after 40 optimizer steps" in uploaded["card"]
    assert fake_verify == [Path(kwargs["folder_path"])]  # verified before the upload
    assert tree_hashes(checkpoint.parent) == before  # nothing in the output dir changed or appeared


def test_a_checkpoint_given_as_the_current_folder_is_still_a_checkpoint(model_dir, tmp_path, monkeypatch):
    checkpoint = make_output_dir(model_dir, tmp_path, step=20)
    monkeypatch.chdir(checkpoint)
    read = hub_push.Checkpoint.read(".")
    assert read.step == 20 and read.run_record == RUN_RECORD


def test_checkpoint_results_are_only_taken_when_they_belong_to_it(model_dir, tmp_path):
    checkpoint = make_output_dir(model_dir, tmp_path, step=20)
    state = json.loads((checkpoint.parent / "trainer_state.json").read_text())
    (checkpoint.parent / "trainer_state.json").write_text(json.dumps({**state, "global_step": 40}))
    assembly = hub_push.assemble(checkpoint, tmp_path / "out")
    # final results are for step 40: the card uses the checkpoint's own eval at step 20 instead
    assert assembly.checkpoint.results == {"eval_wer": 0.75, "eval_loss": 3.0}
    assert any("(step 40), not of step 20" in note for note in assembly.checkpoint.notes)
    assert (
        front_matter((tmp_path / "out" / "README.md").read_text())["model-index"][0]["results"][0]["metrics"][0][
            "value"
        ]
        == 0.75
    )


def test_main_default_push_without_revision(model_dir, hub, fake_verify):
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID])
    assert code == 0, stderr
    api = hub.return_value
    # no visibility sent: a new repo takes its owner's default, an organisation's private one included
    api.create_repo.assert_called_once_with(REPO_ID, private=None, exist_ok=True, repo_type="model")
    api.repo_info.assert_not_called()
    api.create_branch.assert_not_called()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["revision"] is None and kwargs["create_pr"] is False and kwargs["commit_message"]
    assert len(fake_verify) == 1


# --------------------------------------------------------------------------------------------- upload errors


def test_missing_token(model_dir, hub, fake_verify, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID])
    assert_one_line_error(code, stderr, "no Hugging Face token", "hf auth login", "HF_TOKEN")
    hub.assert_not_called()
    assert fake_verify == []  # refused before the slow verification


def test_private_push_to_an_existing_public_repo_is_refused(model_dir, hub, fake_verify):
    hub.return_value.repo_info.return_value = mock.Mock(private=False)
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID, "--private"])
    assert_one_line_error(code, stderr, f"{REPO_ID} exists and is public")
    hub.return_value.upload_folder.assert_not_called()


def test_offline_mode_is_refused_before_verification(model_dir, hub, fake_verify, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID])
    assert_one_line_error(code, stderr, "HF_HUB_OFFLINE is set")
    assert fake_verify == [] and not hub.return_value.upload_folder.called


@pytest.mark.parametrize(
    ("where", "error", "fragments"),
    [
        (
            "create_repo",
            lambda: hub_error(401, **{"X-Error-Message": "Invalid credentials in Authorization header"}),
            ("401", "hf auth login"),
        ),
        ("create_repo", lambda: hub_error(403), ("403", "write access", "tester")),
        (
            "upload_folder",
            lambda: hub_error(403, url=f"https://huggingface.co/api/models/{REPO_ID}/commit/main"),
            ("no permission to write", REPO_ID),
        ),
    ],
)
def test_permission_errors(model_dir, hub, fake_verify, where, error, fragments):
    getattr(hub.return_value, where).side_effect = error()
    sleeps = []
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID], sleep=sleeps.append)
    assert_one_line_error(code, stderr, *fragments)
    assert sleeps == []  # not retried
    if where == "create_repo":
        hub.return_value.upload_folder.assert_not_called()


@pytest.mark.parametrize("repo_id", [f"datasets/{REPO_ID}", f"https://huggingface.co/spaces/{REPO_ID}"])
def test_repo_id_of_another_type_is_refused_before_anything(model_dir, hub, fake_verify, repo_id):
    code, _, stderr = run_main([model_dir, "--repo-id", repo_id])
    assert_one_line_error(code, stderr, "uploads a model", "OWNER/NAME")
    hub.assert_not_called()
    assert fake_verify == []


def test_transient_errors_are_retried_then_succeed(model_dir, hub, fake_verify):
    api = hub.return_value
    api.create_repo.side_effect = [
        httpx2.ConnectError("connection refused"),
        RepoUrl(f"https://huggingface.co/{REPO_ID}"),
    ]
    api.upload_folder.side_effect = [
        hub_error(503, url=f"https://huggingface.co/api/models/{REPO_ID}/commit/main"),
        hub_error(429, url=f"https://huggingface.co/api/models/{REPO_ID}/commit/main"),
        mock.Mock(commit_url=f"https://huggingface.co/{REPO_ID}/commit/abc", pr_url=None),
    ]
    sleeps = []
    code, stdout, stderr = run_main([model_dir, "--repo-id", REPO_ID], sleep=sleeps.append)
    assert code == 0, stderr
    assert api.create_repo.call_count == 2 and api.upload_folder.call_count == 3
    assert sleeps == [2.0, 2.0, 4.0]  # exponential backoff per call
    assert f"{REPO_ID}/commit/abc" in stdout


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (
            lambda: httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
            "could not reach the Hugging Face Hub after 4 attempts",
        ),
        (
            lambda: hub_error(502, url=f"https://huggingface.co/api/models/{REPO_ID}/commit/main"),
            "kept failing (502) after 4 attempts",
        ),
    ],
)
def test_transient_errors_exhaust_retries(model_dir, hub, fake_verify, error, fragment):
    api = hub.return_value
    api.upload_folder.side_effect = error()
    sleeps = []
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID], sleep=sleeps.append)
    assert_one_line_error(code, stderr, fragment)
    assert api.upload_folder.call_count == 4
    assert sleeps == [2.0, 4.0, 8.0]  # exponential backoff


# --------------------------------------------------------------------------------------------- broken checkpoints


def copy_model(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    return target


def test_missing_weights_are_refused(model_dir, tmp_path, hub):
    broken = copy_model(model_dir, tmp_path / "no_weights")
    (broken / "model.safetensors").unlink()
    code, _, stderr = run_main([broken, "--repo-id", REPO_ID])
    assert_one_line_error(code, stderr, "has only pickled weights (pytorch_model.bin)", "save_pretrained")
    (broken / "pytorch_model.bin").unlink()
    code, _, stderr = run_main([broken, "--repo-id", REPO_ID])
    assert_one_line_error(code, stderr, "has no weights file (model.safetensors")
    hub.return_value.upload_folder.assert_not_called()


def test_truncated_weights_are_refused(model_dir, tmp_path, hub):
    broken = copy_model(model_dir, tmp_path / "truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, stderr = run_main([broken, "--repo-id", REPO_ID])
    assert_one_line_error(code, stderr, "model.safetensors is truncated")


@pytest.mark.parametrize(
    ("removed", "named_by"),
    [
        ("pipeline_asr.py", "config.json custom_pipelines automatic-speech-recognition"),
        ("configuration_asr.py", "config.json auto_map AutoConfig"),
    ],
)
def test_missing_code_file_is_refused(model_dir, tmp_path, hub, removed, named_by):
    broken = copy_model(model_dir, tmp_path / "no_code")
    (broken / removed).unlink()
    code, _, stderr = run_main([broken, "--repo-id", REPO_ID])
    assert_one_line_error(code, stderr, f"missing the code file {removed}", named_by)
    hub.return_value.upload_folder.assert_not_called()


def test_verification_refuses_code_that_needs_the_project(dry_run, tmp_path):
    """Code that imports a project module not shipped in the folder fails, even where the project is installed."""
    out, _, _ = dry_run
    folder = shutil.copytree(out, tmp_path / "export")
    modeling = folder / "modeling_asr.py"
    modeling.write_text("import tiny_audio.presets  # noqa: F401\n" + modeling.read_text())
    with pytest.raises(hub_push.VerificationError, match="tiny_audio") as error:
        hub_push.verify(folder)
    assert str(error.value).startswith("verification failed: ")


def test_config_that_does_not_fit_the_weights_is_refused_at_verification(model_dir, tmp_path, hub):
    broken = copy_model(model_dir, tmp_path / "wrong_projector")
    config = json.loads((broken / "config.json").read_text())
    config["projector_hidden_size"] = 32  # the saved projector is 64 wide
    (broken / "config.json").write_text(json.dumps(config))
    before = tree_hashes(broken)
    code, _, stderr = run_main([broken, "--repo-id", REPO_ID])
    assert code != 0 and "Traceback (most recent call last)" not in stderr
    assert stderr.startswith("error: verification failed: ")
    assert "size mismatch" in stderr and "projector.linear1.weight" in stderr
    hub.return_value.create_repo.assert_not_called()
    hub.return_value.upload_folder.assert_not_called()
    assert tree_hashes(broken) == before


def test_export_dir_must_be_new_and_outside_the_checkpoint(model_dir, tmp_path):
    with pytest.raises(hub_push.HubPushError, match="outside the checkpoint"):
        hub_push.assemble(model_dir, model_dir / "export")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(hub_push.HubPushError, match="not empty"):
        hub_push.assemble(model_dir, tmp_path / "busy")
    code, _, stderr = run_main([model_dir, "--repo-id", REPO_ID, "--dry-run"])
    assert_one_line_error(code, stderr, "--dry-run needs --export-dir")
