"""mL-BFGS against Newton's step on quadratics, written plainly here."""

from __future__ import annotations

import copy

import pytest
import torch

from thor_planner.optim.mlbfgs import MLBFGS, two_loop


def quadratic(n: int, seed: int, cond: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random SPD matrix with eigenvalues log-spaced in [1, cond] and a right-hand side (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (q * eig) @ q.T, torch.randn(n, generator=gen, dtype=torch.float64)


def run(a: torch.Tensor, b: torch.Tensor, steps: int, **options) -> tuple[MLBFGS, torch.Tensor, list]:
    """Minimise ½xᵀAx − bᵀx from x = 0; returns the optimizer, x, and per step (ḡ, direction)."""
    x = torch.zeros(len(b), dtype=torch.float64, requires_grad=True)
    opt = MLBFGS([x], **options)
    trace = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * x @ a @ x - b @ x).backward()
        opt.step()
        trace.append((opt.state[x]["avg_grad"].clone(), opt.direction().clone()))
    return opt, x.detach(), trace


def test_two_loop_with_one_pair_on_an_isotropic_quadratic_is_newtons_step() -> None:
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.3, 0.1, -4.0], dtype=torch.float64)
    # A = 3 I: y = 3 s, H_0 = sᵀy/yᵀy = 1/3 and the BFGS update keeps H = A⁻¹ exactly.
    assert torch.allclose(two_loop(g, [s], [3 * s]), g / 3)


def test_two_loop_matches_the_dense_bfgs_update() -> None:
    a, _ = quadratic(5, seed=1)
    gen = torch.Generator().manual_seed(2)
    pairs_s = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(3)]
    pairs_y = [a @ s for s in pairs_s]
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    s, y = pairs_s[-1], pairs_y[-1]
    h = torch.eye(5, dtype=torch.float64) * (s @ y) / (y @ y)
    for s, y in zip(pairs_s, pairs_y):  # H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, oldest pair first
        rho, eye = 1 / (y @ s), torch.eye(5, dtype=torch.float64)
        h = (eye - rho * torch.outer(s, y)) @ h @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
    assert torch.allclose(two_loop(g, pairs_s, pairs_y), h @ g)


def test_with_conjugate_pairs_spanning_the_space_the_step_is_newtons_step() -> None:
    a, _ = quadratic(6, seed=0)
    _, eigvecs = torch.linalg.eigh(a)  # A-conjugate directions: s_iᵀ A s_j = 0 for i ≠ j
    pairs_s = [eigvecs[:, i] * (i + 1) for i in range(6)]
    g = torch.linspace(-1, 2, 6, dtype=torch.float64)
    newton = torch.linalg.solve(a, g)
    assert not torch.allclose(two_loop(g, pairs_s[:5], [a @ s for s in pairs_s[:5]]), newton, atol=1e-3)
    assert torch.allclose(two_loop(g, pairs_s, [a @ s for s in pairs_s]), newton)


def test_the_newest_pair_is_inverted_exactly() -> None:
    a, b = quadratic(8, seed=0)
    opt, _, _ = run(a, b, steps=7, lr=1.0, momentum=0.0, history_size=8, update_every=1, damping=0.0)
    state = next(iter(opt.state.values()))
    s, y = state["history_s"][-1], state["history_y"][-1]
    assert torch.allclose(two_loop(y, state["history_s"], state["history_y"]), s)  # H y = s: Newton along s


@pytest.mark.parametrize("momentum, lr, steps", [(0.0, 1.0, 60), (0.5, 0.5, 300)])
def test_converges_where_gradient_descent_crawls(momentum: float, lr: float, steps: int) -> None:
    a, b = quadratic(8, seed=0, cond=1000.0)
    solution = torch.linalg.solve(a, b)
    _, x, _ = run(a, b, steps=steps, lr=lr, momentum=momentum, history_size=8, update_every=1, damping=0.0)
    assert (x - solution).norm() < 1e-3 * solution.norm()
    # gradient descent at its best fixed step 2 / (λmin + λmax) contracts by (κ − 1) / (κ + 1) = 999/1001 per step
    x_gd = torch.zeros(8, dtype=torch.float64)
    for _ in range(steps):
        x_gd -= 2 / 1001 * (a @ x_gd - b)
    assert (x_gd - solution).norm() > 1e-2 * solution.norm()


def test_averaged_pairs_are_exact_curvature_pairs_on_a_quadratic() -> None:
    a, b = quadratic(6, seed=3)
    opt, _, _ = run(a, b, steps=20, lr=0.05, momentum=0.9, history_size=4, update_every=3, damping=0.1)
    state = next(iter(opt.state.values()))
    assert len(state["history_s"]) == 4  # 20 // 3 = 6 pairs made, the newest 4 kept
    for s, y in zip(state["history_s"], state["history_y"]):
        assert torch.allclose(y, a @ s + 0.1 * s)


def test_first_step_is_sgd_on_the_gradient_and_weight_decay_is_added() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = MLBFGS([x], lr=0.1, weight_decay=0.5)
    (x ** 2).sum().backward()  # gradient 2x = [2, 4], plus 0.5 x = [0.5, 1]
    opt.step()
    assert torch.allclose(x.detach(), torch.tensor([1.0 - 0.25, 2.0 - 0.5]))


def test_state_dict_round_trip_continues_identically() -> None:
    a, b = quadratic(4, seed=4)
    x1 = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt1 = MLBFGS([x1], lr=0.3, update_every=2, history_size=3)

    def steps(opt, x, n):
        for _ in range(n):
            opt.zero_grad()
            (0.5 * x @ a @ x - b @ x).backward()
            opt.step()

    steps(opt1, x1, 7)
    x2 = x1.detach().clone().requires_grad_(True)
    opt2 = MLBFGS([x2], lr=0.3, update_every=2, history_size=3)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))  # as torch.save/load would
    steps(opt1, x1, 5)
    steps(opt2, x2, 5)
    assert torch.equal(x1, x2)


@pytest.mark.parametrize("options, message", [
    (dict(lr=0.0), "Invalid lr=0.0: must be > 0"),
    (dict(lr=0.1, momentum=1.0), "Invalid momentum=1.0: must be in [0, 1)"),
    (dict(lr=0.1, history_size=0), "Invalid history_size=0: must be an integer >= 1"),
    (dict(lr=0.1, update_every=0), "Invalid update_every=0: must be an integer >= 1"),
    (dict(lr=0.1, damping=-1.0), "Invalid damping=-1.0: must be >= 0"),
    (dict(lr=0.1, weight_decay=-1.0), "Invalid weight_decay=-1.0: must be >= 0"),
])
def test_invalid_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        MLBFGS([torch.zeros(1, requires_grad=True)], **options)
    assert str(err.value) == message


def test_a_non_finite_gradient_skips_the_step() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = MLBFGS([x], lr=0.1)
    x.grad = torch.tensor([float("nan"), 1.0])
    opt.step()
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))
    assert opt.state[x]["skipped_steps"] == 1 and "avg_grad" not in opt.state[x]


def test_train_config_passes_options_only_to_mlbfgs() -> None:
    from thor_planner.training.loop import TrainConfig, TrainConfigError, build_model, make_optimizer

    cfg = TrainConfig(model="mlp", optimizer="mlbfgs", momentum=0.5, options={"history_size": 3})
    opt = make_optimizer(cfg, build_model("mlp"))
    assert isinstance(opt, MLBFGS)
    assert opt.param_groups[0]["history_size"] == 3 and opt.param_groups[0]["momentum"] == 0.5
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(optimizer="sgd", options={"history_size": 3})
    assert str(err.value) == "Invalid options={'history_size': …}: not options of optimizer 'sgd' (it takes none)"
