import numpy as np
import pytest
import torch

from raybilevel.metrics import frechet_distance
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.judge import concept_rates


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
