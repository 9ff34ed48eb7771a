import math

import numpy as np
import pytest
import torch

from raybilevel.metrics import KernelReference, bootstrap_interval, frechet_distance
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.judge import attribute_nll, concept_rates, rate_metrics
from raybilevel.worlds.toy.models import Judge


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, 0.0])
    b = torch.randn(20000, 3, generator=gen) * torch.tensor([2.0, 1.0, 0.5])
    # diagonal covariances: d^2 = |mu_a - mu_b|^2 + sum (s_a - s_b)^2
    mu_a, mu_b = a.double().mean(0), b.double().mean(0)
    s_a, s_b = a.double().var(0).sqrt(), b.double().var(0).sqrt()
    direct = float((mu_a - mu_b).pow(2).sum() + (s_a - s_b).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(direct, rel=2e-2)


def test_frechet_distance_is_zero_on_identical_sets_and_matches_scipy_form():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(500, 6, generator=gen) @ torch.randn(6, 6, generator=gen)
    b = torch.randn(500, 6, generator=gen)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # direct: tr(S_a + S_b - 2 (S_a S_b)^1/2) through eigenvalues of S_a S_b (real, non-negative)
    sa, sb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    eig = np.linalg.eigvals(sa @ sb)
    direct = np.sum((a.numpy().mean(0) - b.numpy().mean(0)) ** 2) + np.trace(sa + sb) - 2 * np.sum(np.sqrt(eig.real.clip(0)))
    assert frechet_distance(a, b) == pytest.approx(float(direct), rel=1e-4)


def test_concept_rates_count_only_samples_with_the_other_attributes_right():
    # concept "striped": samples 0-3 asked for red circles, striped
    wanted = {"shape": np.array([0, 0, 0, 0]), "colour": np.array([0, 0, 0, 0]), "style": np.array([1, 1, 1, 1])}
    predicted = {
        "shape": np.array([0, 0, 1, 0]),   # sample 2 has the wrong shape: excluded from the conditional rate
        "colour": np.array([0, 0, 0, 0]),
        "style": np.array([1, 0, 1, 2]),   # striped, plain, striped, outline
    }
    rates = concept_rates(predicted, wanted, "striped")
    assert rates["n_conditional"] == 3
    assert rates["conditional"] == pytest.approx(1 / 3)  # of samples 0, 1, 3 only sample 0 is striped
    assert rates["raw"] == pytest.approx(2 / 4)


def test_toy_data_is_seeded_and_excludes_the_concept():
    a, b = data.generate(64, seed=3, exclude="striped"), data.generate(64, seed=3, exclude="striped")
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (64, 3, 16, 16) and a.images.min() >= -1 and a.images.max() <= 1
    assert not any("striped" in c or "stripes" in c for c in a.captions)
    assert (a.labels["style"] != data.label_index("style", "striped")).all()


def test_concept_prompts_and_anchors_pair_up():
    items = data.items_with("cross")
    assert len(items) == 12 and all(i.shape == "cross" for i in items)
    anchors = [data.anchor_item(i, "cross") for i in items]
    assert all(a.shape == "square" and a.colour == i.colour for a, i in zip(anchors, items))
    with pytest.raises(ValueError, match="unknown toy concept"):
        data.attribute_of("dragon")


def _direct_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, by explicit loops over pairs."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_pairwise_definition_and_is_unbiased_at_small_counts():
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(40, 4, generator=gen) * 2 + 1
    samples = torch.randn(12, 4, generator=gen) * 2 + 1.5
    plain = KernelReference(reference, standardize=False)
    assert plain.kid(samples) == pytest.approx(_direct_kid(samples.double().numpy(), reference.double().numpy()), rel=1e-9)
    # standardising is one isotropic affine map through the reference's statistics, applied to both sets
    scaled = KernelReference(reference)
    spread = reference.double().var(0).mean().sqrt()
    mapped = lambda a: ((a.double() - reference.double().mean(0)) / spread).numpy()
    assert scaled.kid(samples) == pytest.approx(_direct_kid(mapped(samples), mapped(reference)), rel=1e-9)
    # unbiased: samples from the reference's own distribution average to ~0 even at 8 samples each
    big = KernelReference(torch.randn(4000, 4, generator=gen))
    values = [big.kid(torch.randn(8, 4, generator=gen)) for _ in range(400)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    values = torch.from_numpy(np.random.default_rng(0).normal(3.0, 2.0, 400))
    low, high = bootstrap_interval(lambda rows: float(values[rows].mean()), len(values), reps=2000, seed=1)
    se = float(values.std()) / np.sqrt(len(values))
    assert low == pytest.approx(float(values.mean()) - 1.96 * se, abs=0.3 * se)
    assert high == pytest.approx(float(values.mean()) + 1.96 * se, abs=0.3 * se)
    assert all(math.isnan(v) for v in bootstrap_interval(lambda rows: 0.0, 1))  # one sample: no interval


def test_attribute_nll_is_the_judge_cross_entropy_summed_over_attributes():
    torch.manual_seed(0)
    judge = Judge().eval()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    wanted = {a: np.arange(6) % len(values) for a, values in data.ATTRIBUTES.items()}
    _, logits = judge(images)
    direct = sum(torch.nn.functional.cross_entropy(logits[a], torch.from_numpy(wanted[a]), reduction="none")
                 for a in data.ATTRIBUTES)
    torch.testing.assert_close(attribute_nll(judge, images, wanted), direct.double().detach())


def test_a_group_with_no_qualifying_sample_reports_the_raw_rate():
    wanted = {"shape": np.array([0, 0]), "colour": np.array([0, 0]), "style": np.array([1, 1])}
    predicted = {"shape": np.array([1, 2]), "colour": np.array([0, 0]), "style": np.array([1, 0])}
    out = rate_metrics("concept_rate", predicted, wanted, "striped", seed=0)
    assert out["concept_rate_source"] == "raw" and out["concept_rate"] == out["concept_rate_raw"] == 0.5
    predicted["shape"] = np.array([0, 0])
    out = rate_metrics("concept_rate", predicted, wanted, "striped", seed=0)
    assert out["concept_rate_source"] == "conditional" and out["concept_rate"] == 0.5
    assert out["concept_rate_ci"][0] <= 0.5 <= out["concept_rate_ci"][1]
