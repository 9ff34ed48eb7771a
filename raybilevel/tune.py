"""Ray Tune over a search space: Optuna (several objectives) or a grid proposes trials, each trial drives a
Ray Train run (distributed.fit), and the report is rebuilt after every finished trial.

A trial's driver is a function trainable holding a token CPU share (Tune rejects 0) while its Ray Train
workers hold the real resources; handing a TorchTrainer straight to the Tuner fails under Train V2.
The Optuna study lives in DIR/optuna.db, so optuna-dashboard can open it while the sweep runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna
import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from raybilevel.atomic import write_text_atomic
from raybilevel.config import Config, flatten, parse_override
from raybilevel.distributed import fit, storage_for
from raybilevel.errors import UserError
from raybilevel.references import forget_failure, mark_failed, write_references
from raybilevel.hparams import write_hparams
from raybilevel.report import Report, write_report
from raybilevel.report_scores import SweepBox
from raybilevel.schedulers import SCHEDULERS
from raybilevel.schedulers.tune_adapter import RuleScheduler
from raybilevel.schedulers.verdicts import AwaitVerdict
from raybilevel.search_space import SamplerSpec, SearchSpace, load_space, resolve
from raybilevel.search_space import validate as validate_space
from raybilevel.slots import GatedGrid, GatedLimiter, SlotGate
from raybilevel.trials import SweepDir, TrialRecord

DRIVER_CPU = 0.01  # a trial's driver only waits on its Ray Train run
# Config keys holding files or folders (or hub ids / dataset names, which exist nowhere on disk).
PATH_KEYS = ("world.pretrained", "world.dataset.path", "world.concept_prompts", "world.concept_images",
             "world.clip_judge", "world.metrics.fid_weights", "world.metrics.reference.path",
             "world.metrics.prompt_sets", "pruning.path")  # prompt_sets: a list of files


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, within `timeout`, when nothing listens at a host:port (or ray://host:port)
    address: ray.init itself retries an unreachable head for a minute and then raises a traceback."""
    if address == "auto":
        return
    if "://" in address and not address.startswith("ray://"):
        raise UserError(f"--address {address}: give the head's GCS address host:6379 (or ray://host:10001); an "
                        "http:// address is the dashboard, used by `ray job submit --address`")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected host:port, e.g. 10.0.0.1:6379 (or ray://host:10001, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise UserError(f"--address {address}: no Ray head answers there ({error.strerror or error}); start one with "
                        "`ray start --head`, or check the host, port and firewall") from None


@contextmanager
def connected(address: str | None, dashboard_host: str = "127.0.0.1") -> Iterator[str]:
    """Join the cluster at `address` (or RAY_ADDRESS, as inside `ray job submit`), else start Ray here
    ("local": without it ray.init would join whichever cluster this machine started last) with its
    dashboard bound to `dashboard_host` (loopback unless asked). On exit, disconnect from a cluster, or
    stop the Ray started here. Yields the dashboard's address (empty when it does not run)."""
    Path(tempfile.gettempdir(), "ray").mkdir(exist_ok=True)  # Ray fails under a custom TMPDIR without it
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            context = ray.init(address=address)
        except ConnectionError as error:
            raise UserError(f"--address {address}: {str(error).splitlines()[0]}") from None
    else:
        context = ray.init(address="local", dashboard_host=dashboard_host)
    try:
        yield context.dashboard_url or ""
    finally:
        ray.shutdown()


def _absolute(value: str, space_file: Path) -> str:
    """Tune runs each trial's driver in the trial's folder: a relative path must become absolute. It is read
    against this folder first, then against the space file's (shipped spaces' prompt files); a value found
    in neither (a hub id, a dataset name) is left as it is."""
    if Path(value).is_absolute():
        return value
    found = next((p for p in (Path(value), space_file.parent / value) if p.exists()), None)
    return str(found.resolve()) if found is not None else value


def prepare(output: Path, space_arg: str | None = None, *, trials: int | None = None, overrides: list[str] = (),
            resume: bool = False, check_output: bool = True) -> tuple[SearchSpace, SweepDir]:
    """The space to run and its directory: a new sweep in an empty DIR (the space's `trials` and base
    config changed by --trials / --set), or the one DIR holds (--resume, which changes nothing)."""
    sweep = SweepDir(Path(output))
    if resume:
        if not sweep.space_file.is_file():
            raise UserError(f"--resume: {output} holds no sweep (no space.yaml); run without --resume to start one")
        space = load_space(sweep.space_file)
        if trials is not None or overrides or (space_arg is not None and load_space(space_arg).name != space.name):
            raise UserError(f"--resume continues sweep {space.name} exactly as it was started; drop --trials and --set "
                            "(and any --space naming another sweep)")
        return space, sweep
    if check_output and sweep.root.exists() and any(sweep.root.iterdir()):
        raise UserError(f"--output {output} is not empty; pass --resume to continue the sweep there, or choose a new directory")
    space_file = resolve(space_arg or "toy")
    space = load_space(space_file)
    if trials is not None and space.is_grid:
        raise UserError(f"--trials: {space.name} is an ablation grid; it runs every cell once per seed")
    base = flatten(space.base) | dict(parse_override(text) for text in overrides)
    for key in PATH_KEYS:
        if isinstance(base.get(key), list):
            base[key] = [_absolute(value, space_file) for value in base[key]]
        elif base.get(key):
            base[key] = _absolute(base[key], space_file)
    if trials is not None and trials < 1:
        raise UserError(f"--trials {trials}: a sweep needs at least 1 trial")
    space = dataclasses.replace(space, trials=space.trials if trials is None else trials, base=base)
    try:
        return validate_space(space), sweep
    except UserError as error:  # a config error, or a registry name check_names refused
        raise UserError(f"--set: {error}") from None


def run_sweep(space: SearchSpace, sweep: SweepDir, *, resume: bool = False) -> Report:
    """Run (or resume) the sweep on the connected Ray cluster; returns the final report."""
    example = space.trial_config(space.example_params())  # what every trial shares: storage, resources
    storage = storage_for(example, sweep.ray_storage)
    trainable = tune.with_resources(tune.with_parameters(_run_trial, space=space, root=str(sweep.root.resolve()),
                                                         train_storage=f"{storage}/{space.name}-train"),
                                    {"CPU": DRIVER_CPU})
    experiment = f"{storage}/{space.name}"
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise UserError(f"--resume: Tune saved no state at {experiment}; rerun without --resume into a new directory")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True)
    else:
        sweep.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(sweep.space_file, yaml.safe_dump(dataclasses.asdict(space), sort_keys=False))
        # one trial fewer at once while the reference run below holds a trial's slot (slots.py)
        gate = SlotGate(sweep.root.resolve(), concurrency(space, example, ray.cluster_resources()))
        search = GatedGrid(gate) if space.is_grid else GatedLimiter(_optuna(space, sweep), gate)
        tuner = tune.Tuner(
            trainable,
            param_space=space.grid_param_space() if space.is_grid else None,
            tune_config=tune.TuneConfig(search_alg=search,
                                        scheduler=_scheduler(space, sweep),
                                        num_samples=1 if space.is_grid else space.trials),
            run_config=tune.RunConfig(name=space.name, storage_path=storage, callbacks=[ReportEachTrial(sweep.root)],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    # beside the trials, in one trial worker's slot (a whole CPU had left no room for any trial's worker on a
    # 2-CPU machine): teacher, step-0 and distill-only points (cached per sweep and per base config)
    forget_failure(sweep.root)
    references = ray.remote(**reference_resources(example))(write_references).remote(sweep.root.resolve(), example)
    references.future().add_done_callback(lambda done: mark_failed(sweep.root, done.exception()))
    tuner.fit()
    try:
        ray.get(references)
    except ray.exceptions.RayError as error:  # the trials stand without them; say why in one line
        print(f"[raybilevel] reference points skipped: {str(error).strip().splitlines()[-1][:200]}")
    if space.fresh.enabled and _all_ended(space, sweep):
        _reevaluate_front(sweep, example)
    return write_report(sweep.root)


def _all_ended(space: SearchSpace, sweep: SweepDir) -> bool:
    records = sweep.records()
    return len(records) >= space.num_trials and all(r.status != "running" for r in records)


def _reevaluate_front(sweep: SweepDir, example: Config) -> None:
    """The held-out test (fresh.py), in one trial worker's slot (a GPU on a GPU cluster); a failure leaves the
    selection values standing and says why in one line."""
    from raybilevel.fresh import reevaluate

    write_report(sweep.root)  # the front it re-evaluates is the final one
    print(f"[raybilevel] re-evaluating the front and the references on fresh eval seed {load_space(sweep.space_file).fresh.seed}", flush=True)
    try:
        ray.get(ray.remote(**reference_resources(example))(reevaluate).remote(sweep.root.resolve()))
    except ray.exceptions.RayError as error:
        print(f"[raybilevel] fresh re-evaluation stopped: {str(error).strip().splitlines()[-1][:200]}")


def reference_resources(cfg: Config) -> dict[str, float]:
    """What the reference task reserves: one trial worker's share, so that it takes one trial slot, not more."""
    resources = {"num_cpus": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["num_gpus"] = cfg.ray.gpus_per_worker
    return resources


def concurrency(space: SearchSpace, cfg: Config, total: dict[str, float]) -> int:
    """Trials at once: the space's max_concurrent, else as many as the cluster's `total` resources fit."""
    if space.max_concurrent:
        return space.max_concurrent
    need = {"CPU": cfg.ray.num_workers * cfg.ray.cpus_per_worker + DRIVER_CPU}
    if cfg.ray.use_gpu:
        need["GPU"] = cfg.ray.num_workers * cfg.ray.gpus_per_worker
    fits = min(int(total.get(kind, 0) // amount) for kind, amount in need.items())
    if fits < 1:
        raise UserError(f"a trial needs {need} but the cluster has {({k: total.get(k, 0) for k in need})}; lower "
                        "ray.num_workers or ray.cpus_per_worker in the space's base (the trial's driver holds "
                        f"{DRIVER_CPU} CPU), or set max_concurrent on an autoscaling cluster")
    return fits


def sampler_for(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    if spec.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=spec.population, seed=spec.seed)
    return optuna.samplers.TPESampler(n_startup_trials=spec.startup_trials, seed=spec.seed)  # MOTPE for 2+ objectives


def _scheduler(space: SearchSpace, sweep: SweepDir) -> RuleScheduler | None:
    """The space's early-stopping rule as a Tune scheduler (None: Tune's FIFO, every trial runs to its end).
    Its decisions live in DIR/scheduler.jsonl, which a resumed sweep's rule reads back."""
    spec = space.scheduler
    if not spec.rungs:
        return None
    rule = SCHEDULERS.get(spec.name)(space.objectives, space.reference_point, spec.rungs, spec.reduction,
                                     sweep.scheduler_log.resolve(), box=SweepBox(space, sweep.root.resolve()))
    return RuleScheduler(rule, sweep.root.resolve())


def _optuna(space: SearchSpace, sweep: SweepDir) -> OptunaSearch:
    return OptunaSearch(space=space.define_by_run, metric=list(space.objectives), mode=list(space.objectives.values()),
                        sampler=sampler_for(space.sampler), study_name=space.name,
                        storage=optuna.storages.RDBStorage(sweep.optuna_url))


def _run_trial(params: dict[str, Any], space: SearchSpace, root: str, train_storage: str) -> None:
    """One trial's driver: record it, run it on Ray Train (resuming an interrupted run), record the end."""
    trial_id = tune.get_context().get_trial_id()
    cfg = space.trial_config(params)
    folder = SweepDir(Path(root)).trial_dir(trial_id)
    record = TrialRecord(trial_id, params, space.overrides(params), cfg.solver.name, folder=folder)
    record.save()
    # under an early-stopping scheduler the run waits for the verdict on each evaluation and ends on a stop
    verdicts = AwaitVerdict(folder, tuple(space.objectives)) if space.scheduler.rungs else None
    try:
        fit(cfg, record.run_dir, name=trial_id, storage_path=train_storage,
            callbacks=[ObjectiveReports(list(space.objectives))], after_eval=verdicts)
    except Exception as error:
        if not _stopped(folder):
            record.finish("failed", error=failure_reason(error))
        raise
    if _stopped(folder):  # Optuna was told the rung's values: keep them, and stamp when the run really ended
        stopped = TrialRecord.load(folder / "trial.json")
        stopped.finish("stopped", stopped.objectives, error=stopped.error)
        return
    metrics = json.loads((record.run_dir / "metrics.json").read_text())
    objectives = {name: metrics.get(name) for name in space.objectives}  # NaN/inf were written as null
    write_hparams(record.run_dir, trial_id, {"solver": cfg.solver.name, **params})
    missing = [name for name, value in objectives.items() if value is None]
    if missing:
        # Failing the trial is how Optuna learns it has no point (a NaN result is refused and left RUNNING).
        reason = f"objective(s) {', '.join(missing)} not finite in run/metrics.json (e.g. no judged sample qualified)"
        record.finish("failed", objectives, error=reason)
        raise NoObjectiveError(reason)
    record.finish("done", objectives)


def _stopped(folder: Path) -> bool:
    """Whether the early-stopping scheduler has ended this trial (it writes the record, tune_adapter.py)."""
    return TrialRecord.load(folder / "trial.json").status == "stopped"


class NoObjectiveError(RuntimeError):
    """A trial trained and evaluated but produced no finite value for an objective."""


class ObjectiveReports(TuneReportCallback):
    """Forwards to Tune the reports that carry the objectives (evaluations), not checkpoint-only ones:
    Tune's searchers reject a result without their metrics."""

    def __init__(self, objectives: list[str]) -> None:
        super().__init__()
        self.objectives = objectives

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if all(name in metrics[0] for name in self.objectives):
            super().after_report(run_context, metrics, checkpoint)


def failure_reason(error: BaseException) -> str:
    """One line: the exception a Ray Train worker raised (rank 0's first), else the error itself."""
    failures = getattr(error, "worker_failures", None)
    cause = next(iter(failures.values())) if failures else error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__


class ReportEachTrial(tune.Callback):
    """After each finished or failed trial: rebuild the report and log the hypervolume so far."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record_file = SweepDir(self.root).trial_dir(trial.trial_id) / "trial.json"
        if record_file.is_file():  # the driver itself may have died before recording why
            record = TrialRecord.load(record_file)
            if record.status == "running":
                record.finish("failed", error=failure_reason(trial.get_pickled_error() or RuntimeError("the trial's driver died")))
        self._update()

    def _update(self) -> None:
        report = write_report(self.root)
        if not report.history:
            return
        count, trial_id, volume = report.history[-1]
        norm = report.normalised_history[-1] if report.normalised_history else None
        print(f"[raybilevel] {count} trial(s) finished (last {trial_id}); "
              + (f"normalised hypervolume {norm:.4g}, " if norm is not None else "")
              + f"raw hypervolume {volume:.6g}, "
              f"front of {len(report.front)}; report: {self.root / 'report.html'}", flush=True)
