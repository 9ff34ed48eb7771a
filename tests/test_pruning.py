"""The pruning layer on the toy teacher (random weights) and a tiny two-layers-per-block UNet."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from raybilevel.errors import UserError
from raybilevel.pruning import PRUNERS, load_student, model_stats, prune, save_student
from raybilevel.worlds.toy.models import build_teacher_unet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher() -> UNet2DConditionModel:
    return build_teacher_unet(0).requires_grad_(False)


@pytest.fixture(scope="module")
def two_layer_teacher() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    ).requires_grad_(False)


def inputs(size: int = 16, cross_dim: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(2, 3, size, size, generator=generator), "timestep": torch.tensor([3, 700]),
            "encoder_hidden_states": torch.randn(2, 12, cross_dim, generator=generator)}


def output(model: nn.Module, **kwargs: int) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(**kwargs)).sample


def block_outputs(model: UNet2DConditionModel) -> list[torch.Size]:
    shapes: list[torch.Size] = []

    def record(module: nn.Module, args: tuple, result: torch.Tensor | tuple) -> None:
        shapes.append((result[0] if isinstance(result, tuple) else result).shape)  # down blocks return tuples

    blocks = [*model.down_blocks, model.mid_block, *model.up_blocks]
    hooks = [block.register_forward_hook(record) for block in blocks]
    output(model)
    for hook in hooks:
        hook.remove()
    return shapes


def masked_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_unknown_method_lists_the_choices(teacher: UNet2DConditionModel) -> None:
    choices = "blocks, channels, load, magnitude, none"
    with pytest.raises(UserError, match=rf"unknown pruning method 'x'; choose one of: {choices}$"):
        prune("x", teacher, sparsity=0.5)
    with pytest.raises(UserError, match="out of range"):
        prune("channels", teacher, sparsity=1.0)


def test_none_is_a_trainable_copy(teacher: UNet2DConditionModel) -> None:
    student = prune("none", teacher, sparsity=0.5)
    assert student.model is not teacher and student.model.training
    assert all(p.requires_grad for p in student.model.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(output(student.model), output(teacher))
    assert student.description["stats"]["student"] == student.description["stats"]["teacher"]


def test_magnitude_prunes_each_layer_to_the_sparsity(teacher: UNet2DConditionModel) -> None:
    trainable_teacher = copy.deepcopy(teacher).requires_grad_(True)
    student = prune("magnitude", trainable_teacher, sparsity=0.5)
    assert torch.equal(output(trainable_teacher), output(teacher))
    for layer in masked_layers(student.model):
        assert int((layer.weight == 0).sum()) == round(0.5 * layer.weight.numel())
        assert "parametrizations.weight.0.mask" in dict(layer.named_buffers())
    stats = student.description["stats"]
    assert stats["student"]["params"] == stats["teacher"]["params"]
    assert stats["student"]["macs"] == stats["teacher"]["macs"]
    assert stats["student"]["nonzero_params"] < 0.51 * stats["teacher"]["nonzero_params"]


def test_magnitude_masked_weights_stay_zero_under_adamw(teacher: UNet2DConditionModel) -> None:
    student = prune("magnitude", teacher, sparsity=0.5)
    layers = masked_layers(student.model)
    masks = [layer.parametrizations.weight[0].mask.clone() for layer in layers]
    before = [layer.weight.detach().clone() for layer in layers]
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        student.model(**inputs()).sample.square().mean().backward()
        optimizer.step()
    for layer, mask, old in zip(layers, masks, before):
        assert torch.equal(layer.parametrizations.weight[0].mask, mask)
        assert torch.all(layer.weight[~mask] == 0)
        assert torch.all(layer.parametrizations.weight.original[~mask] == 0)  # even without apply_constraints
    changed = sum(int((layer.weight != old).sum()) for layer, old in zip(layers, before))
    assert changed > 0.4 * sum(mask.numel() for mask in masks)  # nearly all kept weights moved

    original = layers[0].parametrizations.weight.original
    with torch.no_grad():
        original.fill_(1.0)
    student.apply_constraints()
    assert torch.equal(original != 0, masks[0])


def test_channels_keeps_every_block_interface(teacher: UNet2DConditionModel) -> None:
    student = prune("channels", teacher, sparsity=0.5)
    assert output(student.model).shape == output(teacher).shape
    assert block_outputs(student.model) == block_outputs(teacher)
    resnets = [m for m in student.model.modules() if type(m).__name__ == "ResnetBlock2D"]
    widths = {(r.conv1.out_channels, r.norm2.num_channels, r.norm2.num_groups) for r in resnets}
    assert sorted(widths) == [(16, 16, 8), (32, 32, 8)]
    assert {m.heads for m in student.model.modules() if isinstance(m, Attention)} == {4}
    assert student.description["channels_removed"] == 0.5
    stats = student.description["stats"]
    assert stats["student"]["params"] < 0.6 * stats["teacher"]["params"]
    assert stats["student"]["macs"] < 0.65 * stats["teacher"]["macs"]
    assert json.loads(json.dumps(student.description))["layers"] == student.description["layers"]


def test_channels_cuts_a_group_at_the_same_indices(teacher: UNet2DConditionModel) -> None:
    student = prune("channels", teacher, sparsity=0.5).model
    mine, theirs = student.down_blocks[1].resnets[0], teacher.down_blocks[1].resnets[0]
    # Which teacher channel each student channel came from, read off conv1's rows.
    index = torch.cdist(mine.conv1.weight.flatten(1), theirs.conv1.weight.flatten(1)).argmin(1)
    assert torch.equal(mine.conv1.weight, theirs.conv1.weight[index])
    assert torch.equal(mine.norm2.weight, theirs.norm2.weight[index])
    assert torch.equal(mine.time_emb_proj.weight, theirs.time_emb_proj.weight[index])
    assert torch.equal(mine.conv2.weight, theirs.conv2.weight[:, index])
    assert torch.equal(index.view(8, 4) // 8, torch.arange(8).unsqueeze(1).expand(8, 4))  # 4 from each group of 8


def test_channels_at_zero_sparsity_is_the_teacher(teacher: UNet2DConditionModel) -> None:
    assert torch.equal(output(prune("channels", teacher, sparsity=0.0).model), output(teacher))


def test_blocks_removes_the_mid_block_and_saves_as_diffusers(teacher: UNet2DConditionModel, tmp_path: Path) -> None:
    student = prune("blocks", teacher, sparsity=0.5)
    assert student.model.mid_block is None and student.model.config.mid_block_type is None
    assert student.description["removed"] == ["mid_block"]
    stats = student.description["stats"]
    assert stats["student"]["params"] < 0.9 * stats["teacher"]["params"]
    student.model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path, use_safetensors=True)
    assert torch.equal(output(reloaded), output(student.model))


def test_blocks_drops_one_layer_per_stage(two_layer_teacher: UNet2DConditionModel, tmp_path: Path) -> None:
    student = prune("blocks", two_layer_teacher, sparsity=0.0)
    model = student.model
    assert [len(b.resnets) for b in model.down_blocks] == [1, 1]
    assert [len(b.resnets) for b in model.up_blocks] == [2, 2]
    assert len(model.down_blocks[1].attentions) == 1 and len(model.up_blocks[0].attentions) == 2
    assert student.description["removed"] == ["mid_block", "down_blocks.0.resnets.1", "down_blocks.1.resnets.1",
                                              "up_blocks.0.resnets.1", "up_blocks.1.resnets.1"]
    teacher_up = two_layer_teacher.up_blocks[0]
    assert torch.equal(model.up_blocks[0].resnets[1].conv1.weight, teacher_up.resnets[2].conv1.weight)
    assert torch.equal(model.up_blocks[0].attentions[1].proj_in.weight, teacher_up.attentions[2].proj_in.weight)
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path, use_safetensors=True)
    assert torch.equal(output(reloaded, size=8, cross_dim=8), output(model, size=8, cross_dim=8))


@pytest.mark.parametrize("method", ["none", "magnitude", "channels", "blocks"])
def test_save_and_load_are_exact(teacher: UNet2DConditionModel, tmp_path: Path, method: str) -> None:
    student = prune(method, teacher, sparsity=0.5)
    folder = tmp_path / "student"
    save_student(prune("none", teacher, sparsity=0.0), folder)
    save_student(student, folder)  # overwrites the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "student.json"]
    loaded = load_student(folder)
    assert loaded.description == json.loads(json.dumps(student.description))
    assert loaded.model.training and all(p.requires_grad for p in loaded.model.parameters())
    assert torch.equal(output(loaded.model), output(student.model))
    assert torch.equal(output(prune("load", teacher, sparsity=0.5, path=str(folder)).model), output(student.model))


def test_load_student_errors_are_one_line(teacher: UNet2DConditionModel, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"cannot load a student from {re.escape(str(tmp_path / 'nowhere'))} .*save_student"):
        load_student(tmp_path / "nowhere")
    folder = tmp_path / "student"
    save_student(prune("channels", teacher, sparsity=0.5), folder)
    description = json.loads((folder / "student.json").read_text())
    description["layers"]["conv_in"] = [8, 3, 3, 3]
    (folder / "student.json").write_text(json.dumps(description))
    with pytest.raises(UserError, match="size mismatch") as mismatch:
        load_student(folder)
    (folder / "student.json").write_text("{")
    with pytest.raises(UserError, match="JSONDecodeError") as corrupt:
        load_student(folder)
    assert "\n" not in str(mismatch.value) + str(corrupt.value)


def test_load_reads_diffusers_folders_and_refuses_pickles(
        teacher: UNet2DConditionModel, two_layer_teacher: UNet2DConditionModel, tmp_path: Path) -> None:
    teacher.save_pretrained(tmp_path / "unet", safe_serialization=True)
    student = prune("load", teacher, sparsity=0.5, path=str(tmp_path / "unet"))
    assert torch.equal(output(student.model), output(teacher))
    assert student.model.training and all(p.requires_grad for p in student.model.parameters())

    two_layer_teacher.save_pretrained(tmp_path / "other", safe_serialization=True)
    with pytest.raises(UserError, match="does not fit this teacher: sample_size is 8, the teacher's is 16"):
        prune("load", teacher, sparsity=0.5, path=str(tmp_path / "other"))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    bin_file = pickled / "diffusion_pytorch_model.bin"
    bin_file.write_bytes(b"")
    with pytest.raises(UserError, match=rf"{re.escape(str(bin_file))} is a pickle checkpoint.*safetensors"):
        prune("load", teacher, sparsity=0.5, path=str(pickled))
    with pytest.raises(UserError, match="model.ckpt is a pickle checkpoint"):
        prune("load", teacher, sparsity=0.5, path=str(tmp_path / "model.ckpt"))
    with pytest.raises(UserError, match="no student in"):
        prune("load", teacher, sparsity=0.5, path=str(tmp_path))


def test_model_stats_counts_convs_linears_and_attention() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.attn = Attention(query_dim=4, cross_attention_dim=32, heads=2, dim_head=2)

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            hidden = self.conv(sample).flatten(2).transpose(1, 2)
            return self.attn(hidden, encoder_hidden_states=encoder_hidden_states)

    model = Tiny()
    with torch.no_grad():
        model.conv.weight[0] = 0
    conv = 16 * 16 * 4 * 3 * 9
    projections = 256 * 4 * 4 * 2 + 12 * 32 * 4 * 2  # to_q, to_out; to_k, to_v
    matmuls = 2 * 256 * 12 * 4
    assert model_stats(model) == {"params": sum(p.numel() for p in model.parameters()),
                                  "nonzero_params": sum(p.numel() for p in model.parameters()) - 27,
                                  "macs": conv + projections + matmuls}


def test_every_method_is_registered() -> None:
    assert PRUNERS.names() == ["blocks", "channels", "load", "magnitude", "none"]
