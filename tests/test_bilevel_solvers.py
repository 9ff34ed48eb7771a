"""The bilevel solvers' update rules against direct computations (solvers/optim.py, bome, adaptive, joint)."""
from __future__ import annotations

import pytest
import torch

from raybilevel.solvers.optim import BilevelAdamW, barrier_lambda


def _params():
    gen = torch.Generator().manual_seed(0)
    upper = torch.nn.Parameter(torch.randn(5, generator=gen))
    rest = torch.nn.Parameter(torch.randn(3, generator=gen))
    return upper, rest


def _adam_direction(grad: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """AdamW's first-step direction m_hat / (sqrt(v_hat) + eps) with zero weight decay."""
    return grad / (grad.abs() + eps)


def _barrier_update(g_ft: dict, g_cu: torch.Tensor, *, lr: float, upper_lr: float, keep: float, lam_min: float):
    upper, rest = _params()
    opt = BilevelAdamW([{"params": [upper], "upper": True}, {"params": [rest], "upper": False}], lr=lr, weight_decay=0.0)
    before = upper.detach().clone(), rest.detach().clone()
    upper.grad, rest.grad = g_ft["upper"].clone(), g_ft["rest"].clone()
    opt.level = "stash"
    opt.step()
    upper.grad, rest.grad = g_cu.clone(), torch.full((3,), 7.0)  # the upper loss's gradient on `rest` must not count
    opt.upper_lr, opt.keep, opt.lam_min, opt.lam_max = upper_lr, keep, lam_min, 1e4
    opt.level = "barrier"
    opt.step()
    return upper.detach() - before[0], rest.detach() - before[1], opt.last_lambda


G_FT = {"upper": torch.tensor([1.0, -2.0, 0.5, 1.0, 3.0]), "rest": torch.tensor([0.3, -0.1, 2.0])}


def test_barrier_lambda_is_the_smallest_that_keeps_the_lower_decrease():
    lam = barrier_lambda(2.0, -3.0, lr=0.1, upper_lr=0.05, keep=0.5, lam_min=1.0, lam_max=1e4)
    # <d, g> = lr * 2 + (upper_lr / lam) * (-3) must equal keep * lr * 2 where it binds
    assert 0.1 * 2.0 + 0.05 / lam * -3.0 == pytest.approx(0.5 * 0.1 * 2.0)
    assert barrier_lambda(2.0, +3.0, lr=0.1, upper_lr=0.05, keep=0.5, lam_min=1.0, lam_max=1e4) == 1.0
    assert barrier_lambda(2.0, -0.01, lr=0.1, upper_lr=0.05, keep=0.5, lam_min=1.0, lam_max=1e4) == 1.0
    assert barrier_lambda(-1.0, -3.0, lr=0.1, upper_lr=0.05, keep=0.5, lam_min=1.0, lam_max=50.0) == 50.0


def test_barrier_step_is_lower_adam_plus_scaled_upper_adam_on_flagged_groups_only():
    conflict = -G_FT["upper"]  # erasing against fine-tuning: the barrier binds
    d_upper, d_rest, lam = _barrier_update(G_FT, conflict, lr=0.1, upper_lr=0.2, keep=0.5, lam_min=1.0)
    u_ft, u_cu = _adam_direction(G_FT["upper"]), _adam_direction(conflict)
    progress = float(u_ft @ G_FT["upper"]), float(u_cu @ G_FT["upper"])
    assert lam == pytest.approx(barrier_lambda(*progress, lr=0.1, upper_lr=0.2, keep=0.5, lam_min=1.0, lam_max=1e4))
    assert lam == pytest.approx(4.0)  # first Adam steps are sign steps: 0.2 * 7.5 / (0.5 * 0.1 * 7.5)
    torch.testing.assert_close(d_upper, -(0.1 * u_ft + 0.2 / lam * u_cu))
    torch.testing.assert_close(d_rest, -0.1 * _adam_direction(G_FT["rest"]))  # as a pure lower step
    # the combined step keeps exactly `keep` of the lower level's first-order decrease
    assert float(-d_upper @ G_FT["upper"]) == pytest.approx(0.5 * 0.1 * progress[0], rel=1e-5)


def test_doubling_lambda_halves_the_erasure_step_exactly():
    aligned = G_FT["upper"].flip(0).abs()  # no conflict: lambda stays at lam_min
    steps = {}
    for lam_min in (2.0, 4.0):
        d_upper, _, lam = _barrier_update(G_FT, aligned, lr=0.1, upper_lr=0.05, keep=0.5, lam_min=lam_min)
        assert lam == lam_min
        steps[lam_min] = d_upper + 0.1 * _adam_direction(G_FT["upper"])  # the erasure part of the step
    torch.testing.assert_close(steps[4.0], steps[2.0] / 2)
    assert steps[2.0].abs().sum() > 0


def test_joint_level_adds_the_upper_gradient_only_on_flagged_groups():
    upper, rest = _params()
    opt = BilevelAdamW([{"params": [upper], "upper": True}, {"params": [rest], "upper": False}], lr=0.1, weight_decay=0.0)
    before = rest.detach().clone(), upper.detach().clone()
    upper.grad, rest.grad = G_FT["upper"].clone(), G_FT["rest"].clone()
    opt.level = "stash"
    opt.step()
    upper.grad, rest.grad = torch.ones(5), torch.full((3,), -100.0)
    opt.level = "joint"
    opt.step()
    torch.testing.assert_close(rest.detach() - before[0], -0.1 * _adam_direction(G_FT["rest"]))
    torch.testing.assert_close(upper.detach() - before[1], -0.1 * _adam_direction(G_FT["upper"] + 1))
    assert all("stash" not in opt.state[p] for p in (upper, rest))  # nothing stays behind for checkpoints


def _barrier_on_a_partition(rank: int, world_size: int, init_file: str, out: str) -> None:
    """One rank of a 2-process group: the barrier step on this rank's half of the parameter vector."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    half = slice(rank * 3, rank * 3 + 3)
    upper = torch.nn.Parameter(torch.arange(6.0)[half].clone())
    opt = BilevelAdamW([{"params": [upper], "upper": True}], lr=0.1, weight_decay=0.0)
    opt.all_reduce = dist.all_reduce
    upper.grad = PARTITIONED_FT[half].clone()
    opt.level = "stash"
    opt.step()
    upper.grad = PARTITIONED_CU[half].clone()
    opt.upper_lr, opt.keep, opt.lam_min, opt.lam_max, opt.level = 0.2, 0.5, 1.0, 1e4, "barrier"
    opt.step()
    torch.save({"lambda": opt.last_lambda, "weights": upper.detach()}, f"{out}.{rank}")
    dist.destroy_process_group()


PARTITIONED_FT = torch.tensor([1.0, -2.0, 0.5, 1.0, 3.0, -1.0])
PARTITIONED_CU = torch.tensor([-1.0, 2.0, 0.5, -1.0, -3.0, 1.0])  # mostly against fine-tuning


def test_the_barrier_on_partitions_with_an_all_reduce_equals_the_whole_vector(tmp_path):
    """ZeRO hands each rank a disjoint partition: the inner products summed over ranks must give the
    lambda (and the step) of the unpartitioned vector."""
    import torch.multiprocessing as mp

    mp.spawn(_barrier_on_a_partition, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    parts = [torch.load(tmp_path / f"out.{rank}", weights_only=True) for rank in range(2)]
    whole = torch.nn.Parameter(torch.arange(6.0))
    opt = BilevelAdamW([{"params": [whole], "upper": True}], lr=0.1, weight_decay=0.0)
    whole.grad = PARTITIONED_FT.clone()
    opt.level = "stash"
    opt.step()
    whole.grad = PARTITIONED_CU.clone()
    opt.upper_lr, opt.keep, opt.lam_min, opt.lam_max, opt.level = 0.2, 0.5, 1.0, 1e4, "barrier"
    opt.step()
    assert opt.last_lambda > 1.0  # the barrier binds here
    assert parts[0]["lambda"] == parts[1]["lambda"] == pytest.approx(opt.last_lambda)
    torch.testing.assert_close(torch.cat([p["weights"] for p in parts]), whole.detach())


# ---- on the toy world, through the real engine (one world shared by every run of this module)
from dataclasses import asdict  # noqa: E402

from helpers import TINY  # noqa: E402
from raybilevel.config import load_config  # noqa: E402
from raybilevel.solvers.compute import plan, steps_for_budget  # noqa: E402
from raybilevel.train import build_run  # noqa: E402
from raybilevel.worlds import build_world  # noqa: E402

ERASING = ["alternating", "penalty", "adaptive", "bome", "joint", "two_stage"]


@pytest.fixture(scope="module")
def world():
    cfg = load_config(None, TINY)
    return build_world(cfg.world, cfg.seed, torch.device("cpu"))


class _Silenced:
    """The same upper loss with its gradient switched off (loss * 0): what moves without erasure."""

    def __init__(self, loss) -> None:
        self.loss = loss

    def __getattr__(self, name):
        return getattr(self.loss, name)

    def __call__(self, forward, batch):
        value, terms = self.loss(forward, batch)
        return value * 0, terms


def _build(tmp_path, world, solver: str, *extra: str):
    cfg = load_config(None, TINY + [f"solver.name={solver}", "solver.K=1", "deterministic=true", *extra])
    return build_run(cfg, tmp_path, world=world)


def _weights_after(tmp_path, world, solver: str, silenced: bool) -> dict[str, torch.Tensor]:
    """The student after the first iteration that erases (later ones start from different cross-attention
    weights, so every parameter's lower gradient differs)."""
    run = _build(tmp_path, world, solver)
    if silenced:
        run.solver.levels.upper_loss = _Silenced(run.solver.levels.upper_loss)
    for step in range(3 if solver == "two_stage" else 1):  # two_stage erases from step 2 of 4
        run.solver.iteration(step)
    return {k: v.detach().clone() for k, v in run.solver.student.module.state_dict().items()}


@pytest.mark.parametrize("solver", ERASING)
def test_esd_x_erasure_moves_only_cross_attention_in_every_solver(tmp_path, world, solver):
    erased = _weights_after(tmp_path / "a", world, solver, silenced=False)
    plain = _weights_after(tmp_path / "b", world, solver, silenced=True)
    cross = [k for k in erased if ".attn2." in k]
    assert cross and all(torch.equal(erased[k], plain[k]) for k in erased if k not in cross)
    assert any(not torch.equal(erased[k], plain[k]) for k in cross)


@pytest.mark.parametrize("solver", ERASING + ["distill_only"])
def test_planned_compute_equals_what_the_solver_spends(tmp_path, world, solver):
    run = _build(tmp_path, world, solver, "solver.K=2")
    for step in range(run.solver.levels.total_steps):
        run.solver.iteration(step)
    planned = plan(type(run.solver), run.cfg.solver, run.solver.levels, run.solver.levels.total_steps)
    assert asdict(planned) == asdict(run.solver.budget)
    macs = run.costs.of(run.solver.budget)
    assert steps_for_budget(type(run.solver), run.cfg.solver, run.solver.levels, run.costs, macs) == 4
    assert steps_for_budget(type(run.solver), run.cfg.solver, run.solver.levels, run.costs, macs - 1) == 3


def test_value_gap_uses_a_fresh_batch_and_is_zero_between_identical_models(tmp_path, world):
    run = _build(tmp_path, world, "penalty")
    levels = run.solver.levels
    assert set(levels.gap_sampler.indices(0, 0)) != set(levels.lower_sampler.indices(0, 0))
    gap, value = run.solver.value_gap(0)  # theta and vartheta are still the same weights
    assert gap == 0.0 and value > 0
