"""A sweep's directory and each trial's record, shared by the sweep (tune.py) and the report (report.py).

    DIR/space.yaml            the sweep's search space as it ran (read back by --resume and `report`)
    DIR/optuna.db             the Optuna study (searches): optuna-dashboard sqlite:///DIR/optuna.db
    DIR/ray/                  Ray's storage when ray.storage_path is empty: Tune's experiment state
                              (ray/<name>/) and each trial's Ray Train checkpoints (ray/train/<trial>/)
    DIR/scheduler.jsonl       the early-stopping scheduler's decisions, one line each (with its reasons)
    DIR/trials/<trial>/trial.json   params, status, objectives, error (written by the trial's driver)
    DIR/trials/<trial>/run/   the trial's run directory (config.yaml, scalars, evals, TensorBoard,
                              student/, metrics.json); `tensorboard --logdir DIR/trials` shows them all
    DIR/pareto.*, trials.csv, hypervolume.csv, report.html, ...   the report (report.py)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybilevel.atomic import read_json_lines, write_json_atomic


STATUSES = ("done", "stopped", "failed", "running")


@dataclass(frozen=True)
class SweepDir:
    root: Path

    @property
    def space_file(self) -> Path:
        return self.root / "space.yaml"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db.resolve()}"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def scheduler_log(self) -> Path:
        return self.root / "scheduler.jsonl"

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    def scheduler_decisions(self) -> list[dict[str, Any]]:
        """The early-stopping scheduler's decisions in order (a line torn by a kill is skipped)."""
        return read_json_lines(self.scheduler_log)

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    def finished(self, trials: int) -> bool:
        """All `trials` trials of the sweep have ended and its report is written (a benchmark reuses it)."""
        records = self.records() if self.space_file.is_file() else []
        return len(records) == trials and all(r.status != "running" for r in records) and (self.root / "report.html").is_file()

    def records(self) -> list["TrialRecord"]:
        """Every trial that started, in the order they finished (unfinished ones last)."""
        found = [TrialRecord.load(p) for p in sorted(self.trials_dir.glob("*/trial.json"))]
        return sorted(found, key=lambda r: (r.finished is None, r.finished or r.started))


@dataclass
class TrialRecord:
    """One trial: what it tried and how it ended.

    Args:
        trial_id: Tune's trial id (also the Ray Train run name).
        params: the trial's Tune config (searched values, or factor levels and seed).
        overrides: the dotted config keys those params set.
        solver: the trial's solver, for colouring plots.
        status: running, done, stopped (by the sweep's early-stopping scheduler) or failed.
        objectives: the sweep's objective metrics from metrics.json, or a stopped trial's last evaluation
            (null where not finite).
        error: why a failed trial failed, or where and why a stopped one was stopped, in one line.
    """

    trial_id: str
    params: dict[str, Any]
    overrides: dict[str, Any]
    solver: str
    status: str = "running"
    objectives: dict[str, float | None] = field(default_factory=dict)
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    folder: Path | None = field(default=None, repr=False, compare=False)

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def valid(self, objectives: list[str]) -> bool:
        """Done or stopped early, with a finite value for every objective: a point the front can use. A
        stopped trial's point is its last evaluation, the values Optuna was told (so front == best_trials)."""
        values = [self.objectives.get(name) for name in objectives]
        return self.status in ("done", "stopped") and all(v is not None and math.isfinite(v) for v in values)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {k: v for k, v in dataclasses.asdict(self).items() if k != "folder"}
        write_json_atomic(self.folder / "trial.json", payload)

    def finish(self, status: str, objectives: dict[str, float | None] | None = None, error: str = "") -> None:
        self.status, self.error, self.finished = status, error, time.time()
        self.objectives = objectives or {}
        self.save()

    @classmethod
    def load(cls, path: Path) -> "TrialRecord":
        return cls(**json.loads(path.read_text()), folder=path.parent)


def run_metrics(record: TrialRecord) -> dict[str, Any]:
    """The trial's metrics.json ({} before it has one), read once per file version."""
    path = record.run_dir / "metrics.json" if record.folder else None
    return _read_metrics(path, path.stat().st_mtime_ns) if path is not None and path.is_file() else {}


@functools.lru_cache(maxsize=1024)
def _read_metrics(path: Path, mtime_ns: int) -> dict[str, Any]:
    return json.loads(path.read_text())


def interval(record: TrialRecord, name: str) -> tuple[float, float] | None:
    """The 95% bootstrap interval of an objective from the trial's metrics.json (`<name>_ci`), if any."""
    value = run_metrics(record).get(f"{name}_ci")
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        return None
    return (float(value[0]), float(value[1])) if all(math.isfinite(v) for v in value) else None


def in_cell(record: TrialRecord, cell: dict[str, str]) -> bool:
    return all(record.params.get(factor) == level for factor, level in cell.items())
