"""The bad-input catalogue: every case exits 2 from the CLI with one line naming the problem and the fix,
no traceback, and every file that existed before is still there, unchanged."""
from __future__ import annotations

import dataclasses
import errno
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from helpers import TINY
from raybilevel.cli import main
from raybilevel.worlds.tiny_sd import CONCEPT, build_tiny_sd_assets

TRAIN = ["--set", "eval.enabled=false"] + sum((["--set", s] for s in TINY), [])


@dataclass
class Case:
    name: str
    argv: Callable[[Path, dict], list[str]]  # (tmp_path, prepared assets) -> CLI arguments
    expect: str  # a piece of the one-line message


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """Runs and files the cases start from: a finished toy run (checkpoints at steps 2 and 4), one of
    another architecture, and a tiny SD pipeline with its imagefolder."""
    root = tmp_path_factory.mktemp("assets")
    for name, extra in (("run", []), ("other_arch", ["--set", "pruning.sparsity=0.5"])):
        assert main(["train", "--output", str(root / name), *TRAIN, *extra]) == 0
    world, judge = build_tiny_sd_assets(root / "sd")
    sd = dataclasses.asdict(dataclasses.replace(world, clip_judge=str(judge)))
    return {"root": root, "sd": sd}


def _yaml(tmp: Path, name: str, payload) -> str:
    path = tmp / name
    path.write_text(payload if isinstance(payload, str) else yaml.safe_dump(payload))
    return str(path)


def _copy_run(tmp: Path, assets: dict, name: str = "run") -> Path:
    """A copy of the finished toy run with its last checkpoint removed, so that a rerun resumes from step 2."""
    run = tmp / "run"
    shutil.copytree(assets["root"] / name, run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    return run


def _resume(run: Path) -> list[str]:
    return ["train", "--output", str(run), *TRAIN]


def _truncated_checkpoint(tmp: Path, assets: dict) -> list[str]:
    run = _copy_run(tmp, assets)
    shard = next((run / "checkpoints" / "step_00000002" / "theta").glob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[:1000])
    return _resume(run)


def _other_arch_checkpoint(tmp: Path, assets: dict) -> list[str]:
    run = _copy_run(tmp, assets)
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    shutil.copytree(assets["root"] / "other_arch" / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000002")
    return _resume(run)


def _sd_world(tmp: Path, assets: dict, **dataset) -> list[str]:
    world = assets["sd"] | {"dataset": assets["sd"]["dataset"] | dataset}
    return ["train", "--config", _yaml(tmp, "sd.yaml", {"world": world}), "--output", str(tmp / "out"), *TRAIN]


def _sd_data(tmp: Path, assets: dict, captions: Callable[[list[dict]], list[dict]]) -> list[str]:
    source = Path(assets["sd"]["dataset"]["path"])
    rows = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines()]
    folder = tmp / "data"
    folder.mkdir()
    rows = captions(rows)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows:
        (folder / row["file_name"]).symlink_to(source / row["file_name"])
    return _sd_world(tmp, assets, path=str(folder))


def _with_concept(rows: list[dict]) -> list[dict]:
    rows[0]["text"] = f"a house, {CONCEPT} style"
    return rows


def _sweep_dir(tmp: Path) -> Path:
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "notes.txt").write_text("mine")
    return tmp / "sweep"


SPACE = {"name": "s", "params": {"lower.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
         "reference_point": {"quality": 1e4, "concept_rate": 1.0}}

CASES = [
    # config files and --set
    Case("malformed yaml", lambda t, a: ["train", "--config", _yaml(t, "c.yaml", "solver: [1, 2\n"), "--output", str(t / "o")], "line"),
    Case("unknown section", lambda t, a: ["train", "--config", _yaml(t, "c.yaml", {"solverr": {"K": 2}}), "--output", str(t / "o")], "solverr"),
    Case("unknown key", lambda t, a: ["train", "--set", "solver.KK=3", "--output", str(t / "o")], "solver.KK"),
    Case("override without =", lambda t, a: ["train", "--set", "solver.K", "--output", str(t / "o")], "key.path=value"),
    Case("wrong type", lambda t, a: ["train", "--set", "train.steps=abc", "--output", str(t / "o")], "train.steps"),
    Case("missing config file", lambda t, a: ["train", "--config", str(t / "nope.yaml"), "--output", str(t / "o")], "nope.yaml"),
    Case("unknown solver", lambda t, a: ["train", "--set", "solver.name=bogus", "--output", str(t / "o")], "solver.name"),
    Case("unknown pruning", lambda t, a: ["train", "--set", "pruning.method=bogus", "--output", str(t / "o")], "pruning.method"),
    Case("unknown unlearning", lambda t, a: ["train", "--set", "upper.method=bogus", "--output", str(t / "o")], "upper.method"),
    Case("sparsity >= 1", lambda t, a: ["train", "--set", "pruning.sparsity=1.0", "--output", str(t / "o")], "pruning.sparsity"),
    Case("negative lambda", lambda t, a: ["train", "--set", "solver.lam=-1", "--output", str(t / "o")], "solver.lam"),
    Case("K = 0", lambda t, a: ["train", "--set", "solver.K=0", "--output", str(t / "o")], "solver.K"),
    Case("batch size 0", lambda t, a: ["train", "--set", "lower.batch_size=0", "--output", str(t / "o")], "lower.batch_size"),
    Case("ZeRO stage 4", lambda t, a: ["train", "--set", "engine.zero_stage=4", "--output", str(t / "o")], "engine.zero_stage"),
    Case("unknown NaN policy", lambda t, a: ["train", "--set", "train.on_nonfinite=ignore", "--output", str(t / "o")], "train.on_nonfinite"),
    Case("unknown toy concept", lambda t, a: ["train", "--set", "world.concept=dragon", "--output", str(t / "o"), *TRAIN], "dragon"),
    Case("unknown toy concept, dry run", lambda t, a: ["train", "--set", "world.concept=dragon", "--dry-run"], "world.concept"),
    Case("zero trials, dry run", lambda t, a: ["tune", "--trials", "0", "--dry-run", "--output", str(t / "z")], "--trials 0"),
    # models and data
    Case("missing model path", lambda t, a: _sd_world(t, a) + ["--set", f"world.pretrained={t / 'nope'}"], "world.pretrained"),
    Case("missing dataset", lambda t, a: _sd_world(t, a, path=str(t / "nodata")), "nodata"),
    Case("empty dataset", lambda t, a: _sd_data(t, a, lambda rows: []), "no rows"),
    Case("concept in fine-tuning data", lambda t, a: _sd_data(t, a, _with_concept), "contains the concept"),
    Case("missing student", lambda t, a: ["eval", "--student", str(t / "nostudent"), "--output", str(t / "m.json")], "nostudent"),
    # runs and checkpoints
    Case("output of another run", lambda t, a: [*_resume(_copy_run(t, a)), "--set", "solver.K=3"], "holds another run"),
    Case("truncated checkpoint", _truncated_checkpoint, "truncated or corrupt"),
    Case("checkpoint of another architecture", _other_arch_checkpoint, "another model"),
    # sweeps
    Case("malformed space", lambda t, a: ["tune", "--space", _yaml(t, "s.yaml", "params: {a: [\n"), "--dry-run"], "line"),
    Case("unknown key in space", lambda t, a: ["tune", "--space", _yaml(t, "s.yaml", SPACE | {"params": {"lower.lrr": SPACE["params"]["lower.lr"]}}),
                                               "--dry-run"], "lower.lrr"),
    Case("trials on a grid", lambda t, a: ["tune", "--space", "toy_baselines", "--trials", "3", "--output", str(t / "g")], "--trials"),
    Case("non-empty sweep output", lambda t, a: ["tune", "--space", _yaml(t, "s.yaml", SPACE), "--output", str(_sweep_dir(t))], "not empty"),
    Case("resume without a sweep", lambda t, a: ["tune", "--resume", "--output", str(_sweep_dir(t))], "holds no sweep"),
    Case("report of a non-sweep", lambda t, a: ["report", str(_sweep_dir(t))], "holds no sweep"),
    Case("unreachable Ray address", lambda t, a: ["tune", "--space", _yaml(t, "s.yaml", SPACE), "--output", str(t / "w"),
                                                  "--address", "127.0.0.1:1"], "no Ray head answers"),
    Case("dashboard URL as Ray address", lambda t, a: ["tune", "--space", _yaml(t, "s.yaml", SPACE), "--output", str(t / "w"),
                                                       "--address", "http://127.0.0.1:8265"], "GCS address"),
]


def _messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("raybilevel:")]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line_and_loses_nothing(case, assets, tmp_path, capsys):
    argv = case.argv(tmp_path, assets)
    before = _files(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(_messages(err)) == 1, err  # (progress bars of loaders may precede it)
    assert case.expect in _messages(err)[0], err
    after = _files(tmp_path)
    assert {name: after.get(name) for name in before} == before  # nothing overwritten or lost


def test_catalogue_has_at_least_25_cases():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing the step-4 checkpoint: one line, exit 2, step 2 intact and no partial step 4
    left behind; once space is back the same command resumes from step 2."""
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "step_00000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), *TRAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(_messages(err)) == 1, err
    assert "no space left" in err.lower() and "step_00000002 is intact" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--output", str(run), *TRAIN]) == 0
    assert json.loads((run / "metrics.json").read_text())["resumed_from"] == 2
