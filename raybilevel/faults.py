"""Deterministic crash injection, so tests can kill a real run at a chosen moment instead of faking a kill.

RAYBILEVEL_CRASH_AT="POINT:N[:RANK]" makes the process SIGKILL itself (no cleanup, no flush, exactly what a
preempted node does) the N-th time it reaches POINT, on every rank or only on RANK. Points:
  step        after a solver iteration, before its log line (the update exists only in memory), or
              after a toy teacher build step, before its checkpoint
  append      halfway through writing a scalars.jsonl line (a torn last line)
  checkpoint  after every shard is in step_N.tmp, before state.json and the rename
With RAYBILEVEL_CRASH_MARKER=PATH the crash happens once: the file is created just before the kill and a
process that finds it does not crash again (a restarted Ray worker inherits the same environment).
Unset (always, outside tests), crash_point() is one dictionary lookup. Ray Train workers do not inherit the
driver's environment, so distributed.fit() hands them these two variables (crash_settings()).
"""
from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Callable

CRASH_AT, CRASH_MARKER = "RAYBILEVEL_CRASH_AT", "RAYBILEVEL_CRASH_MARKER"
POINTS = ("step", "append", "checkpoint")
_reached: Counter[str] = Counter()


def crash_point(point: str, before_kill: Callable[[], None] | None = None) -> None:
    spec = os.environ.get(CRASH_AT)
    if not spec:
        return
    name, count, rank = (spec.split(":") + ["", ""])[:3]
    if name != point or (rank and rank != os.environ.get("RANK", "0")):
        return
    _reached[point] += 1
    if _reached[point] != int(count or 1):
        return
    marker = os.environ.get(CRASH_MARKER)
    if marker:
        if Path(marker).exists():
            return
        Path(marker).touch()
    if before_kill is not None:
        before_kill()
    os.kill(os.getpid(), signal.SIGKILL)


def crash_settings() -> dict[str, str]:
    """This process's crash-injection variables, to pass on to processes it does not start itself."""
    return {key: os.environ[key] for key in (CRASH_AT, CRASH_MARKER) if key in os.environ}
