"""Real crashes: a deterministic `raybilevel train` SIGKILLed (by itself at an injected point, or from outside
at a random moment) and rerun with the same command ends with the per-step losses and the byte-identical
student weights of a run that was never interrupted."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY, cli, read_scalars
from raybilevel.faults import CRASH_AT, CRASH_MARKER

SETTINGS = [*TINY, "train.steps=6", "solver.name=alternating", "deterministic=true", "eval.enabled=false"]


def _train_command(out: Path, settings: list[str] = SETTINGS) -> list[str]:
    return cli("train", "--output", str(out), *sum((["--set", s] for s in settings), []))


def _run(command: list[str], crash: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (CRASH_AT, CRASH_MARKER)}
    environment |= env | ({CRASH_AT: crash} if crash else {})
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)


def _finished(out: Path, command: list[str]) -> None:
    result = _run(command)
    assert result.returncode == 0, result.stderr[-3000:]


def _weights(out: Path) -> bytes:
    return (out / "student" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crash") / "uninterrupted"
    _finished(out, _train_command(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("crash, leftover", [
    ("step:3", None),                                # step 3's update computed, never logged or saved
    ("append:5", "torn"),                            # half of step 4's log line on disk
    ("checkpoint:2", "checkpoints/step_00000004.tmp"),  # step 4's shards written, not yet committed
])
def test_a_run_killed_at_an_injected_point_resumes_to_the_same_losses_and_weights(uninterrupted, tmp_path, crash, leftover):
    out = tmp_path / "run"
    killed = _run(_train_command(out), crash=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "metrics.json").exists()
    if leftover == "torn":
        assert not (out / "scalars.jsonl").read_text().endswith("\n")
    elif leftover:
        assert (out / leftover).is_dir()
    _finished(out, _train_command(out))
    assert read_scalars(out) == read_scalars(uninterrupted)
    assert _weights(out) == _weights(uninterrupted)
    assert not list((out / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_a_run_killed_from_outside_at_random_moments_resumes_to_the_same_losses_and_weights(uninterrupted, tmp_path):
    """Each round waits for a public sign of progress (log lines on disk), then kills within the next ~half
    second: wherever that lands (mid-step, mid-append, mid-checkpoint), the rerun must recover."""
    out, rng = tmp_path / "run", random.Random(0)
    command, interrupted = _train_command(out), 0
    for lines_before_kill in (1, 3, 5):
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: _lines(out) >= lines_before_kill or run.poll() is not None)
        time.sleep(rng.uniform(0.0, 0.5))
        run.send_signal(signal.SIGKILL)
        interrupted += run.wait() == -signal.SIGKILL and not (out / "metrics.json").exists()
    assert interrupted >= 2, "the runs ended before they could be killed"
    _finished(out, command)
    assert read_scalars(out) == read_scalars(uninterrupted)
    assert _weights(out) == _weights(uninterrupted)


def _lines(out: Path) -> int:
    try:
        return (out / "scalars.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def _wait_for(condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run to make progress"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_zero_2_ranks_killed_mid_checkpoint_resume_to_the_same_losses_and_weights(tmp_path):
    """Rank 1 dies after writing its step-4 shards; torchrun then stops rank 0. The rerun resumes at 2."""
    settings = [*SETTINGS, "engine.zero_stage=2"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "raybilevel", "train"]

    def command(out: Path) -> list[str]:
        return launch + _train_command(out, settings)[4:]  # the same arguments after `-m raybilevel train`

    reference, out = tmp_path / "uninterrupted", tmp_path / "run"
    _finished(reference, command(reference))
    killed = _run(command(out), crash="checkpoint:2:1")
    assert killed.returncode != 0 and (out / "checkpoints" / "step_00000004.tmp").is_dir()
    _finished(out, command(out))
    assert read_scalars(out) == read_scalars(reference)
    assert _weights(out) == _weights(reference)
