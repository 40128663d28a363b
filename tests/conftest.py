"""Shared fixtures: everything offline, models built in-process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]

SAMPLING_RATE = 16_000


def run_like_a_user(script: str, workdir: Path) -> str:
    """Runs `script` in a fresh Python process in `workdir`, offline and with nothing of this repo importable (as on a
    user's machine); the script must end by printing OK. Returns its output."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK"), result.stdout[-3000:]
    return result.stdout


def noise(seconds: float, seed: int = 0, rate: int = SAMPLING_RATE) -> np.ndarray:
    """Deterministic quiet noise: audio that is neither empty nor silent."""
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * rate))) * 0.1).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_random():
    """A tiny random model and its processor (offline tokenizer, seeded random bases)."""
    from tiny_audio.presets import build

    model, processor = build("tiny-random")
    return model.eval(), processor


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory) -> Path:
    """The smoke path: `train_trainer.py --preset tiny-random --max_steps 5` into a fresh folder."""
    from train_trainer import main

    output_dir = tmp_path_factory.mktemp("smoke")
    main(["--preset", "tiny-random", "--max_steps", "5", "--output_dir", str(output_dir)])
    return output_dir
