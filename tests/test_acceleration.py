"""The engine's speed options on the toy world, on the CPU: gradient checkpointing, channels-last,
torch.compile, a bf16 teacher, bf16 autocast, ZeRO offload; and their config errors."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import TINY, read_scalars
from raybilevel.acceleration import teacher_dtype
from raybilevel.config import ConfigError, load_config
from raybilevel.errors import UserError
from raybilevel.train import build_run, check_output_dir, train


def _cfg(*overrides: str):
    return load_config(None, TINY + ["solver.name=distill_only", "eval.enabled=false", *overrides])


def _run(tmp_path, *overrides: str, name: str = "run"):
    return build_run(_cfg(*overrides), tmp_path / name)


def _loss_and_grads(run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The lower loss on step 0's batch and its gradient for every student parameter (ZeRO-0, fp32)."""
    student = run.solver.student
    student.module.zero_grad(set_to_none=True)
    loss, _ = run.solver.lower_value(student, run.solver.lower_batch(0, 0))
    student.backward(loss)
    return loss.detach(), {n: p.grad.clone() for n, p in student.module.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_and_keeps_loss_and_gradients(tmp_path):
    run = _run(tmp_path, "engine.gradient_checkpointing=true")
    module = run.solver.student.module
    calls = []
    # a pre-hook: recomputation may stop early, after the last saved tensor, before forward hooks
    module.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss, grads = _loss_and_grads(run)
    assert module.is_gradient_checkpointing and len(calls) == 2  # the forward, and again inside backward
    module.disable_gradient_checkpointing()
    calls.clear()
    plain_loss, plain_grads = _loss_and_grads(run)
    assert len(calls) == 1
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert grads.keys() == plain_grads.keys() and len(grads) == len(list(module.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_channels_last_keeps_teacher_outputs_and_the_loss(tmp_path):
    plain, fast = _run(tmp_path, name="plain"), _run(tmp_path, "engine.channels_last=true", name="fast")
    channels_last = torch.channels_last
    assert fast.world.teacher.conv_in.weight.is_contiguous(memory_format=channels_last)
    seen = []  # the student's first convolution: its input and output
    fast.solver.student.module.conv_in.register_forward_hook(lambda _m, args, out: seen.extend(
        [args[0].is_contiguous(memory_format=channels_last), out.is_contiguous(memory_format=channels_last)]))
    a, b = plain.solver.lower_batch(0, 0), fast.solver.lower_batch(0, 0)
    torch.testing.assert_close(b.teacher_out, a.teacher_out, rtol=1e-4, atol=1e-5)  # seen: 1.3e-6 apart
    loss, _ = fast.solver.lower_value(fast.solver.student, b)
    plain_loss, _ = plain.solver.lower_value(plain.solver.student, a)
    assert seen == [True, True]
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-7)


def test_compiled_student_trains_and_saves_clean_parameter_names(tmp_path):
    plain = _run(tmp_path, name="plain")
    first_loss, _ = plain.solver.lower_value(plain.solver.student, plain.solver.lower_batch(0, 0))
    torch._dynamo.reset()
    out = tmp_path / "compiled"
    train(_cfg("engine.compile=true", "engine.compile_backend=aot_eager"), out)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    rows = read_scalars(out)
    assert len(rows) == 4 and all(math.isfinite(r["lower"]) for r in rows)
    assert rows[0]["lower"] == pytest.approx(float(first_loss.detach()), rel=1e-5)  # step 0 runs before any update
    names = set(plain.solver.student.module.state_dict())
    assert set(load_file(out / "student" / "model.safetensors")) == names
    # read through the engine's own weights-only loader, as a resume would
    states = plain.solver.student.engine.checkpoint_engine.load(
        str(next((out / "checkpoints" / "step_00000004" / "theta").glob("*model_states.pt"))))
    assert set(states["module"]) == names


def test_bf16_teacher_is_frozen_and_its_targets_stay_close_to_fp32(tmp_path):
    full, half = _run(tmp_path, name="fp32"), _run(tmp_path, "engine.teacher_dtype=bf16", name="bf16")
    teacher = half.world.teacher
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in teacher.parameters())
    a, b = full.solver.lower_batch(0, 0), half.solver.lower_batch(0, 0)
    assert b.teacher_out.dtype == torch.float32 and {f.dtype for f in b.teacher_features.values()} == {torch.float32}
    assert ((b.teacher_out - a.teacher_out).norm() / a.teacher_out.norm()) < 0.02
    loss, terms = half.solver.lower_value(half.solver.student, b)
    full_loss, _ = full.solver.lower_value(full.solver.student, a)
    assert math.isfinite(loss) and float(loss) == pytest.approx(float(full_loss), rel=1e-2)
    assert {"diff", "out_kd", "feat_kd"} <= terms.keys()
    upper = half.solver.upper_batch(0, 0)
    assert upper.target.dtype == torch.float32 and bool(torch.isfinite(upper.target).all())
    with torch.enable_grad():  # even outside the losses' no_grad, the teacher records no graph
        assert teacher(b.x_t, b.t, b.cond).sample.grad_fn is None


@pytest.mark.parametrize("precision, setting, expected", [
    ("fp32", "auto", torch.float32), ("bf16", "auto", torch.bfloat16), ("bf16_autocast", "auto", torch.bfloat16),
    ("bf16", "fp32", torch.float32), ("fp32", "bf16", torch.bfloat16)])
def test_teacher_dtype_auto_follows_precision(precision, setting, expected):
    assert teacher_dtype(_cfg(f"engine.precision={precision}", f"engine.teacher_dtype={setting}").engine) == expected


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_autocast_keeps_fp32_weights_and_computes_in_bf16(tmp_path, stage):
    full = _run(tmp_path, f"engine.zero_stage={stage}", name="fp32")
    mixed = _run(tmp_path, "engine.precision=bf16_autocast", f"engine.zero_stage={stage}", name="autocast")
    module = mixed.solver.student.module
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    dtypes = []
    module.conv_in.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    loss, _ = mixed.solver.lower_value(mixed.solver.student, mixed.solver.lower_batch(0, 0))
    full_loss, _ = full.solver.lower_value(full.solver.student, full.solver.lower_batch(0, 0))
    assert dtypes == [torch.bfloat16] and float(loss) == pytest.approx(float(full_loss), rel=2e-2)
    rows = [mixed.solver.iteration(step) for step in range(2)]
    assert all(math.isfinite(v) for r in rows for v in r.values())


@pytest.mark.parametrize("stage, offload", [(2, "optimizer"), (3, "optimizer_and_params")])
def test_offload_steps_like_without_it(tmp_path, stage, offload):
    """BilevelAdamW steps the offloaded fp32 partitions on the CPU: the same losses as without offload."""
    overrides = ("solver.name=alternating", f"engine.zero_stage={stage}")
    plain = _run(tmp_path, *overrides, name="plain")
    offloaded = _run(tmp_path, *overrides, f"engine.offload={offload}", name="offloaded")
    engine = offloaded.solver.student.engine
    assert engine.zero_offload_optimizer().device == "cpu"
    assert (engine.zero_offload_param() is not None and engine.zero_offload_param().device == "cpu") == (stage == 3)
    for step in range(3):  # step 1 also takes an upper step (K=2)
        a, b = plain.solver.iteration(step), offloaded.solver.iteration(step)
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-6), (step, key)


@pytest.mark.parametrize("overrides, message", [
    (["engine.offload=optimizer"], "config error at 'engine.offload': offload optimizer needs ZeRO's partitions; "
                                   "set engine.zero_stage=2 (or 3), or engine.offload=none"),
    (["engine.offload=optimizer_and_params", "engine.zero_stage=2"],
     "config error at 'engine.offload': offload optimizer_and_params needs engine.zero_stage=3 (only ZeRO-3 "
     "partitions the weights); set it, or use engine.offload=optimizer"),
    (["engine.offload=nvme", "engine.zero_stage=3"],
     "config error at 'engine.offload': 'nvme': use none, optimizer or optimizer_and_params"),
    (["engine.teacher_dtype=fp16"], "config error at 'engine.teacher_dtype': 'fp16': use auto, fp32 or bf16"),
    (["engine.precision=fp16"], "config error at 'engine.precision': 'fp16': use fp32, bf16 or bf16_autocast"),
    (["engine.compile_backend=tvm"],
     "config error at 'engine.compile_backend': 'tvm': use inductor, aot_eager or eager"),
    (["engine.compile=1"], "config error at 'engine.compile': expected true or false, got 1"),
])
def test_invalid_engine_options_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value) == message


def test_unets_attend_through_torch_sdpa(tmp_path):
    """diffusers' default attention processor is torch's scaled_dot_product_attention: nothing to choose."""
    run = _run(tmp_path)
    for unet in (run.world.teacher, run.solver.student.module):
        assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_a_run_written_before_these_options_still_resumes(tmp_path):
    cfg = _cfg()
    tree = cfg.to_dict()
    for key in ("gradient_checkpointing", "channels_last", "compile", "compile_backend", "teacher_dtype", "offload"):
        del tree["engine"][key]
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(tree))
    check_output_dir(cfg, out)  # absent keys count as their defaults
    with pytest.raises(UserError, match=r"holds another run \(engine.teacher_dtype: 'auto' there, 'bf16' now\)"):
        check_output_dir(_cfg("engine.teacher_dtype=bf16"), out)
