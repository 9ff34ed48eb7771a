"""Structured pruning of block-internal widths; every block keeps the teacher's input and output channels.

So feature distillation can compare student and teacher block outputs directly, only widths that stay
inside a block shrink, each as one group of layer axes that share a channel index:
  - ResnetBlock2D: conv1 out, norm2, time_emb_proj out, conv2 in; chosen per GroupNorm group (the same
    number from each), so channel counts stay divisible and each group keeps its own members;
  - attention: whole heads (to_q/to_k/to_v out, to_out.0 in), so head_dim and the scale stay;
  - FeedForward: the inner width (net.0.proj out, in both GEGLU halves; net.2 in).
Importance is the L1 norm of a channel's weights summed over its group; `sparsity` is the fraction of each
group's channels (heads) removed, rounded per group with at least one kept.

Why not torch-pruning: on this UNet it leaves to_q/k/v and GEGLU unpruned, prunes nothing when the
coupled layers are among `ignored_layers` or do not require grad, and sizes GroupNorm groups its own way
(ratio 0.3 took a 32-wide block to 16 and a 64-wide one to 40). The three groups above are explicit here,
and the same per-layer shapes that rebuild the student (`load_student`) come straight out of it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from raybilevel.pruning.base import PRUNERS, REBUILDERS, Student, build_unet, describe


@dataclass(frozen=True)
class Cut:
    """One layer axis carrying a group's channels: axis 0 = outputs (weight and bias), 1 = inputs."""

    layer: str
    axis: int


@dataclass(frozen=True)
class Group:
    """Channels removed together. `partitions`: chosen separately within that many equal slices (GroupNorm
    groups); `unit`: removed in runs of this many (a head); `heads_of`: the attention whose heads they are."""

    cuts: tuple[Cut, ...]
    width: int
    partitions: int = 1
    unit: int = 1
    heads_of: str = ""


@PRUNERS.register("channels", reads=["pruning.sparsity"])
def channels(teacher: nn.Module, *, sparsity: float, seed: int, path: str) -> Student:
    """`seed` is unused: the L1 ranking is deterministic (ties go to the lower index)."""
    model = copy.deepcopy(teacher)
    layers: dict[str, list[int]] = {}
    heads: dict[str, int] = {}
    kept = total = 0
    for group in _groups(model):
        index = _kept_channels(model, group, sparsity)
        for cut in group.cuts:
            layers[cut.layer] = list(_cut(model, cut, index, group.width).weight.shape)
        if group.heads_of:
            heads[group.heads_of] = len(index) // group.unit
            _set_heads(model.get_submodule(group.heads_of), heads[group.heads_of])
        kept, total = kept + len(index), total + group.width
    return Student(model, describe("channels", "channels", model, sparsity=sparsity, seed=seed,
                                   channels_removed=1 - kept / total, layers=layers, heads=heads))


@REBUILDERS.register("channels")
def rebuild(description: dict[str, Any]) -> Student:
    """The base UNet with the saved layer shapes and head counts; load_student then loads the weights."""
    model = build_unet(description["config"])
    for name, shape in description["layers"].items():
        model.set_submodule(name, _resized(model.get_submodule(name), shape))
    for name, count in description["heads"].items():
        _set_heads(model.get_submodule(name), count)
    return Student(model, description)


def _groups(model: nn.Module) -> list[Group]:
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    groups = []
    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock2D):
            cuts = [Cut(f"{name}.conv1", 0), Cut(f"{name}.norm2", 0), Cut(f"{name}.conv2", 1)]
            if module.time_emb_proj is not None:
                cuts.append(Cut(f"{name}.time_emb_proj", 0))
            groups.append(Group(tuple(cuts), module.conv1.out_channels, partitions=module.norm2.num_groups))
        elif isinstance(module, Attention) and _plain_heads(module):
            projections = tuple(Cut(f"{name}.{layer}", 0) for layer in ("to_q", "to_k", "to_v"))
            groups.append(Group((*projections, Cut(f"{name}.to_out.0", 1)), module.inner_dim,
                                unit=module.inner_dim // module.heads, heads_of=name))
        elif isinstance(module, FeedForward):
            cuts = (Cut(f"{name}.net.0.proj", 0), Cut(f"{name}.net.2", 1))
            groups.append(Group(cuts, module.net[2].in_features))
    return groups


def _plain_heads(attention: nn.Module) -> bool:
    """Plain (cross-)attention only: joint or grouped-KV variants tie heads across more layers."""
    return attention.add_k_proj is None and attention.inner_kv_dim == attention.inner_dim


def _kept_channels(model: nn.Module, group: Group, sparsity: float) -> torch.Tensor:
    """Indices (ascending) of the channels to keep: the highest-L1 units of each partition."""
    score = sum(_channel_l1(model.get_submodule(cut.layer), cut.axis, group.width) for cut in group.cuts)
    units = score.view(group.partitions, -1, group.unit).sum(-1)
    per_partition = units.shape[1]
    keep = max(1, round((1 - sparsity) * per_partition))
    best = units.argsort(dim=1, descending=True, stable=True)[:, :keep].sort(dim=1).values
    unit_index = best + per_partition * torch.arange(group.partitions).unsqueeze(1)
    return (unit_index.unsqueeze(-1) * group.unit + torch.arange(group.unit)).flatten()


def _channel_l1(layer: nn.Module, axis: int, width: int) -> torch.Tensor:
    """|weights| (and |bias| on outputs) per channel; stacked chunks (GEGLU's value/gate) are summed."""
    with torch.no_grad():
        tensors = [t for t in (layer.weight, layer.bias) if t is not None and t.dim() > axis]
        total = sum(t.abs().movedim(axis, 0).reshape(t.shape[axis], -1).sum(1) for t in tensors)
    return total.view(-1, width).sum(0)


def _cut(model: nn.Module, cut: Cut, index: torch.Tensor, width: int) -> nn.Module:
    """Replace `cut.layer` by a smaller copy that keeps `index` on its axis (repeated in every chunk)."""
    layer = model.get_submodule(cut.layer)
    chunks = layer.weight.shape[cut.axis] // width
    index = torch.cat([index + chunk * width for chunk in range(chunks)]).to(layer.weight.device)
    shape = list(layer.weight.shape)
    shape[cut.axis] = len(index)
    smaller = _resized(layer, shape)
    smaller.load_state_dict({name: t.index_select(cut.axis, index) if t.dim() > cut.axis else t
                             for name, t in layer.state_dict().items()})
    model.set_submodule(cut.layer, smaller)
    return smaller


def _resized(layer: nn.Module, shape: Sequence[int]) -> nn.Module:
    """A fresh layer configured like `layer` whose weight has `shape` (values to be loaded by the caller)."""
    like = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(shape[1], shape[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         bias=layer.bias is not None, padding_mode=layer.padding_mode, **like)
    if isinstance(layer, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=layer.bias is not None, **like)
    if isinstance(layer, nn.GroupNorm):
        return nn.GroupNorm(layer.num_groups, shape[0], layer.eps, layer.affine, **like)
    raise TypeError(f"channel pruning cannot resize a {type(layer).__name__}")


def _set_heads(attention: nn.Module, heads: int) -> None:
    """Keep diffusers' Attention bookkeeping in step with its resized projections (head_dim unchanged)."""
    head_dim = attention.inner_dim // attention.heads
    attention.heads = attention.sliceable_head_dim = heads
    attention.inner_dim = attention.inner_kv_dim = heads * head_dim
