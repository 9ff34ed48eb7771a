"""How a sweep's trials are scored: the normalisation box of its hypervolume, the practitioner's endpoint, and
the fresh-seed re-evaluation's settings (docs/scoring.md).

A raw hypervolume against an arbitrary reference point mostly counts whichever objective has the larger
numbers, so every comparison the platform reports is scored in a box whose corners mean something:
- ideal: the teacher's value, and for a concept rate the teacher's rate on prompts *without* the concept
  (its floor: the judge's false-positive level, the best an erased model can show);
- nadir: the distill-only reference (the base config fine-tuned with no upper level: what erasure must beat);
- each axis linear or log, and the hypervolume counted up to `allowance` past the nadir.
A space may fix any corner by hand; the rest come from the sweep's own references (references.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from raybilevel.errors import ConfigError
from raybilevel.pareto import Box

SCALES = ("linear", "log")
Z_95 = 1.959964  # the bootstrap intervals are 95% percentile intervals: half-width / z ~ one standard error


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(path, message)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class NormalisationSpec:
    """The hypervolume's box (pareto.Box).

    Args:
        ideal: objective -> a fixed ideal value; objectives left out take the teacher's value (a concept
            rate: the teacher's `<name>_floor`, else `concept_rate_floor`: its rate on other prompts).
        nadir: objective -> a fixed nadir value; objectives left out take the distill-only reference's value
            (where that is no worse than the ideal, the space's reference_point).
        scale: objective -> linear (default) or log (values must be > 0: NLLs, FIDs).
        allowance: how far past the nadir, in box units, a trial still adds hypervolume (0.1: a tenth of the
            teacher-to-distill-only distance).
    """

    ideal: dict[str, float] = field(default_factory=dict)
    nadir: dict[str, float] = field(default_factory=dict)
    scale: dict[str, str] = field(default_factory=dict)
    allowance: float = 0.1

    def validate(self, path: str, objectives: dict[str, str]) -> None:
        for part in ("ideal", "nadir", "scale"):
            unknown = sorted(set(getattr(self, part)) - set(objectives))
            _require(not unknown, f"{path}.{part}", f"{unknown} are not objectives ({', '.join(objectives)})")
        for part in ("ideal", "nadir"):
            for name, value in getattr(self, part).items():
                _require(_finite(value), f"{path}.{part}.{name}", f"{value!r} is not a finite number")
        for name, scale in self.scale.items():
            _require(scale in SCALES, f"{path}.scale.{name}", f"{scale!r}: use linear or log")
        _require(_finite(self.allowance) and self.allowance >= 0, f"{path}.allowance",
                 f"{self.allowance!r}: must be a finite number >= 0")


@dataclass
class EndpointSpec:
    """The practitioner's endpoint: how far erasure goes with quality within `delta` of the distill-only
    reference (lowest concept rate among those trials).

    Args:
        quality: the quality objective (default: quality, when it is an objective).
        concept: the concept objective (default: concept_rate, when it is an objective).
        delta: allowed quality loss; 0 = twice the measured quality noise: the distill-only reference's
            standard error at the sweep's sample count, from its 95% bootstrap interval (half-width / 1.96).
    """

    quality: str = "quality"
    concept: str = "concept_rate"
    delta: float = 0.0

    def applies(self, objectives: dict[str, str]) -> bool:
        return self.quality in objectives and self.concept in objectives

    def validate(self, path: str) -> None:
        _require(_finite(self.delta) and self.delta >= 0, f"{path}.delta",
                 f"{self.delta!r}: must be a finite number >= 0 (0: twice the measured quality noise)")


@dataclass
class FreshSpec:
    """The sweep's held-out test: when it ends, every front trial and the references are evaluated again on an
    eval seed no trial was selected on, with more samples (fresh.py; `raybilevel report DIR --reevaluate`).

    Args:
        enabled: run it when the sweep ends.
        seed: the fresh eval seed (must differ from the trials' eval.seed).
        n_samples: samples per prompt group (>= 256 for a result worth reporting; tests use fewer).
    """

    enabled: bool = True
    seed: int = 4321
    n_samples: int = 256

    def validate(self, path: str) -> None:
        _require(self.n_samples >= 2, f"{path}.n_samples", f"{self.n_samples}: needs at least 2 samples per group")


def ideal_value(name: str, teacher: dict[str, Any]) -> Any:
    """The teacher's value of an objective; for a concept rate, its floor (the rate on other prompts)."""
    if "concept_rate" in name:
        return teacher.get(f"{name}_floor", teacher.get("concept_rate_floor"))
    return teacher.get(name)


def better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


@dataclass(frozen=True)
class ResolvedBox:
    """A box with where each corner came from (space, teacher, teacher floor, distill_only, reference_point),
    or why there is none yet."""

    box: Box | None
    ideal: dict[str, float]
    nadir: dict[str, float]
    scale: dict[str, str]
    source: dict[str, str]
    problem: str = ""

    def as_json(self, points: list[tuple[float, ...]]) -> dict[str, Any]:
        names = list(self.ideal)
        payload: dict[str, Any] = {"ideal": self.ideal, "nadir": self.nadir, "scale": self.scale, "source": self.source}
        if self.box is None:
            return payload | {"hypervolume": None, "problem": self.problem}
        return payload | {"allowance": self.box.allowance,
                          "reference_point": dict(zip(names, self.box.reference)),
                          "hypervolume": self.box.hypervolume(points)}


def resolve_box(spec: NormalisationSpec, objectives: dict[str, str], reference_point: dict[str, float],
                references: dict[str, dict[str, Any]]) -> ResolvedBox:
    """The box from the space's fixed corners and the references' metrics ({"teacher": metrics, ...})."""
    teacher, distill = references.get("teacher", {}), references.get("distill_only", {})
    ideal, nadir, source, problems = {}, {}, {}, []
    for name, mode in objectives.items():
        if name in spec.ideal:
            ideal[name], where_ideal = spec.ideal[name], "space"
        else:
            ideal[name], where_ideal = ideal_value(name, teacher), "teacher"
        if name in spec.nadir:
            nadir[name], where_nadir = spec.nadir[name], "space"
        else:
            nadir[name], where_nadir = distill.get(name), "distill_only"
            if _finite(nadir[name]) and _finite(ideal[name]) and not better(ideal[name], nadir[name], mode):
                nadir[name], where_nadir = reference_point[name], "reference_point"  # distill-only is no worse
        source[name] = f"{where_ideal} / {where_nadir}"
        if not (_finite(ideal[name]) and _finite(nadir[name])):
            problems.append(f"{name}: no {'ideal' if not _finite(ideal[name]) else 'nadir'} yet (references)")
        elif not better(ideal[name], nadir[name], mode):
            problems.append(f"{name}: ideal {ideal[name]:.4g} is not better than nadir {nadir[name]:.4g}")
        elif spec.scale.get(name) == "log" and min(ideal[name], nadir[name]) <= 0:
            problems.append(f"{name}: a log scale needs ideal and nadir > 0")
    scale = {name: spec.scale.get(name, "linear") for name in objectives}
    if problems:
        return ResolvedBox(None, ideal, nadir, scale, source, "; ".join(problems))
    box = Box(tuple(ideal[n] for n in objectives), tuple(nadir[n] for n in objectives),
              tuple(scale[n] == "log" for n in objectives), spec.allowance)
    return ResolvedBox(box, ideal, nadir, scale, source)


def quality_noise(metrics: dict[str, Any], name: str) -> float | None:
    """One standard error of a metric at its sample count, from its 95% bootstrap interval."""
    bounds = metrics.get(f"{name}_ci")
    if isinstance(bounds, list) and len(bounds) == 2 and all(_finite(v) for v in bounds):
        return (bounds[1] - bounds[0]) / (2 * Z_95)
    return None


def endpoint(spec: EndpointSpec, objectives: dict[str, str], distill_only: dict[str, Any],
             candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest concept rate (best, by the objective's mode) among candidates whose quality is within delta
    of the distill-only reference. A candidate: {"trial_id", "objectives": {...}, "intervals": {name: [lo, hi]}}."""
    q, c = spec.quality, spec.concept
    reference = distill_only.get(q)
    if not _finite(reference):
        return {"problem": f"no distill-only {q} yet (references)"}
    noise = quality_noise(distill_only, q)
    if spec.delta:
        delta, rule = spec.delta, "the space's endpoint.delta"
    elif noise is not None:
        delta, rule = 2 * noise, f"twice the distill-only reference's {q} standard error"
    else:
        return {"problem": f"the distill-only reference has no {q}_ci to measure the noise; set endpoint.delta"}
    threshold = reference + delta if objectives[q] == "min" else reference - delta
    eligible = [p for p in candidates if _finite(p["objectives"].get(q)) and _finite(p["objectives"].get(c))
                and not better(threshold, p["objectives"][q], objectives[q])]
    result: dict[str, Any] = {"quality": q, "concept": c, "delta": delta, "delta_rule": rule,
                              "quality_noise": noise, "distill_only_quality": reference, "threshold": threshold,
                              "distill_only_concept": distill_only.get(c), "n_eligible": len(eligible)}
    if not eligible:
        return result | {"trial_id": None}
    sign = 1 if objectives[c] == "min" else -1
    best = min(eligible, key=lambda p: (sign * p["objectives"][c], p["objectives"][q]))
    return result | {"trial_id": best["trial_id"], "concept_value": best["objectives"][c],
                     "concept_ci": best.get("intervals", {}).get(c), "quality_value": best["objectives"][q],
                     "quality_ci": best.get("intervals", {}).get(q)}
