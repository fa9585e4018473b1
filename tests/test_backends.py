"""Inversion backends against a float64 reference, the accuracy check, and the per-size choice of
the fastest accurate backend (fake timings through the ``timer`` seam). GPU tests skip without CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from thor_planner.inversion import extra as extra_backends
from thor_planner.inversion.accuracy import ACCURACY_TOLERANCE, accuracy_blocks, backend_error, check_accuracy
from thor_planner.timing.backend_choice import (
    Selection, choose_backends, measured_timer, network_counts, select_for_model,
)
from thor_planner.inversion.extra import CUDA_ONLY, device_backends
from thor_planner.inversion.backends import BACKENDS, DEFAULT_BACKEND, invert_groups, invert_stack
from thor_planner.partition import group_by_size, partition

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
gpu = [pytest.mark.gpu, cuda]
CPU_BACKENDS = [n for n in sorted(BACKENDS) if n != "cupy"]  # cupy takes CUDA tensors only


def reference_inverse(blocks: torch.Tensor) -> torch.Tensor:
    """float64 inverses one block at a time (torch's batched CPU LU can hang after set_num_threads)."""
    return torch.stack([torch.linalg.inv(b.double()) for b in blocks])


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((torch.linalg.matrix_norm(x.double() - ref) / torch.linalg.matrix_norm(ref)).max())


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("size", [2, 7, 33])
def test_every_backend_matches_the_float64_inverse(name: str, size: int) -> None:
    blocks = accuracy_blocks(size, count=3, condition=100.0)
    inv, ok = BACKENDS[name](blocks)
    assert inv.shape == blocks.shape and inv.dtype == torch.float32 and bool(ok.all())
    assert relative_error(inv, reference_inverse(blocks)) <= ACCURACY_TOLERANCE


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_invert_stack_with_damping_matches_reference(name: str) -> None:
    blocks = accuracy_blocks(16, count=2, condition=50.0) - 0.03 * torch.eye(16)  # realistic: undamped + λ
    inv = invert_stack(blocks, 0.03, name)
    assert relative_error(inv, reference_inverse(blocks.double() + 0.03 * torch.eye(16, dtype=torch.float64))) <= 1e-4


def test_low_precision_variants_restore_the_global_matmul_flags() -> None:
    flags = torch.backends.cuda.matmul
    before = (flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction)
    try:
        flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction = True, True
        blocks = accuracy_blocks(8, count=2, condition=10.0)
        extra_backends.newton_schulz_tf32_inverse(blocks)
        extra_backends.newton_schulz_bf16_inverse(blocks)
        assert (flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction) == (True, True)
    finally:
        flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction = before


def test_device_backends_leave_cuda_only_ones_out_on_cpu() -> None:
    cpu = device_backends("cpu")
    assert cpu[0] == DEFAULT_BACKEND and not set(cpu) & CUDA_ONLY
    assert {"torch-cholesky", "torch-cholesky-solve", "torch-inv", "newton-schulz"} <= set(cpu)
    assert {"newton-schulz-tf32", "newton-schulz-bf16"} <= set(device_backends("cuda"))
    assert ("cupy" in BACKENDS) == extra_backends.cupy_available()


def test_cupy_backend_refuses_cpu_tensors_with_a_clear_message() -> None:
    with pytest.raises(ValueError) as err:  # raised before cupy is imported: runs without cupy too
        extra_backends.cupy_inverse(torch.eye(3).expand(2, 3, 3))
    assert str(err.value) == ("The cupy backend inverts CUDA tensors only, got a tensor on cpu: "
                              "move the factors to a CUDA device or choose a torch backend")


# ----------------------------------------------------------------------------- accuracy check


def _garbage(stack):
    return torch.ones_like(stack), torch.ones(stack.shape[0], dtype=torch.bool)


def _nan(stack):
    return torch.full_like(stack, math.nan), torch.ones(stack.shape[0], dtype=torch.bool)


def _raises(stack):
    raise RuntimeError("no kernel image for this device\nsecond line")


def test_accuracy_check_excludes_broken_backends_with_the_reason(monkeypatch) -> None:
    for name, fn in (("garbage", _garbage), ("nan", _nan), ("raises", _raises)):
        monkeypatch.setitem(BACKENDS, name, fn)
    accurate, excluded = check_accuracy(["torch-cholesky", "garbage", "nan", "raises", "torch-inv"], 8)
    assert accurate == ["torch-cholesky", "torch-inv"]
    by_name = {e["backend"]: e for e in excluded}
    assert set(by_name) == {"garbage", "nan", "raises"} and all(e["size"] == 8 for e in excluded)
    assert by_name["garbage"]["error"] == pytest.approx(backend_error("garbage", accuracy_blocks(8)))
    assert by_name["garbage"]["error"] > 0.5
    assert by_name["garbage"]["reason"] == f"relative error {by_name['garbage']['error']:.2e} > 0.0001"
    assert by_name["nan"] == {"backend": "nan", "size": 8, "error": None, "reason": "non-finite result"}
    assert by_name["raises"] == {"backend": "raises", "size": 8, "error": None,
                                 "reason": "raised RuntimeError: no kernel image for this device"}


def test_an_excluded_backend_is_never_timed_and_the_default_steps_in(monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS, "garbage", _garbage)
    timed = []
    sel = choose_backends({8: 3, 16: 2}, ["garbage", "torch-inv"], timer=lambda *a: timed.append(a) or 1.0)
    assert timed == []  # one accurate backend per size: nothing to compare
    assert sel.backends == {8: "torch-inv", 16: "torch-inv"}
    assert [(e["backend"], e["size"]) for e in sel.excluded] == [("garbage", 8), ("garbage", 16)]
    only_bad = choose_backends({8: 3}, ["garbage"], timer=lambda *a: 1.0)
    assert only_bad.backends == {8: DEFAULT_BACKEND} and only_bad.excluded[0]["backend"] == "garbage"


# ------------------------------------------------------------------------------- auto choice


def fake_timer(table: dict[tuple[str, int], float], calls: list | None = None):
    def timer(name: str, size: int, count: int) -> float:
        if calls is not None:
            calls.append((name, size, count))
        return table[name, size]
    return timer


def all_accurate(names, size):
    return list(names), []


def test_auto_picks_the_fastest_accurate_backend_per_size() -> None:
    table = {("a", 8): 3.0, ("b", 8): 1.0, ("c", 8): 2.0,
             ("a", 64): 1.0, ("b", 64): 2.0, ("c", 64): 0.5}

    def accuracy(names, size):  # c is inaccurate at 64, though fastest there
        bad = [n for n in names if (n, size) == ("c", 64)]
        return [n for n in names if n not in bad], [{"backend": n, "size": size, "error": 1.0, "reason": "x"} for n in bad]

    calls: list = []
    sel = choose_backends({1: 500, 8: 40, 64: 3}, ["a", "b", "c"], timer=fake_timer(table, calls), accuracy=accuracy,
                          work_cap=64**3 * 2)
    assert sel.backends == {1: "a", 8: "b", 64: "a"}
    assert sel.seconds == {8: {"a": 3.0, "b": 1.0, "c": 2.0}, 64: {"a": 1.0, "b": 2.0}}
    assert sel.excluded == [{"backend": "c", "size": 64, "error": 1.0, "reason": "x"}]
    assert {(n, s) for n, s, _ in calls} == {("a", 8), ("b", 8), ("c", 8), ("a", 64), ("b", 64)}
    assert sel.sample_counts == {8: 40, 64: 2}  # 64: capped at work_cap / 64³ blocks
    fields = sel.device_fields()
    assert fields["backends"] == {"1": "a", "8": "b", "64": "a"}
    assert fields["excluded"] == sel.excluded and fields["accuracy"]["tolerance"] == ACCURACY_TOLERANCE


def test_a_much_slower_backend_is_pruned_once_it_would_cost_real_time() -> None:
    table = {("fast", 16): 0.001, ("slow", 16): 0.1, ("fast", 32): 0.008, ("slow", 32): 0.8,
             ("fast", 64): 0.06}
    calls: list = []
    sel = choose_backends({16: 1, 32: 1, 64: 1}, ["fast", "slow"], timer=fake_timer(table, calls),
                          accuracy=all_accurate, prune_ratio=3.0, prune_seconds=1.0)
    # at 32 the slow one is predicted 0.1 s · 2³ = 0.8 s (< 1 s: tried), at 64 0.8 s · 2³ = 6.4 s (pruned)
    assert ("slow", 32, 1) in calls and ("slow", 64, 1) not in calls
    assert sel.pruned == [{"backend": "slow", "size": 64, "reason":
                           "100.0x slower than the best at size 32; about 6.4 s predicted here: "
                           "not tried at sizes >= 64"}]
    assert sel.backends == {16: "fast", 32: "fast", 64: "fast"}


def test_network_counts_take_every_size_at_its_largest_count() -> None:
    assert network_counts([10, 33], [1, 16]) == {1: 43, 10: 1, 16: 2}


def test_select_for_model_with_one_backend_only_checks_accuracy() -> None:
    sel = select_for_model([10, 33], [1, 16], "torch-inv", torch.device("cpu"))
    assert sel.backends == {1: "torch-inv", 10: "torch-inv", 16: "torch-inv"} and sel.seconds == {}
    assert isinstance(sel, Selection) and sel.excluded == []


def test_measured_timer_times_the_runtime_call() -> None:
    t = measured_timer(torch.device("cpu"), budget_s=0.01)("torch-cholesky", 8, 5)
    assert 0 < t < 1


def test_invert_groups_uses_the_per_size_mapping_and_repairs_failures(monkeypatch) -> None:
    used = []

    def spy(name):
        def fn(stack):
            used.append((name, stack.shape[-1]))
            if name == "nan":  # a failing backend: NaN, reported by its success mask
                return torch.full_like(stack, math.nan), torch.zeros(stack.shape[0], dtype=torch.bool)
            return BACKENDS["torch-cholesky"](stack)
        return fn

    monkeypatch.setitem(BACKENDS, "spy", spy("spy"))
    monkeypatch.setitem(BACKENDS, "nan", spy("nan"))
    factors = [accuracy_blocks(12, count=1, condition=10.0)[0], accuracy_blocks(8, count=1, condition=10.0)[0]]
    groups = group_by_size(factors, [partition(12, 8), partition(8, 8)])  # sizes 8 (×2) and 4
    out = invert_groups(groups, 0.01, {8: "spy", 4: "nan"})
    assert sorted(used) == [("nan", 4), ("spy", 8)]
    for size, stack in groups.stacks.items():  # NaN blocks repaired in float64 at the same damping
        ref = torch.linalg.inv(stack.double() + 0.01 * torch.eye(size, dtype=torch.float64))
        assert relative_error(out.stacks[size], ref) < 1e-5


# ------------------------------------------------------------------------------------- GPU


@pytest.mark.parametrize("name", [n for n in sorted(BACKENDS) if n != "garbage"])
@pytest.mark.gpu
@cuda
def test_every_backend_on_cuda_matches_the_float64_inverse(name: str) -> None:
    blocks = accuracy_blocks(64, count=4, condition=100.0, device="cuda")
    inv, ok = BACKENDS[name](blocks)
    assert inv.device.type == "cuda" and bool(ok.all())
    assert relative_error(inv, reference_inverse(blocks)) <= ACCURACY_TOLERANCE


@pytest.mark.gpu
@cuda
def test_cuda_accuracy_check_and_auto_choice_run_on_the_device() -> None:
    sel = choose_backends({16: 64, 256: 8}, device_backends("cuda"), torch.device("cuda"))
    assert set(sel.backends) == {16, 256} and all(n in BACKENDS for n in sel.backends.values())
    for size, times in sel.seconds.items():
        assert sel.backends[size] == min(times, key=times.__getitem__)


@pytest.mark.gpu
@cuda
def test_cuda_event_timing_measures_device_time() -> None:
    from thor_planner.timing.candidates import TimingConfig, _timed, measure

    cycles = 50_000_000  # ≈ 25–50 ms of spinning on one SM
    t = _timed(lambda: torch.cuda._sleep(cycles), torch.device("cuda"))
    assert 0.005 < t < 5
    times = measure(lambda: torch.cuda._sleep(cycles // 10), torch.device("cuda"),
                    TimingConfig(budget_s=0.05, min_repeats=3, max_repeats=5))
    assert len(times) >= 3 and all(x > 0 for x in times) and max(times) < t


@pytest.mark.gpu
@cuda
def test_cupy_backend_is_zero_copy_on_torchs_current_stream(monkeypatch) -> None:
    cupy = pytest.importorskip("cupy")
    assert "cupy" in BACKENDS
    blocks = accuracy_blocks(32, count=8, condition=100.0, device="cuda")
    assert cupy.from_dlpack(blocks).data.ptr == blocks.data_ptr()  # DLPack shares the memory
    seen = []
    real_inv = cupy.linalg.inv

    def recording_inv(a):
        seen.append((cupy.cuda.get_current_stream().ptr, a.data.ptr))
        return real_inv(a)

    monkeypatch.setattr(cupy.linalg, "inv", recording_inv)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        work = blocks * 1.0  # produced on the side stream: cupy must run after it, on the same stream
        inv, ok = BACKENDS["cupy"](work)
    side.synchronize()
    assert seen == [(side.cuda_stream, work.data_ptr())]  # torch's current stream, torch's memory
    assert inv.device.type == "cuda" and bool(ok.all())
    assert relative_error(inv, reference_inverse(blocks)) <= ACCURACY_TOLERANCE


def test_lu_backend_and_accuracy_reference_survive_set_num_threads() -> None:
    """After ``torch.set_num_threads(2)`` torch's batched CPU LU of blocks above 14 can fail in MKL
    and hang on Intel CPUs (pytorch/pytorch#141358): the torch-inv backend and the accuracy check's
    float64 reference must neither hang nor lose accuracy there (a fresh process, as a user's script)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2)\n"
            "from thor_planner.inversion.accuracy import accuracy_blocks, backend_error\n"
            "print(max(backend_error('torch-inv', accuracy_blocks(s, count=4)) for s in (256, 512)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "DLASWP" not in proc.stderr
    assert float(proc.stdout) <= ACCURACY_TOLERANCE
