"""Shared fixtures: one real ``thor-plan profile`` run of the tiny ``cnn`` model per test session."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

#: A profile of the tiny built-in conv net that takes about a second of measuring.
TINY_PROFILE = ["profile", "--model", "cnn", "--batches", "2", "--batch-size", "16", "--time-budget", "0.05"]


@dataclass(frozen=True)
class ProfileRun:
    """A finished ``thor-plan profile`` run: its output folder and what it printed."""

    folder: Path
    stdout: str
    stderr: str


def console_script() -> str:
    """The installed ``thor-plan`` entry point of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "thor-plan"
    return str(beside) if beside.exists() else (shutil.which("thor-plan") or "thor-plan")


@pytest.fixture(scope="session", autouse=True)
def private_backend_cache(tmp_path_factory: pytest.TempPathFactory):
    """Backend choices cached by runs under test go to a temporary folder, not the user's cache."""
    from thor_planner.timing.backend_cache import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_profile() -> list[str]:
    """``thor-plan`` arguments for a quick profile of the tiny cnn (add ``--out``)."""
    return list(TINY_PROFILE)


@pytest.fixture(scope="session")
def profiled_run(tmp_path_factory: pytest.TempPathFactory) -> ProfileRun:
    """The cnn profiled once, end to end through the console script. Read-only: copy to modify."""
    folder = tmp_path_factory.mktemp("profiled") / "cnn-cpu"
    proc = subprocess.run([console_script(), *TINY_PROFILE, "--device", "cpu", "--out", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"thor-plan profile failed ({proc.returncode}):\n{proc.stderr}"
    return ProfileRun(folder=folder, stdout=proc.stdout, stderr=proc.stderr)


@pytest.fixture(scope="session")
def profiled_dir(profiled_run: ProfileRun) -> Path:
    """The shared profile folder (plan.json, report.html, losses.csv, timings.csv). Do not modify."""
    return profiled_run.folder


@pytest.fixture
def profile_copy(profiled_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared profile folder that a test may rewrite."""
    return Path(shutil.copytree(profiled_dir, tmp_path / "run"))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second thread mostly waits for the first."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
