"""Where a run's time goes: seconds per phase (world build, concept images, training, evaluation, ...).

train() times its own phases in the process that runs it; a sweep adds the start-up before it (the Ray
worker group, imports) from the trial record's clock, so each trial's time splits into named parts.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

# The order reports show them in. solver_iterations + evaluation is the work a trial exists for.
PHASES = ("world", "concept_images", "setup", "solver_iterations", "evaluation", "checkpointing",
          "sample_grids", "export")


class PhaseClock:
    def __init__(self) -> None:
        self.started_at = time.time()  # wall clock, comparable with a trial record's `started`
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - began)

    def as_dict(self) -> dict[str, float]:
        return {phase: round(self.seconds.get(phase, 0.0), 3) for phase in PHASES}
