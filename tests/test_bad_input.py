"""The bad-input catalogue: every case exits 2 from the CLI with one line naming the problem and the fix,
no traceback, and every file that existed before is still there, unchanged."""
from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from helpers import TINY
from raybilevel.cli import main
from raybilevel.worlds.tiny_sd import CONCEPT
from raybilevel.worlds.toy.world import SHIPPED_ASSETS

TRAIN = ["--set", "eval.enabled=false"] + sum((["--set", s] for s in TINY), [])


@dataclass
class Case:
    name: str
    argv: Callable[[Path, dict], list[str]]  # (tmp_path, prepared assets) -> CLI arguments
    # The whole `raybilevel: ...` line; "{tmp}" stands for the test's tmp_path (str.replace, not format:
    # messages hold braces of their own).
    expect: str

    def line(self, tmp: Path) -> str:
        return self.expect.replace("{tmp}", str(tmp))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_sd) -> dict:
    """Runs and files the cases start from: a finished toy run (checkpoints at steps 2 and 4), one of
    another architecture, and a tiny SD pipeline with its imagefolder."""
    root = tmp_path_factory.mktemp("assets")
    for name, extra in (("run", []), ("other_arch", ["--set", "pruning.sparsity=0.5"])):
        assert main(["train", "--output", str(root / name), *TRAIN, *extra]) == 0
    world, judge = tiny_sd
    sd = dataclasses.asdict(dataclasses.replace(world, clip_judge=str(judge)))
    return {"root": root, "sd": sd}


def _yaml(tmp: Path, name: str, payload) -> str:
    path = tmp / name
    path.write_text(payload if isinstance(payload, str) else yaml.safe_dump(payload, sort_keys=False))  # params in order
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


def _train_set(override: str) -> Callable[[Path, dict], list[str]]:
    """`raybilevel train --set OVERRIDE` into a fresh output folder: most config cases are just that."""
    return lambda t, a: ["train", "--set", override, "--output", str(t / "o")]


SPACE = {"name": "s", "params": {"lower.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
         "reference_point": {"quality": 1e4, "concept_rate": 1.0}}
LAM = {"type": "float", "low": 1.0, "high": 100.0}
E = "raybilevel: error: "


def _tune(tmp: Path, space: dict, *args: str) -> list[str]:
    return ["tune", "--space", _yaml(tmp, "s.yaml", space), *args]


def _solver_space(solvers: list[str] | None, **lam) -> dict:
    """SPACE searching solver.lam (read by penalty only), with solver.name searched over `solvers` (None: fixed)."""
    params = {"solver.name": {"type": "choice", "values": solvers}} if solvers else {}
    return SPACE | {"params": params | {"solver.lam": LAM | lam}}


def _sd_space(tmp: Path, assets: dict) -> dict:
    """SPACE on the tiny SD world, evaluated on a prompt set that does not exist."""
    world = assets["sd"] | {"metrics": assets["sd"]["metrics"] | {"prompt_sets": [str(tmp / "i2p.csv")]}}
    return SPACE | {"base": {"world": world}}


NO_PROMPTS = "no .txt or .csv file at {tmp}/%s; fix the path, or give a .txt (one prompt per line) or .csv of prompts"
LAM_FIXED = (E + "search space s.yaml: config error at 'params.solver.lam': solver.name is 'alternating' in every "
             "trial, which ignores solver.lam; drop solver.lam from params, or set solver.name to penalty")
LAM_WHEN = (E + "search space s.yaml: config error at 'params.solver.lam': solver.name ['alternating'] ignore "
            "solver.lam; add `when: {solver.name: [penalty]}`")
CONCEPTS = "circle, square, triangle, cross, red, green, blue, yellow, plain, striped, outline"

CASES = [
    # config files and --set
    Case("malformed yaml", lambda t, a: ["train", "--config", _yaml(t, "c.yaml", "solver: [1, 2\n"), "--output", str(t / "o")],
         E + "config error at '{tmp}/c.yaml': malformed YAML (line 2); fix the syntax"),
    Case("unknown section", lambda t, a: ["train", "--config", _yaml(t, "c.yaml", {"solverr": {"K": 2}}), "--output", str(t / "o")],
         E + "config error at 'solverr': unknown key; did you mean 'solver'?"),
    Case("unknown key", _train_set("solver.KK=3"),
         E + "config error at 'solver.KK': unknown key; did you mean 'K'?"),
    Case("override without =", _train_set("solver.K"),
         E + "config error at '--set solver.K': an override needs a value: key.path=value, e.g. --set solver.K=5"),
    Case("wrong type", _train_set("train.steps=abc"),
         E + "config error at 'train.steps': expected an integer, got 'abc'"),
    Case("missing config file", lambda t, a: ["train", "--config", str(t / "nope.yaml"), "--output", str(t / "o")],
         E + "config error at '--config': no file at {tmp}/nope.yaml; pass an existing YAML file"),
    Case("unknown solver", _train_set("solver.name=bogus"),
         E + "config error at 'solver.name': unknown solver 'bogus'; choose one of: adaptive, alternating, bome, "
             "distill_only, joint, penalty, two_stage"),
    Case("unknown pruning", _train_set("pruning.method=bogus"),
         E + "config error at 'pruning.method': unknown pruning method 'bogus'; choose one of: blocks, channels, load, "
             "magnitude, none"),
    Case("unknown unlearning", _train_set("upper.method=bogus"),
         E + "config error at 'upper.method': unknown unlearning method 'bogus'; choose one of: ablation, esd, esd_u, esd_x"),
    Case("sparsity >= 1", _train_set("pruning.sparsity=1.0"),
         E + "config error at 'pruning.sparsity': 1.0 is out of range; use 0 <= sparsity < 1"),
    Case("negative lambda", _train_set("solver.lam=-1"),
         E + "config error at 'solver.lam': lam=-1.0 is negative; use lam >= 0"),
    Case("K = 0", _train_set("solver.K=0"),
         E + "config error at 'solver.K': K=0 is invalid; use an integer >= 1"),
    Case("batch size 0", _train_set("lower.batch_size=0"),
         E + "config error at 'lower.batch_size': must be >= 1"),
    Case("ZeRO stage 4", _train_set("engine.zero_stage=4"),
         E + "config error at 'engine.zero_stage': 4 is not a ZeRO stage; use 0, 1, 2 or 3"),
    Case("unknown NaN policy", _train_set("train.on_nonfinite=ignore"),
         E + "config error at 'train.on_nonfinite': 'ignore': use stop or skip"),
    Case("unknown toy concept", lambda t, a: ["train", "--set", "world.concept=dragon", "--output", str(t / "o"), *TRAIN],
         E + f"world.concept: unknown toy concept 'dragon'; choose one of: {CONCEPTS}"),
    Case("unknown toy concept, dry run", lambda t, a: ["train", "--set", "world.concept=dragon", "--dry-run"],
         E + f"world.concept: unknown toy concept 'dragon'; choose one of: {CONCEPTS}"),
    Case("unknown toy teacher, dry run", lambda t, a: ["train", "--set", "world.toy_teacher=teacher_9000", "--dry-run"],
         E + f"world.toy_teacher: no teacher 'teacher_9000' in {SHIPPED_ASSETS}; use one of ['teacher', 'teacher_6000']"),
    Case("toy teacher not a folder name", lambda t, a: ["train", "--set", "world.toy_teacher=../x", "--dry-run"],
         E + "config error at 'world.toy_teacher': '../x' is not a folder name; use teacher or teacher_6000"),
    Case("zero trials, dry run", lambda t, a: ["tune", "--trials", "0", "--dry-run", "--output", str(t / "z")],
         E + "--trials 0: a sweep needs at least 1 trial"),
    # models and data
    Case("missing model path", lambda t, a: _sd_world(t, a) + ["--set", f"world.pretrained={t / 'nope'}"],
         E + "config error at 'world.pretrained': no folder at {tmp}/nope; give an SD 1.x/2.x pipeline folder or hub id"),
    Case("missing dataset", lambda t, a: _sd_world(t, a, path=str(t / "nodata")),
         E + "config error at 'world.dataset.path': no metadata.jsonl in {tmp}/nodata or {tmp}/nodata/train; write one "
             "JSON row per image with 'file_name' and 'text'"),
    Case("empty dataset", lambda t, a: _sd_data(t, a, lambda rows: []),
         E + "config error at 'world.dataset.path': the imagefolder dataset at {tmp}/data has no rows; point "
             "world.dataset.path at images with captions"),
    Case("concept in fine-tuning data", lambda t, a: _sd_data(t, a, _with_concept),
         E + f"the fine-tuning data contains the concept {CONCEPT!r} in 1 captions (e.g. 'a house, {CONCEPT} style'); "
             "filter those rows out of world.dataset"),
    Case("unknown prompt file", lambda t, a: _sd_world(t, a) + ["--set", f"world.concept_prompts={t / 'nope.csv'}"],
         E + "config error at 'world.concept_prompts': " + NO_PROMPTS % "nope.csv"),
    Case("unknown prompt file, dry run", lambda t, a: _sd_world(t, a) + ["--set", f"world.concept_prompts={t / 'nope.csv'}",
                                                                         "--dry-run"],
         E + "config error at 'world.concept_prompts': " + NO_PROMPTS % "nope.csv"),
    Case("missing student", lambda t, a: ["eval", "--student", str(t / "nostudent"), "--output", str(t / "m.json")],
         E + "cannot load a student from {tmp}/nostudent (FileNotFoundError: [Errno 2] No such file or directory: "
             "'{tmp}/nostudent/student.json'); re-create it with save_student (raybilevel prune)"),
    # runs and checkpoints
    Case("output of another run", lambda t, a: [*_resume(_copy_run(t, a)), "--set", "solver.K=3"],
         E + "--output {tmp}/run holds another run (solver.K: 2 there, 3 now); choose a new directory or rerun with the "
             "same config to resume"),
    Case("truncated checkpoint", _truncated_checkpoint,
         E + "checkpoint file {tmp}/run/checkpoints/step_00000002/theta/mp_rank_00_model_states.pt is truncated or corrupt "
             "(PytorchStreamReader failed reading zip archive: failed finding central directory); delete its step_* "
             "folder to resume from the checkpoint before it"),
    Case("checkpoint of another architecture", _other_arch_checkpoint,
         E + "checkpoint {tmp}/run/checkpoints/step_00000002 holds another model than this config builds ('theta': size "
             "mismatch for down_blocks.0.resnets.0.conv1.weight: copying a param with shape torch.Size([16, 32, 3, 3]) "
             "from checkpoint, the shape in current model is torch.Size([24, 32, 3, 3]).); resume it with the config "
             "that wrote it, or train into a new --output"),
    # sweeps
    Case("malformed space", lambda t, a: ["tune", "--space", _yaml(t, "s.yaml", "params: {a: [\n"), "--dry-run"],
         E + "search space s.yaml: malformed YAML (line 2); fix the syntax"),
    Case("unknown key in space", lambda t, a: _tune(t, SPACE | {"params": {"lower.lrr": SPACE["params"]["lower.lr"]}}, "--dry-run"),
         E + "search space s.yaml: config error at 'lower.lrr': unknown key; did you mean 'lr'?"),
    Case("unknown prompt set in space", lambda t, a: _tune(t, _sd_space(t, a), "--output", str(t / "w")),
         E + "search space s: config error at 'world.metrics.prompt_sets': " + NO_PROMPTS % "i2p.csv"),
    Case("unknown prompt set in space, dry run", lambda t, a: _tune(t, _sd_space(t, a), "--dry-run"),
         E + "search space s: config error at 'world.metrics.prompt_sets': " + NO_PROMPTS % "i2p.csv"),
    Case("key of a solver the space never runs", lambda t, a: _tune(t, _solver_space(None), "--output", str(t / "w")), LAM_FIXED),
    Case("key of a solver the space never runs, dry run", lambda t, a: _tune(t, _solver_space(None), "--dry-run"), LAM_FIXED),
    Case("when naming only solvers that ignore the key",
         lambda t, a: _tune(t, _solver_space(["alternating", "penalty"], when={"solver.name": ["alternating"]}),
                            "--output", str(t / "w")), LAM_WHEN),
    Case("when naming only solvers that ignore the key, dry run",
         lambda t, a: _tune(t, _solver_space(["alternating", "penalty"], when={"solver.name": ["alternating"]}),
                            "--dry-run"), LAM_WHEN),
    Case("key no searched solver reads, dry run", lambda t, a: _tune(t, _solver_space(["alternating", "bome"]), "--dry-run"),
         E + "search space s.yaml: config error at 'params.solver.lam': no value of solver.name (alternating, bome) reads "
             "solver.lam; drop solver.lam from params, or add penalty to solver.name's values"),
    Case("trials on a grid", lambda t, a: ["tune", "--space", "toy_baselines", "--trials", "3", "--output", str(t / "g")],
         E + "--trials: toy_baselines is an ablation grid; it runs every cell once per seed"),
    Case("non-empty sweep output", lambda t, a: _tune(t, SPACE, "--output", str(_sweep_dir(t))),
         E + "--output {tmp}/sweep is not empty; pass --resume to continue the sweep there, or choose a new directory"),
    Case("resume without a sweep", lambda t, a: ["tune", "--resume", "--output", str(_sweep_dir(t))],
         E + "--resume: {tmp}/sweep holds no sweep (no space.yaml); run without --resume to start one"),
    Case("report of a non-sweep", lambda t, a: ["report", str(_sweep_dir(t))],
         E + "{tmp}/sweep holds no sweep (no space.yaml); pass the --output of `raybilevel tune`"),
    Case("unreachable Ray address", lambda t, a: _tune(t, SPACE, "--output", str(t / "w"), "--address", "127.0.0.1:1"),
         E + "--address 127.0.0.1:1: no Ray head answers there (Connection refused); start one with `ray start --head`, "
             "or check the host, port and firewall"),
    Case("dashboard URL as Ray address", lambda t, a: _tune(t, SPACE, "--output", str(t / "w"), "--address", "http://127.0.0.1:8265"),
         E + "--address http://127.0.0.1:8265: give the head's GCS address host:6379 (or ray://host:10001); an http:// "
             "address is the dashboard, used by `ray job submit --address`"),
]

# Real processes: argparse's own exit 2 (usage lines, then its error line) and two of the cases above.
PROCESS_CASES = [
    Case("unknown CLI flag", lambda t, a: ["train", "--bogus-flag"], E + "unrecognized arguments: --bogus-flag"),
    Case("unknown CLI flag, dry run", lambda t, a: ["train", "--dry-run", "--bogus-flag"], E + "unrecognized arguments: --bogus-flag"),
] + [c for c in CASES if c.name in ("unknown key", "unknown toy concept, dry run")]


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
    assert _messages(err)[0] == case.line(tmp_path)
    after = _files(tmp_path)
    assert {name: after.get(name) for name in before} == before  # nothing overwritten or lost


@pytest.mark.parametrize("case", PROCESS_CASES, ids=[c.name for c in PROCESS_CASES])
def test_a_real_process_exits_2_with_the_error_line_last(case, tmp_path):
    result = subprocess.run([sys.executable, "-m", "raybilevel", *case.argv(tmp_path, {})],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == case.line(tmp_path)


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
