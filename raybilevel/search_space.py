"""Sweep definitions: a YAML file in search_spaces/ -> a validated SearchSpace -> what Ray Tune runs.

A space fixes a base config and then either searches keys with Optuna (multi-objective) or runs an
ablation grid (named factor levels x seeds, Tune grid search):

    name: toy
    base: {train.steps: 60, ray: {num_workers: 1}}   # dotted keys or nested sections, as in a config
    params:                                           # searched keys, sampled in the order written
      solver.name: {type: choice, values: [penalty, alternating]}
      solver.lam: {type: float, low: 1, high: 1000, log: true, when: {solver.name: [penalty]}}
    # or, instead of params:
    grid:
      factors: {loss: {ddpm: {lower.w_out: 0, lower.w_feat: 0}, kd: {lower.w_diff: 0}}}
      seeds: [0, 1, 2]

Every key is checked against the config tree and the registries when the file loads (one-line errors
naming the key), so `raybilevel tune --dry-run` catches a typo before any trial starts.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raybilevel.config import Config, config_from_dict, flatten, from_dict, set_path, yaml_where
from raybilevel.errors import ConfigError, UserError
from raybilevel.scoring import EndpointSpec, FreshSpec, NormalisationSpec
from raybilevel.train import METHOD_KEYS, check_names

SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"  # shipped inside the package (wheels too)

class SpaceError(UserError):
    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"search space {source}: {message}")


@dataclass
class ParamSpec:
    """One searched config key.

    Args:
        type: float, int or choice.
        low / high: the range of float and int keys, both ends included.
        log: sample on a log scale (needs low > 0).
        values: the options of a choice key.
        when: sample this key only when earlier choice keys took one of the listed values, e.g.
            {solver.name: [penalty, adaptive]}; otherwise the base config's value stands.
    """

    type: str = ""
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        if self.type == "choice":
            _require(bool(self.values), path + ".values", "a choice needs at least one value")
            _require(self.low is None and self.high is None, path, "a choice takes values, not low/high")
            return
        _require(self.type in ("float", "int"), path + ".type", f"{self.type!r}: use float, int or choice")
        _require(self.low is not None and self.high is not None, path, f"a {self.type} needs low and high")
        _require(self.low < self.high, path + ".low", f"low={self.low} must be below high={self.high}")
        _require(not self.log or self.low > 0, path + ".log", "a log scale needs low > 0")
        _require(self.type == "float" or (self.low.is_integer() and self.high.is_integer()), path,
                 "an int range needs whole-number bounds")

    def options(self) -> list[Any]:
        """Values that together exercise the key's whole range (for validation)."""
        if self.type == "choice":
            return list(self.values)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "choice":
            return trial.suggest_categorical(name, self.values)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def applies(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(key) in allowed for key, allowed in self.when.items())


@dataclass
class GridSpec:
    """An ablation grid: every combination of the factors' named levels, each run once per seed.

    Args:
        factors: factor -> level name -> config overrides (dotted keys), e.g.
            {loss: {ddpm: {lower.w_diff: 1, lower.w_out: 0, lower.w_feat: 0}, ...}, sparsity: {...}}.
        seeds: the values of the config's `seed` each cell runs with (the spread in the ablation table).
    """

    factors: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])

    def validate(self, path: str) -> None:
        _require(bool(self.factors), path + ".factors", "name at least one factor with its levels")
        for name, levels in self.factors.items():
            _require(name != "seed" and "." not in name, f"{path}.factors.{name}", "factor names are plain words, not 'seed'")
            _require(bool(levels), f"{path}.factors.{name}", "a factor needs at least one level")
        _require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), path + ".seeds", "list distinct seeds")

    def cells(self) -> list[dict[str, str]]:
        names = list(self.factors)
        return [dict(zip(names, levels)) for levels in itertools.product(*(self.factors[n] for n in names))]


@dataclass
class SamplerSpec:
    """Optuna's sampler.

    Args:
        name: motpe (Optuna's TPE, which handles several objectives) or nsga2.
        startup_trials: random trials before TPE fits its model (motpe).
        population: trials per NSGA-II generation (nsga2).
        seed: sampler seed, for a reproducible sequence of suggestions.
    """

    name: str = "motpe"
    startup_trials: int = 4
    population: int = 8
    seed: int = 0

    def validate(self, path: str) -> None:
        _require(self.name in ("motpe", "nsga2"), path + ".name", f"{self.name!r}: use motpe or nsga2")
        _require(self.startup_trials >= 1 and self.population >= 2, path, "startup_trials >= 1 and population >= 2")


@dataclass
class SchedulerSpec:
    """Early stopping (raybilevel/schedulers/): trials are judged at rungs, fractions of their run.

    Args:
        name: fifo (every trial runs to its end) or pareto_halving.
        grace: the first rung, a fraction of each trial's steps; later rungs at grace * reduction^k below 1.
        reduction: at each rung the best ceil(n / reduction) of the n trials judged there continue.
    """

    name: str = "fifo"
    grace: float = 0.25
    reduction: float = 2.0

    @property
    def rungs(self) -> list[float]:
        if self.name == "fifo":
            return []
        found, rung = [], self.grace
        while rung < 1 - 1e-9:
            found.append(round(rung, 6))
            rung *= self.reduction
        return found

    def validate(self, path: str) -> None:
        from raybilevel.schedulers import SCHEDULERS

        _require(self.name == "fifo" or self.name in SCHEDULERS, path + ".name",
                 f"{self.name!r}: use fifo or {', '.join(SCHEDULERS.names())}")
        _require(0 < self.grace < 1, path + ".grace", f"{self.grace}: the first rung is a fraction of the run, in (0, 1)")
        _require(self.reduction > 1, path + ".reduction", f"{self.reduction}: must be > 1 (keep 1/reduction per rung)")


@dataclass
class SearchSpace:
    """A sweep. Exactly one of `params` (an Optuna search) and `grid` (an ablation) is given.

    Args:
        name: names the Optuna study and the Tune experiment.
        description: one line for the report.
        base: the config every trial starts from (dotted keys or nested sections).
        params: searched keys (see ParamSpec), in the order they are sampled.
        grid: an ablation grid (see GridSpec), run with Tune's grid search.
        objectives: two or three reported metrics and their directions (min or max), for the Pareto front.
        reference_point: one value per objective, worse than any trial of interest, for the raw hypervolume
            (kept beside the normalised one as a secondary).
        normalisation: the box of the normalised hypervolume, the one every verdict uses (scoring.py).
        endpoint: the practitioner's endpoint: the best concept rate at quality within delta of distill-only.
        fresh: the held-out re-evaluation of the front and the references when the sweep ends.
        sampler: Optuna's sampler (searches only).
        scheduler: early stopping at rungs (see SchedulerSpec); its rungs become train.eval_fractions.
        trials: how many trials a search runs (a grid runs cells x seeds).
        max_concurrent: trials at once (0 = as many as the cluster's CPUs and GPUs fit).
    """

    name: str = ""
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    params: dict[str, ParamSpec] = field(default_factory=dict)
    grid: GridSpec | None = None
    objectives: dict[str, str] = field(default_factory=lambda: {"quality": "min", "concept_rate": "min"})
    reference_point: dict[str, float] = field(default_factory=dict)
    normalisation: NormalisationSpec = field(default_factory=NormalisationSpec)
    endpoint: EndpointSpec = field(default_factory=EndpointSpec)
    fresh: FreshSpec = field(default_factory=FreshSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    trials: int = 8
    max_concurrent: int = 0

    @property
    def is_grid(self) -> bool:
        return self.grid is not None

    @property
    def num_trials(self) -> int:
        return len(self.grid.cells()) * len(self.grid.seeds) if self.grid else self.trials

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's Tune config (searched values, or factor levels + seed) -> dotted config overrides."""
        if not self.grid:
            return dict(params)
        merged: dict[str, Any] = {}
        for factor, levels in self.grid.factors.items():
            merged |= flatten(levels[params[factor]])
        return merged | {"seed": params["seed"]}

    def trial_config(self, params: dict[str, Any]) -> Config:
        tree: dict[str, Any] = {}
        for key, value in (flatten(self.base) | self.overrides(params)).items():
            set_path(tree, key, value)
        if self.scheduler.rungs:  # every trial evaluates at the rungs it is judged at
            train = tree.setdefault("train", {})
            train["eval_fractions"] = sorted(set(train.get("eval_fractions", [])) | set(self.scheduler.rungs))
        return config_from_dict(tree)

    def define_by_run(self, trial: Any) -> None:
        """Optuna's define-by-run space: keys whose `when` does not hold are not sampled at all."""
        chosen: dict[str, Any] = {}
        for key, spec in self.params.items():
            if spec.applies(chosen):
                chosen[key] = spec.suggest(trial, key)

    def grid_param_space(self) -> dict[str, Any]:
        from ray import tune

        return {**{name: tune.grid_search(list(levels)) for name, levels in self.grid.factors.items()},
                "seed": tune.grid_search(list(self.grid.seeds))}

    def plan(self) -> str:
        """What --dry-run prints: the sweep in a few lines."""
        lines = [f"sweep {self.name}: {self.description}".rstrip(": "),
                 "objectives: " + ", ".join(f"{k} ({v})" for k, v in self.objectives.items())
                 + "; hypervolume normalised (ideal teacher, nadir distill-only; scale "
                 + ", ".join(f"{k} {self.normalisation.scale.get(k, 'linear')}" for k in self.objectives)
                 + f"), raw reference point {self.reference_point}"]
        if self.grid:
            lines.append(f"ablation grid: {len(self.grid.cells())} cells x {len(self.grid.seeds)} seeds = {self.num_trials} trials")
            lines += [f"  {name}: {', '.join(levels)}" for name, levels in self.grid.factors.items()]
        else:
            lines.append(f"optuna search ({self.sampler.name}, seed {self.sampler.seed}): {self.trials} trials")
            for key, spec in self.params.items():
                what = spec.values if spec.type == "choice" else f"{spec.type} [{spec.low:g}, {spec.high:g}]{' log' if spec.log else ''}"
                lines.append(f"  {key}: {what}" + (f"  when {spec.when}" if spec.when else ""))
        base = self.trial_config(self.example_params())
        lines.append(f"per trial: {base.ray.num_workers} worker(s) x {base.ray.cpus_per_worker:g} CPU"
                     + (f" + {base.ray.gpus_per_worker:g} GPU" if base.ray.use_gpu else "")
                     + (f", {base.train.compute_budget:.4g} MACs (train.compute_budget)" if base.train.compute_budget
                        else f", {base.train.steps} steps") + f", world {base.world.kind}")
        if self.scheduler.rungs:
            lines.append(f"early stopping: {self.scheduler.name}, rungs at "
                         + ", ".join(f"{r:.0%}" for r in self.scheduler.rungs)
                         + f" of each run, best 1/{self.scheduler.reduction:g} continue")
        return "\n".join(lines)

    def check_files(self) -> None:
        """The prompt files every trial reads exist: called once tune.prepare resolved the space's paths, as
        load_space cannot (shipped spaces name files relative to themselves, or on a cluster)."""
        for example in _examples(self):
            try:
                self.trial_config(example).world.check_prompt_files()
            except UserError as error:
                raise SpaceError(self.name, str(error)) from None

    def example_params(self) -> dict[str, Any]:
        """Tune params of one trial (the first grid cell; a search's base config)."""
        if self.grid:
            return {name: next(iter(levels)) for name, levels in self.grid.factors.items()} | {"seed": self.grid.seeds[0]}
        return {}


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(path, message)


def resolve(space: str | Path) -> Path:
    """A file path, or the name of a shipped space (toy -> search_spaces/toy.yaml)."""
    path = Path(space)
    if path.is_file():
        return path
    shipped = SPACES_DIR / f"{space}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    raise UserError(f"--space {space}: no such file or shipped space; shipped: {', '.join(names)}")


def load_space(space: str | Path) -> SearchSpace:
    path = resolve(space)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpaceError(path.name, f"malformed YAML{yaml_where(error)}; fix the syntax") from None
    if not isinstance(data, dict):
        raise SpaceError(path.name, "the top level must be a mapping (name, base, params or grid, ...)")
    try:
        return validate(from_dict(SearchSpace, data))
    except UserError as error:  # a config error, or a registry name check_names refused
        raise SpaceError(path.name, str(error)) from None


def validate(space: SearchSpace) -> SearchSpace:
    """Everything checkable before a trial runs; raises ConfigError / UserError naming the key."""
    _require(bool(space.name) and "/" not in space.name, "name", "give the sweep a name (no '/')")
    _require((space.grid is None) != (not space.params), "params", "give either params (a search) or grid (an ablation)")
    _require(len(space.objectives) in (2, 3), "objectives", "name two or three metrics (three are drawn as pairwise projections)")
    for metric, mode in space.objectives.items():
        _require(mode in ("min", "max"), f"objectives.{metric}", f"{mode!r}: use min or max")
    _require(set(space.reference_point) == set(space.objectives), "reference_point",
             f"give one value for each objective: {', '.join(space.objectives)}")
    _require(space.trials >= 1 and space.max_concurrent >= 0, "trials", "trials >= 1 and max_concurrent >= 0")
    space.normalisation.validate("normalisation", space.objectives)
    space.endpoint.validate("endpoint")
    space.fresh.validate("fresh")
    space.sampler.validate("sampler")
    space.scheduler.validate("scheduler")
    if space.grid:
        space.grid.validate("grid")
    for key, spec in space.params.items():
        spec.validate(f"params.{key}")
    _check_when(space)
    for example in _examples(space):
        _check_config(space, example)
    _check_read_by(space)
    return space


def _check_when(space: SearchSpace) -> None:
    seen: dict[str, ParamSpec] = {}
    for key, spec in space.params.items():
        for other, allowed in spec.when.items():
            where = f"params.{key}.when.{other}"
            _require(other in seen, where, "refer to a choice key listed above this one")
            _require(seen[other].type == "choice", where, f"{other} is not a choice key")
            unknown = [v for v in allowed if v not in seen[other].values]
            _require(not unknown, where, f"{unknown} are not among {other}'s values {seen[other].values}")
        seen[key] = spec


def _examples(space: SearchSpace) -> list[dict[str, Any]]:
    """Trial configs that together use every searched value, grid level and seed once."""
    if space.grid:
        return [cell | {"seed": space.grid.seeds[0]} for cell in space.grid.cells()]
    examples = [{}]
    for key, spec in space.params.items():
        examples += [{key: value} for value in spec.options()]
    return examples


def _check_config(space: SearchSpace, params: dict[str, Any]) -> None:
    cfg = space.trial_config(params)
    check_names(cfg)
    _require(cfg.eval.enabled, "base.eval.enabled", "sweeps read their objectives from the final evaluation; keep it on")
    _require(not space.fresh.enabled or space.fresh.seed != cfg.eval.seed, "fresh.seed",
             f"{space.fresh.seed} is the trials' eval.seed: the held-out test needs a seed no trial was selected on")


def _check_read_by(space: SearchSpace) -> None:
    """Searching a key the picked method ignores (solver.lam for alternating) wastes trials and blurs the
    sampler's model: each such key needs a `when` limiting it to the methods that declare they read it."""
    defaults = flatten(space.trial_config(space.example_params()).to_dict())
    for key, spec in space.params.items():
        found = [(picker, readers) for picker, registry in METHOD_KEYS.items() if (readers := registry.readers(key))]
        if not found:
            continue
        picker, readers = found[0]
        if picker not in space.params:  # fixed in base (or by --set): every trial runs the same method
            _require(defaults[picker] in readers, f"params.{key}", f"{picker} is {defaults[picker]!r} in every trial, which "
                     f"ignores {key}; drop {key} from params, or set {picker} to {' or '.join(sorted(readers))}")
            continue
        values = set(space.params[picker].options())
        _require(bool(values & readers), f"params.{key}", f"no value of {picker} ({', '.join(sorted(values))}) reads "
                 f"{key}; drop {key} from params, or add {' or '.join(sorted(readers))} to {picker}'s values")
        ignored = sorted(set(spec.when.get(picker, values)) - readers)
        _require(not ignored, f"params.{key}", f"{picker} {ignored} ignore {key}; add "
                 f"`when: {{{picker}: [{', '.join(sorted(readers & values))}]}}`")
