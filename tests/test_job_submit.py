"""`ray job submit` of the toy sweep job (jobs/) to a local Ray head that this test starts and stops,
plus consistency checks of the cluster-launcher YAML and the KubeRay RayJob manifest."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml

from raybilevel.search_space import load_space

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
RAY = str(Path(sys.executable).with_name("ray"))
# The robustness job, shrunk to two tiny trials: what is tested is the submission path, not the sweep's size.
TINY_TRIALS = ["--trials", "2", "--set", "train.compute_budget=0", "--set", "train.steps=4", "--set", "train.checkpoint_every=2",
               "--set", "world.toy_images=128", "--set", "world.n_concept_images=8",
               "--set", "world.sampling_steps=2", "--set", "lower.batch_size=8", "--set", "upper.batch_size=4",
               "--set", "eval.n_samples=16", "--set", "eval.attack.draws=4", "--set", "eval.attack.rounds=1"]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` on free ports; SIGTERM to that process stops exactly this head."""
    # no auth token for a local head; no 30 s drain on SIGTERM (it waits for Serve proxies, which are none)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    Path(tempfile.gettempdir(), "ray").mkdir(exist_ok=True)
    gcs, dashboard, agent, client = _free_ports(4)
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                             "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError:
                time.sleep(1)
        yield url, env
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
        log.close()


@pytest.mark.slow
def test_the_robustness_sweep_job_runs_on_a_submitted_cluster_with_early_stopping(ray_head, tmp_path):
    """jobs/runtime_env_attack.yaml (toy_attack: three objectives, the prompt attack, pareto_halving), shrunk
    to two tiny trials; the toy job differs from it only in SWEEP_SPACE (checked below)."""
    url, env = ray_head
    runtime_env = yaml.safe_load((JOBS / "runtime_env_attack.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env["env_vars"]["SWEEP_OUTPUT"] = str(tmp_path / "sweep")
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))

    submitted = subprocess.run([RAY, "job", "submit", "--address", url, "--runtime-env", str(tmp_path / "runtime_env.yaml"),
                                "--", "bash", "jobs/sweep.sh", *TINY_TRIALS],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in logs, logs[-4000:]
    assert "sweep toy_attack: 2 of 2 trials finished" in logs  # the job's own output, streamed back
    out = tmp_path / "sweep"
    summary = json.loads((out / "pareto.json").read_text())
    assert summary["sweep"] == "toy_attack" and summary["n_trials"] == 2
    assert list(summary["objectives"]) == ["quality", "concept_rate", "attack_concept_rate"]
    decisions = [json.loads(line) for line in (out / "scheduler.jsonl").read_text().splitlines()]
    assert {d["rung"] for d in decisions} == {0.25, 0.5}  # both trials judged at the space's rungs
    for decision in decisions:
        if decision["stop"]:  # every stop, with its reason, in the job's streamed log
            assert f"trial {decision['trial']} {decision['reason']}" in logs
    for trial in (out / "trials").iterdir():
        evals = [json.loads(line) for line in (trial / "run" / "evals.jsonl").read_text().splitlines()]
        assert all(0.0 <= e["attack_concept_rate"] <= 1.0 for e in evals)  # the attack ran at every rung
        assert evals[0]["eval_settings"]["attack"]["draws"] == 4  # the job's --set reached the trial
    assert (out / "report.html").is_file() and (out / "pareto.png").is_file()


def test_every_runtime_env_names_a_shipped_space_and_the_entrypoint_exists():
    assert (JOBS / "sweep.sh").is_file()
    for path in sorted(JOBS.glob("runtime_env_*.yaml")):
        runtime_env = yaml.safe_load(path.read_text())
        assert runtime_env["working_dir"] == "."
        assert load_space(runtime_env["env_vars"]["SWEEP_SPACE"]).name == runtime_env["env_vars"]["SWEEP_SPACE"]
        assert Path(runtime_env["env_vars"]["SWEEP_OUTPUT"]).is_absolute()  # workers run in other folders
    toy, attack = (yaml.safe_load((JOBS / f"runtime_env_{name}.yaml").read_text()) for name in ("toy", "attack"))
    for runtime_env in (toy, attack):
        del runtime_env["env_vars"]["SWEEP_SPACE"], runtime_env["env_vars"]["SWEEP_OUTPUT"]
    assert toy == attack  # so the submitted robustness job stands for the toy job too


def test_cluster_launcher_yaml_fits_ray_s_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cluster = yaml.safe_load((JOBS / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert any('-e "$HOME/raybilevel[nsfw]"' in command for command in cluster["setup_commands"])


def test_rayjob_manifest_runs_the_entrypoint_on_this_ray_version():
    job = yaml.safe_load((JOBS / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"] == "bash /app/jobs/sweep.sh"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    env_vars = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    space = load_space(env_vars["SWEEP_SPACE"])
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    per_trial = space.trial_config(space.example_params()).ray
    assert gpus >= per_trial.num_workers * per_trial.gpus_per_worker  # a pod holds a whole trial
