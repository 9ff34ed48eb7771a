"""Shared fixtures. Helpers live in helpers.py; every test gets its own RAYBILEVEL_CACHE and no test writes
to the home folder."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# Files whose tests start or join a Ray cluster: sweeps, Ray Train, job submission, the dashboard probe.
RAY_FILES = ("test_job_submit.py", "test_ray_train.py", "test_safety.py", "test_tune.py")


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: runs without xdist too
def pytest_xdist_make_scheduler(config, log):
    """CI's `-n 2 --dist loadfile`, with the Ray files as one unit: each file runs on one worker (its module
    fixtures are built once), and the Ray tests run on one worker, one at a time and in file order, as in a
    serial run: two local Rays on one machine contend for the dashboard's port, and Ray's helpers join the
    latest-started cluster. (xdist's loadgroup cannot do this: it renames node ids, which pytest 9 ignores.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class RayFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "ray tests" if file.rsplit("/", 1)[-1] in RAY_FILES else file

    return RayFilesTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def no_writes_to_home(tmp_path_factory):
    """Caches that libraries put under ~ (matplotlib's, Hugging Face's, XDG) go to a session folder."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "HF_HOME")}
    os.environ.update(XDG_CACHE_HOME=str(home / "cache"), MPLCONFIGDIR=str(home / "matplotlib"), HF_HOME=str(home / "hf"))
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """raybilevel's cache (concept images, teacher baselines) is per test: no test sees another's files."""
    monkeypatch.setenv("RAYBILEVEL_CACHE", str(tmp_path / "raybilevel-cache"))
    return tmp_path / "raybilevel-cache"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """The one tiny SD world (epsilon, 32 images) every diffusers-path test reads: (world config, CLIP judge
    folder). Read-only: a test that changes a file copies it to its own tmp_path first."""
    from raybilevel.worlds.tiny_sd import build_tiny_sd_assets

    return build_tiny_sd_assets(tmp_path_factory.mktemp("tiny_sd"))


# Session scope: started once, shut down after the last test. The pytest process stays connected to it, so
# no test starts a local Ray in this process (the CLI and the dashboard probe run as subprocesses, whose
# `ray.init(address="local")` starts a Ray of their own).
@pytest.fixture(scope="session")
def two_nodes():
    """A simulated cluster: a 0-CPU head and two 1-CPU nodes (~5-10 s to start), this process connected."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()

