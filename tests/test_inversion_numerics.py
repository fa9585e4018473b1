"""Numerics of the runtime inversion: the float64 retry keeps the damping, and the probe residual
catches float32 inverses that report success but are inaccurate. References are float64
``torch.linalg.inv`` of the same float32 values plus the damping."""

from __future__ import annotations

import pytest
import torch

from thor_planner.inversion import backends as inversion
from thor_planner.inversion.accuracy import accuracy_blocks
from thor_planner.inversion.backends import RESIDUAL_TOLERANCE, invert_groups, invert_stack, probe_residual
from thor_planner.partition import group_by_size, partition

RUNTIME_DAMPING = 0.03 ** 0.5  # the runtime adds sqrt(damping) with THOR's default damping 0.03


def raw_pixel_gram(size: int, rank: int, seed: int = 0) -> torch.Tensor:
    """A float32 Gram matrix of ``rank`` samples of raw 0–255 pixels (λmax ≈ 2e6 at size 147, the
    A factor of a 7×7×3 convolution fed unnormalised images): rank-deficient, badly conditioned."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (rank, size), generator=g).double()
    return (x.T @ x / rank).float()


def float64_inverse(blocks: torch.Tensor, damping: float) -> torch.Tensor:
    eye = torch.eye(blocks.shape[-1], dtype=torch.float64)
    return torch.linalg.inv(blocks.double() + damping * eye)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(x.double() - ref) / torch.linalg.matrix_norm(ref)


def test_float32_failure_is_redone_in_float64_at_the_same_damping() -> None:
    block = raw_pixel_gram(147, 60)
    damping = 0.03
    eye = torch.eye(147)
    assert int(torch.linalg.cholesky_ex(block + damping * eye).info) != 0  # float32 Cholesky fails here
    assert int(torch.linalg.cholesky_ex(block.double() + damping * eye.double()).info) == 0  # float64 does not
    good = accuracy_blocks(147, count=1, condition=10.0)[0]
    stack = torch.stack([good, block])
    ref = float64_inverse(stack, damping)
    out = invert_stack(stack, damping)
    assert out.dtype == torch.float32
    assert float(relative_error(out[1], ref[1])) < 1e-6  # the intended inverse, not a 10× damped one
    assert float(relative_error(out[0], ref[0])) < 1e-5
    groups = group_by_size([block], [partition(147, 147)])
    assert float(relative_error(invert_groups(groups, damping).stacks[147][0], ref[1])) < 1e-6


def test_the_damping_grows_only_when_float64_fails_too() -> None:
    indefinite = -2.0 * torch.eye(6)  # not positive definite at λ = 1 even in float64; at 10λ it is
    out = invert_stack(indefinite.unsqueeze(0), 1.0)
    torch.testing.assert_close(out[0].double(), float64_inverse(indefinite, 10.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", ["torch-cholesky", "torch-inv"])
def test_probe_residual_catches_a_float32_inverse_that_reports_success(backend: str) -> None:
    block = raw_pixel_gram(147, 60).unsqueeze(0)
    raw, ok = inversion.BACKENDS[backend](inversion.damp(block, RUNTIME_DAMPING))
    ref = float64_inverse(block, RUNTIME_DAMPING)
    assert bool(ok.all()) and float(relative_error(raw, ref)) > 0.05  # "success", several % off
    assert float(probe_residual(block, RUNTIME_DAMPING, raw)[0]) > 10 * RESIDUAL_TOLERANCE
    checked = invert_stack(block, RUNTIME_DAMPING, backend)
    assert float(relative_error(checked, ref)) < 1e-6
    unchecked = invert_stack(block, RUNTIME_DAMPING, backend, check=False)
    assert torch.equal(unchecked, raw)  # without the check: as computed


def test_probe_residual_is_small_for_correct_inverses_and_large_for_wrong_ones() -> None:
    blocks = accuracy_blocks(64, count=3, condition=100.0)
    exact = torch.linalg.inv(blocks.double() + 0.5 * torch.eye(64, dtype=torch.float64))
    assert float(probe_residual(blocks.double(), 0.5, exact).max()) < 1e-12
    assert float(probe_residual(blocks.double(), 0.5, exact * 1.01).min()) == pytest.approx(0.01, rel=1e-6)
    nan = torch.full_like(exact, float("nan"))
    out = invert_stack(blocks, 0.5, "torch-cholesky")
    assert float(relative_error(out, exact).max()) < 1e-5
    assert not bool((probe_residual(blocks, 0.5, nan) <= RESIDUAL_TOLERANCE).any())  # NaN fails the check


@pytest.mark.parametrize("backend", ["torch-cholesky", "torch-cholesky-solve", "torch-inv", "newton-schulz"])
def test_float32_is_kept_where_it_is_adequate(backend: str, monkeypatch) -> None:
    # Log-spaced spectra with κ = 1e4 (harsher than damped factor blocks): float32 inverses are
    # accurate to about 1e-4 and must pass the check, with no float64 redo.
    def no_repair(*args, **kwargs):
        raise AssertionError("a correct float32 inverse was sent to the float64 repair")

    monkeypatch.setattr(inversion, "_repair", no_repair)
    blocks = accuracy_blocks(256, count=2, condition=1e4)
    out = invert_stack(blocks, 0.0, backend)
    assert float(relative_error(out, float64_inverse(blocks, 0.0)).max()) < 3e-4
    assert float(probe_residual(blocks, 0.0, out).max()) < RESIDUAL_TOLERANCE / 2
