"""`raybilevel train | prune | eval | toy | tune | report`.

Bad input exits 2 with one line naming the field and the fix."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from raybilevel.cli_ray import add_ray_commands
from raybilevel.errors import ConfigError, NonFiniteLossError, UserError


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (defaults: the embedded toy world)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set solver.K=5 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _load(args: argparse.Namespace, prompt_files: bool = True):
    from raybilevel.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if prompt_files:  # before the heavy imports: a wrong path should not wait for torch and the models
        cfg.world.check_prompt_files()
    if args.dry_run:
        from raybilevel.train import check_names

        check_names(cfg)  # what the real run refuses before it starts
        print(dump_config(cfg), end="")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.dry_run:
        return 0
    import torch

    from raybilevel.train import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.set_num_threads(1)  # several processes on few cores: more threads made steps 60-300x slower
    metrics = train(cfg, Path(args.output))
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return 0


def _config_and_world(args: argparse.Namespace):
    """(config, world), or None after --dry-run printed the config."""
    cfg = _load(args)
    if args.dry_run:
        return None
    from raybilevel.worlds import build_world

    return cfg, build_world(cfg.world, cfg.seed)


def cmd_prune(args: argparse.Namespace) -> int:
    if (loaded := _config_and_world(args)) is None:
        return 0
    from raybilevel.pruning import prune, save_student

    cfg, world = loaded
    student = prune(cfg.pruning.method, world.teacher, sparsity=cfg.pruning.sparsity, seed=cfg.seed, path=cfg.pruning.path)
    save_student(student, Path(args.output))
    print(json.dumps(student.description.get("stats", {}), indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if (loaded := _config_and_world(args)) is None:
        return 0
    from raybilevel.atomic import write_json_atomic
    from raybilevel.evaluate import evaluate
    from raybilevel.pruning import load_student

    cfg, world = loaded
    unet = world.teacher if args.student == "teacher" else load_student(Path(args.student)).model
    metrics = evaluate(world, unet, cfg.eval)
    if args.output:
        write_json_atomic(Path(args.output), metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _load(args, prompt_files=False)  # export reads only world.pretrained
    if args.dry_run:
        return 0
    if cfg.world.kind != "diffusers":
        raise ConfigError("world.kind", "export writes a Stable Diffusion pipeline: it needs world.kind diffusers "
                          "and world.pretrained (the teacher pipeline whose parts go beside the student)")
    from raybilevel.export import export_pipeline, needs_raybilevel
    from raybilevel.pruning import load_student
    from raybilevel.worlds.diffusers_world import resolve_pipeline

    folder = export_pipeline(load_student(Path(args.student)), resolve_pipeline(cfg.world.pretrained),
                             Path(args.output))
    load = f"StableDiffusionPipeline.from_pretrained({str(folder)!r})"
    if needs_raybilevel(folder):
        load = f"import raybilevel.export; {load}"  # diffusers loads a named class only once it is imported
    print(f"wrote {folder}: {load} samples from the student")
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    from raybilevel.worlds.toy import build

    if args.action == "build":
        if args.checkpoint_every < 0:
            raise UserError(f"--checkpoint-every {args.checkpoint_every}: must be 0 (never) or a number of steps")
        report = build.build(Path(args.output) if args.output else build.ASSETS, seed=args.seed,
                             teacher_steps=args.teacher_steps, judge_epochs=args.judge_epochs,
                             n_images=args.images, judge_only=args.judge_only,
                             checkpoint_every=args.checkpoint_every)
        print(json.dumps(report, indent=2))
        return 0
    from raybilevel.worlds.toy.inspect import inspect_world

    print(json.dumps(inspect_world(Path(args.output or "toy_inspect"), n_samples=args.n_samples), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raybilevel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a pruned student and erase a concept")
    _config_args(train)
    train.add_argument("--output", default="runs/default", help="run directory (resumes if it holds this run)")
    train.set_defaults(func=cmd_train)

    prune = sub.add_parser("prune", help="prune the world's teacher and save the student")
    _config_args(prune)
    prune.add_argument("--output", default="student", help="folder for the pruned student")
    prune.set_defaults(func=cmd_prune)

    evaluate = sub.add_parser("eval", help="evaluate a saved student (or the teacher) with the world's judges")
    _config_args(evaluate)
    evaluate.add_argument("--student", required=True, help="student folder, or 'teacher'")
    evaluate.add_argument("--output", help="write the metrics here as JSON")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="write a saved student as a diffusers Stable Diffusion pipeline folder")
    _config_args(export)
    export.add_argument("--student", required=True, help="student folder (a run's student/ or raybilevel prune's)")
    export.add_argument("--output", required=True, help="pipeline folder to write")
    export.set_defaults(func=cmd_export)

    toy = sub.add_parser("toy", help="build or inspect the embedded toy world")
    toy.add_argument("action", choices=["build", "inspect"])
    toy.add_argument("--output", help="build: assets folder (default: the package's); inspect: report folder")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--teacher-steps", type=int, default=4000, help="build: the shipped teacher's 4000 (default)")
    toy.add_argument("--checkpoint-every", type=int, default=250,
                     help="build: save the teacher's training state every N steps; rerunning into the same "
                          "--output resumes from it (0: never)")
    toy.add_argument("--judge-epochs", type=int, default=6)
    toy.add_argument("--images", type=int, default=19_200, help="build: training images for teacher and judge")
    toy.add_argument("--judge-only", action="store_true", help="rebuild only the judge")
    toy.add_argument("--n-samples", type=int, default=256, help="inspect: teacher samples per prompt group")
    toy.set_defaults(func=cmd_toy)

    add_ray_commands(sub)  # tune, report
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"raybilevel: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:  # a fault of the run, not of the input; its last checkpoint is kept
        print(f"raybilevel: training stopped: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
