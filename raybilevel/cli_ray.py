"""`raybilevel tune` and `raybilevel report`: sweeps on Ray and their reports (registered by cli.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_tune(args: argparse.Namespace) -> int:
    from raybilevel.tune import connected, prepare, run_sweep

    space, sweep = prepare(Path(args.output), args.space, trials=args.trials, overrides=args.overrides,
                           resume=args.resume, check_output=not args.dry_run)
    space.check_files()  # before any trial: a missing prompt file would otherwise fail each one
    if args.dry_run:
        print(space.plan())
        return 0
    # first and on its own line: Ray later prints a tensorboard command for its temporary folder, not this one
    print(f"TensorBoard for this sweep's trials: tensorboard --logdir {sweep.trials_dir}", flush=True)
    with connected(args.address, args.dashboard_host) as dashboard:
        if dashboard:
            print(f"Ray dashboard: http://{dashboard}", flush=True)
        report = run_sweep(space, sweep, resume=args.resume)
    failed = [r for r in report.records if r.status == "failed"]
    finished = [r for r in report.records if r.status != "running"]
    stopped = sum(r.status == "stopped" for r in report.records)
    print(f"sweep {space.name}: {len(finished)} of {space.num_trials} trials finished, {len(failed)} failed, "
          + (f"{stopped} stopped early ({space.scheduler.name}; reasons in {sweep.scheduler_log}), " if stopped else "")
          + f"front of {len(report.front)}; {scores_line(report)}")
    for record in failed:
        print(f"  failed {record.trial_id}: {record.error}")
    if len(finished) < space.num_trials:
        print(f"interrupted; continue with: raybilevel tune --resume --output {sweep.root}")
    print(f"report: {sweep.root / 'report.html'}")
    print(f"tensorboard --logdir {sweep.trials_dir}")
    if not space.is_grid:
        print(f"optuna-dashboard {sweep.optuna_url}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raybilevel.errors import UserError
    from raybilevel.report import write_report
    from raybilevel.trials import SweepDir

    sweep = SweepDir(Path(args.directory))
    if not sweep.space_file.is_file():
        raise UserError(f"{args.directory} holds no sweep (no space.yaml); pass the --output of `raybilevel tune`")
    if args.reevaluate:
        from raybilevel.fresh import reevaluate

        write_report(sweep.root)  # the front to re-evaluate
        reevaluate(sweep.root)
    report = write_report(sweep.root)
    print(f"{len(report.records)} trials, front of {len(report.front)}, {scores_line(report)}: {sweep.root / 'report.html'}")
    return 0


def scores_line(report) -> str:
    """The normalised hypervolume, the raw one, the endpoint and the fresh values, in one line each part."""
    norm = report.normalised_hypervolume
    parts = [f"normalised hypervolume {norm:.4g}" if norm is not None else "normalised hypervolume n/a (no references yet)",
             f"raw hypervolume {report.hypervolume:.6g}"]
    for label, found in (("endpoint", report.endpoint), ("fresh endpoint", (report.fresh_summary or {}).get("endpoint"))):
        if found and found.get("trial_id"):
            parts.append(f"{label} {found['concept']} {found['concept_value']:.3g} at {found['quality']} "
                         f"{found['quality_value']:.3g} (within {found['delta']:.2g} of distill-only, {found['trial_id']})")
        elif found and "threshold" in found:
            parts.append(f"{label}: no trial within {found['delta']:.2g} of distill-only {found['quality']}")
    fresh = ((report.fresh_summary or {}).get("normalised") or {}).get("hypervolume")
    if fresh is not None:
        parts.append(f"fresh normalised hypervolume {fresh:.4g}")
    return "; ".join(parts)


def add_ray_commands(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser("tune", help="run a multi-objective sweep (Ray Tune + Optuna, or an ablation grid)")
    tune.add_argument("--space", help="search-space YAML, or a shipped space's name (default: toy)")
    tune.add_argument("--trials", type=int, help="trials of an Optuna search (default: the space's)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override the space's base config for every trial, e.g. --set train.steps=20")
    tune.add_argument("--output", default="runs/sweep", help="sweep directory (default: runs/sweep)")
    tune.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start Ray here)")
    tune.add_argument("--dashboard-host", default="127.0.0.1",
                      help="interface the dashboard of a Ray started here listens on (default: loopback only; "
                           "0.0.0.0 exposes it, unauthenticated, to the network)")
    tune.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --output")
    tune.add_argument("--dry-run", action="store_true", help="validate the space, print the plan and exit")
    tune.set_defaults(func=cmd_tune)

    report = sub.add_parser("report", help="rebuild a sweep's report (Pareto front, tables, plots, HTML)")
    report.add_argument("directory", help="the sweep's --output directory")
    report.add_argument("--reevaluate", action="store_true",
                        help="first evaluate the front and the references again on the space's fresh eval seed "
                             "(resumes where a killed one stopped)")
    report.set_defaults(func=cmd_report)
