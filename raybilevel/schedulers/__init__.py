"""Early-stopping rules for sweeps, by name (`scheduler: {name: ...}` in a space).

A rule sees each mid-run evaluation a trial reports (its objectives and `progress`, the share of its run
done) and answers continue or stop; tune.py adapts it to Ray Tune's TrialScheduler. Rules import no Ray, so
a space validates without it. A new rule is one file here, registered under its name.
"""
from __future__ import annotations

from raybilevel.registry import Registry

SCHEDULERS: Registry[type] = Registry("scheduler")

from raybilevel.schedulers import pareto_halving  # noqa: E402,F401  (registers itself)
