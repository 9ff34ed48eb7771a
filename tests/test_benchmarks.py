"""The GPU throughput benchmark's tiny mode: the same code path on a CPU, two cells of two timed steps."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_throughput_tiny_writes_a_row_per_cell_with_positive_numbers(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--size", "tiny", "--solvers", "distill_only", "penalty",
         "--zero", "0", "--precisions", "fp32", "--checkpointing", "on", "--batch", "4", "--upper-batch", "2",
         "--K", "2", "--warmup", "1", "--steps", "2", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_throughput_tiny.json").read_text())["rows"]
    assert [(r["solver"], r["zero"], r["precision"], r["checkpointing"], r["status"]) for r in rows] == [
        ("distill_only", 0, "fp32", True, "ok"), ("penalty", 0, "fp32", True, "ok")]
    for row in rows:
        assert row["timed_steps"] == 2 and row["world_size"] == 1
        assert row["seconds_per_step"] > 0 and row["peak_rss_gib"] > 0
        assert row["samples_per_s"] == pytest.approx(4 / row["seconds_per_step"])  # lower batch 4, 1 process
        assert row["params"]["student"] == row["params"]["teacher"] > 0  # pruning.method=none
        assert row["attention"] == ["AttnProcessor2_0"]
    table = (tmp_path / "gpu_throughput_tiny.md").read_text()
    assert table.count("| ok |") == 2
