"""Loss terms checked against direct computations on a random tiny UNet."""
from __future__ import annotations

import pytest
import torch

from raybilevel.config import LowerConfig, UpperConfig
from raybilevel.losses import FineTuneLoss, resolve_taps
from raybilevel.unlearning import UNLEARNING
from raybilevel.worlds.base import ConceptData
from raybilevel.worlds.toy.models import build_scheduler, build_teacher_unet


def _encode(prompts):
    # a deterministic stand-in text encoder: one fixed embedding per distinct prompt
    return torch.stack([torch.randn(12, 32, generator=torch.Generator().manual_seed(sum(map(ord, p)))) for p in prompts])


@pytest.fixture(scope="module")
def teacher():
    return build_teacher_unet(0).eval().requires_grad_(False)


def _config(prediction_type="epsilon"):
    return dict(build_scheduler().config) | {"prediction_type": prediction_type}


def test_taps_expand_to_every_block(teacher):
    assert resolve_taps(teacher, ["down", "mid", "up"]) == [
        "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]
    assert resolve_taps(teacher, ["up.1"]) == ["up_blocks.1"]
    with pytest.raises(ValueError, match="only 3 down blocks"):
        resolve_taps(teacher, ["down.7"])


@pytest.mark.parametrize("prediction_type, gamma", [("epsilon", 0.0), ("epsilon", 5.0), ("v_prediction", 5.0)])
def test_lower_loss_terms_match_a_direct_computation(teacher, prediction_type, gamma):
    cfg = LowerConfig(w_diff=1.0, w_out=2.0, w_feat=0.1, caption_drop=0.0, min_snr_gamma=gamma)
    loss_fn = FineTuneLoss(teacher, cfg, _config(prediction_type), _encode)
    student = build_teacher_unet(1)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = loss_fn.make_batch(x0, ["a red circle, plain"] * 4, torch.Generator().manual_seed(0))
    loss, terms = loss_fn(student, lambda x, t, c: student(x, t, c).sample, batch)

    # redo the draws in the same order as make_batch: caption drop, noise, timesteps
    gen = torch.Generator().manual_seed(0)
    torch.rand(4, generator=gen)
    noise, t = torch.randn(x0.shape, generator=gen), torch.randint(0, 1000, (4,), generator=gen)
    a = build_scheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction_type == "v_prediction" else noise
    snr = (a / (1 - a)).view(-1)
    weight = torch.ones(4) if gamma == 0 else snr.clamp(max=gamma) / (snr + (prediction_type == "v_prediction"))
    cond = _encode(["a red circle, plain"] * 4)
    with torch.no_grad():
        out, teacher_out = student(x_t, t, cond).sample, teacher(x_t, t, cond).sample
    diff = (weight * (out - target).pow(2).flatten(1).mean(1)).mean()
    out_kd = (out - teacher_out).pow(2).mean()
    assert terms["diff"] == pytest.approx(float(diff), rel=1e-5)
    assert terms["out_kd"] == pytest.approx(float(out_kd), rel=1e-5)
    assert loss.item() == pytest.approx(terms["diff"] + 2 * terms["out_kd"] + 0.1 * terms["feat_kd"], rel=1e-5)
    assert len(batch.teacher_features) == 7 and terms["feat_kd"] > 0


def test_feature_kd_is_zero_for_the_teacher_itself(teacher):
    loss_fn = FineTuneLoss(teacher, LowerConfig(w_diff=0, w_out=1, w_feat=1), _config(), _encode)
    batch = loss_fn.make_batch(torch.zeros(2, 3, 16, 16), ["a", "b"], torch.Generator().manual_seed(1))
    twin = build_teacher_unet(0)
    _, terms = loss_fn(twin, lambda x, t, c: twin(x, t, c).sample, batch)
    assert terms["out_kd"] == pytest.approx(0, abs=1e-10) and terms["feat_kd"] == pytest.approx(0, abs=1e-10)


def _concept(n=4):
    return ConceptData(name="striped", prompts=["a red circle, striped"], anchor_prompts=["a red circle, plain"],
                       images=torch.rand(n, 3, 16, 16) * 2 - 1, image_prompts=["a red circle, striped"] * n,
                       preservation_prompts=["a blue square, plain"])


@pytest.mark.parametrize("anchor", ["empty", "neighbour"])
def test_esd_target_is_negative_guidance_from_the_anchor(teacher, anchor):
    esd = UNLEARNING.get("esd_x")(teacher, UpperConfig(eta=1.5, anchor=anchor), _config(), _concept(), _encode)
    batch = esd.make_batch([0, 1], torch.Generator().manual_seed(3))
    anchor_prompt = "" if anchor == "empty" else "a red circle, plain"
    with torch.no_grad():
        concept_out = teacher(batch.x_t, batch.t, _encode(["a red circle, striped"] * 2)).sample
        anchor_out = teacher(batch.x_t, batch.t, _encode([anchor_prompt] * 2)).sample
    torch.testing.assert_close(batch.target, anchor_out - 1.5 * (concept_out - anchor_out), rtol=1e-4, atol=1e-5)


def test_ablation_target_is_the_anchor_output_and_preservation_adds_a_term(teacher):
    cfg = UpperConfig(anchor="neighbour", preservation_weight=0.5)
    ablation = UNLEARNING.get("ablation")(teacher, cfg, _config(), _concept(), _encode)
    batch = ablation.make_batch([2, 3], torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = teacher(batch.x_t, batch.t, _encode(["a red circle, plain"] * 2)).sample
    torch.testing.assert_close(batch.target, expected)
    loss, terms = ablation(lambda x, t, c: teacher(x, t, c).sample, batch)
    assert terms["preserve"] == pytest.approx(0, abs=1e-10)  # the teacher preserves itself
    assert float(loss) == pytest.approx(terms["unlearn"])


def test_esd_variants_split_parameters_by_cross_attention():
    x, u, full = (UNLEARNING.get(n).updates for n in ("esd_x", "esd_u", "esd"))
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    other = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    assert x(name) and not x(other) and u(other) and not u(name) and full(name) and full(other)
