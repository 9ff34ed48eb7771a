"""How many trials run at once while the sweep's reference run holds one trial's slot.

The distill-only reference (references.py) trains like a trial, beside the trials, in one worker's share.
If Tune started as many trials as the cluster fits, one of them would start and then wait, idle, for its
worker's resources until the reference ended (on 2 CPUs the first trial of the default sweep waited 215 s).
So Tune is handed one trial fewer until the reference has ended (or failed), then the cluster's full count:
no trial is started that cannot train, and the wait shows as queueing, not as a trial's start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher

from raybilevel.references import reference_ended


@dataclass(frozen=True)
class SlotGate:
    """Trials at once: `slots`, one fewer while the sweep in `root` still computes its references."""

    root: Path
    slots: int

    def __call__(self) -> int:
        return self.slots if reference_ended(self.root) else max(1, self.slots - 1)


class GateLimit:
    """A `max_concurrent` attribute that reads the gate whenever Tune checks it; Tune's own assignments
    (its constructors set the attribute) are ignored: the gate decides."""

    def __get__(self, instance: object, owner: type | None = None) -> int | GateLimit:
        return self if instance is None else instance._gate()

    def __set__(self, instance: object, value: int) -> None:
        pass


class GatedLimiter(ConcurrencyLimiter):
    """Tune's concurrency limit around a searcher (Optuna), from the gate."""

    max_concurrent = GateLimit()

    def __init__(self, searcher: Searcher, gate: SlotGate) -> None:
        self._gate = gate
        super().__init__(searcher, max_concurrent=gate.slots)


class GatedGrid(BasicVariantGenerator):
    """The same limit for a grid sweep (Tune's variant generator, which has no searcher to wrap)."""

    max_concurrent = GateLimit()

    def __init__(self, gate: SlotGate) -> None:
        self._gate = gate
        super().__init__(max_concurrent=gate.slots)
