"""The per-size backend choice is kept per device, torch and tool version, reused, and refreshed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import thor_planner.timing.backend_choice as choice
from thor_planner.timing.backend_cache import CACHE_ENV, BackendCache, cache_dir, cache_key
from thor_planner.timing.device import device_info

CPU = torch.device("cpu")
DIMS, CANDIDATES = [8, 20, 33], [1, 16]  # block sizes 1, 4 (20 = 16 + 4), 8 and 16


def test_cache_folder_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "thor-plan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "thor-plan"


def _cache(tmp_path: Path, backend: str = "auto", **device) -> BackendCache:
    info = {**device_info(CPU, backend), **device}
    return choice.backend_cache_for(CPU, info, backend) if not device else BackendCache(
        cache_key(info, ["torch-cholesky"], 0.1, "check", 1.0), tmp_path)


def test_choice_is_reused_and_refreshed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cache = _cache(tmp_path)
    first = choice.select_for_model(DIMS, CANDIDATES, "auto", CPU, cache=cache)
    assert first.measured == [4, 8, 16] and first.from_cache == []
    assert first.device_fields()["backends_cached"] is False
    assert cache.path.is_file() and cache.path.parent == tmp_path / "backends"

    def no_measuring(*args, **kwargs):
        raise AssertionError("a cached choice must not be measured again")

    with monkeypatch.context() as patch:
        patch.setattr(choice, "choose_backends", lambda counts, *a, **k: (
            no_measuring() if any(s > 1 for s in counts) else choice.Selection(backends={1: "torch-cholesky"})))
        again = choice.select_for_model(DIMS, CANDIDATES, "auto", CPU, cache=cache)
    assert again.backends == first.backends
    assert again.seconds == first.seconds and again.excluded == first.excluded
    assert again.from_cache == [4, 8, 16] and again.measured == []
    fields = again.device_fields()
    assert fields["backends_cached"] is True and fields["backend_sizes_measured"] == 0

    refreshed = choice.select_for_model(DIMS, CANDIDATES, "auto", CPU, cache=cache, refresh=True)
    assert refreshed.measured == [4, 8, 16] and refreshed.from_cache == []
    # a model with one more block size: only that size is measured
    # 45 = 16 + 16 + 13: a new size (13) and more blocks of 16 (another sample count): both measured
    more = choice.select_for_model(DIMS + [45], CANDIDATES, "auto", CPU, cache=cache)
    assert more.measured == [13, 16] and more.from_cache == [4, 8]


def test_unreadable_or_foreign_cache_files_are_ignored(tmp_path: Path) -> None:
    cache = _cache(tmp_path, threads=2)
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")
    assert cache.load() == {}
    assert cache.save({"16x4": {"backend": "torch-cholesky", "excluded": []}})
    assert cache.load() == {"16x4": {"backend": "torch-cholesky", "excluded": []}}
    other = _cache(tmp_path, threads=8)  # another key (thread count): another file, nothing shared
    assert other.path != cache.path and other.load() == {}
    doc = json.loads(cache.path.read_text())
    doc["key"]["torch"] = "0.0"
    cache.path.write_text(json.dumps(doc))
    assert cache.load() == {}


def test_unwritable_cache_folder_only_keeps_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = BackendCache(cache_key({"type": "cpu"}, ["torch-cholesky"], 0.1, "check", 1.0), blocker)
    assert cache.save({"16x4": {"backend": "torch-cholesky"}}) is False
    assert cache.load() == {}


def test_profile_records_whether_the_choice_was_cached(tiny_profile: list[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from test_cli import invoke

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    args = [*tiny_profile, "--candidates", "1,16", "--device", "cpu"]  # the CPU default backend: checked only
    cached = []
    for i, extra in enumerate([[], [], ["--refresh-backends"]]):
        result = invoke(*args, *extra, "--out", tmp_path / f"run{i}")
        assert result.exit_code == 0, result.output
        device = json.loads((tmp_path / f"run{i}" / "plan.json").read_text())["device"]
        cached.append((device["backends_cached"], device["backend_sizes_measured"] > 0))
    assert cached == [(False, True), (True, False), (False, True)]
