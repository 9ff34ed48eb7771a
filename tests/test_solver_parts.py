import torch

from raybilevel.solvers.data import EpochSampler
from raybilevel.solvers.optim import BilevelAdamW


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))


def test_bilevel_adamw_lower_level_equals_torch_adamw():
    a, b = _model(), _model()
    ours = BilevelAdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(16, 4)
    for _ in range(5):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_upper_steps_move_only_flagged_groups_and_keep_their_own_state():
    model = _model()
    first, second = list(model[0].parameters()), list(model[1].parameters())
    opt = BilevelAdamW([{"params": first, "upper": True}, {"params": second, "upper": False}], lr=1e-2)
    before = [p.clone() for p in second]
    model(torch.randn(8, 4)).sum().backward()
    opt.level = "upper"
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(second, before))
    state = opt.state[first[0]]
    assert state["upper.step"] == 1 and "lower.exp_avg" not in state
    opt.level = "lower"
    opt.step()
    assert state["lower.step"] == 1 and state["upper.step"] == 1
    assert not all(torch.equal(p, q) for p, q in zip(second, before))


def test_sampler_is_a_pure_function_of_step_and_splits_ranks():
    make = lambda rank: EpochSampler(10, 3, seed=7, stream="lower", rank=rank, world_size=2)
    s0, s1 = make(0), make(1)
    assert s0.indices(4, 0) == make(0).indices(4, 0)
    first_epoch = [i for step in range(0, 2) for s in (s0, s1) for i in s.indices(step, 0)]
    # 12 draws over 10 items: the first 10 are a permutation, ranks never overlap within a step
    assert sorted(first_epoch[:10]) == list(range(10))
    assert not set(s0.indices(0, 0)) & set(s1.indices(0, 0))
    g1, g2 = s0.generator(3, 0), make(0).generator(3, 0)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
