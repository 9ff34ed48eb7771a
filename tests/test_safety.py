"""Files survive kills: a writer SIGKILLed at random moments leaves every report/record file complete
(old or new version) and the Optuna sqlite storage consistent. And a Ray started by raybilevel keeps its
dashboard on the loopback interface."""
from __future__ import annotations

import csv
import json
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from raybilevel.atomic import write_json_atomic

# Rewrites a JSON, a CSV and a binary file as fast as it can, each version self-describing (its length
# and a version number), so a torn file is detectable.
FILE_WRITER = textwrap.dedent("""
    import csv, io, json, sys
    from pathlib import Path
    from raybilevel.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
    root = Path(sys.argv[1])
    version = 0
    while True:
        version += 1
        rows = 200 + version % 300
        write_json_atomic(root / "pareto.json", {"version": version, "front": [{"x": i} for i in range(rows)], "n": rows})
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["n", rows])
        writer.writerows([[i, version] for i in range(rows)])
        write_text_atomic(root / "trials.csv", text.getvalue())
        write_bytes_atomic(root / "pareto.png", bytes([version % 251]) * (50_000 + rows))
""")

STUDY_WRITER = textwrap.dedent("""
    import sys
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=sys.argv[1], load_if_exists=True, directions=["minimize", "minimize"])
    while True:
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        study.tell(trial, [x, 1 - x])
""")


def _kill_repeatedly(script: str, arg: str, tmp_path, check, rounds: int = 6) -> None:
    rng = random.Random(0)
    for _ in range(rounds):
        writer = subprocess.Popen([sys.executable, "-c", script, arg], cwd=tmp_path)
        time.sleep(rng.uniform(2.0, 3.5))  # imports take ~1-2 s; then it writes continuously
        assert writer.poll() is None, "the writer died on its own"
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        check()


def test_report_files_are_never_torn_by_a_kill(tmp_path):
    def check() -> None:
        payload = json.loads((tmp_path / "pareto.json").read_text())
        assert len(payload["front"]) == payload["n"]
        with open(tmp_path / "trials.csv") as f:
            rows = list(csv.reader(f))
        assert int(rows[0][1]) == len(rows) - 1 and len({r[1] for r in rows[1:]}) == 1
        data = (tmp_path / "pareto.png").read_bytes()
        assert len(set(data)) == 1 and 50_200 <= len(data) < 50_500

    _kill_repeatedly(FILE_WRITER, str(tmp_path), tmp_path, check)


def test_the_optuna_storage_stays_consistent_through_kills(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    counts = []

    def check() -> None:
        with sqlite3.connect(tmp_path / "optuna.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        study = optuna.load_study(study_name="s", storage=url)
        complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert all(len(t.values) == 2 and t.values[0] == t.params["x"] for t in complete)
        counts.append(len(complete))

    _kill_repeatedly(STUDY_WRITER, url, tmp_path, check, rounds=3)
    assert counts == sorted(counts) and counts[-1] > counts[0]  # every round added trials, none were lost


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    import os

    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"quality": 1.0})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_json_atomic(target, {"quality": 2.0})
    assert json.loads(target.read_text()) == {"quality": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


# What the CLI does before a sweep, in a process of its own: the test process may be connected to the
# session's simulated cluster, and a connected process cannot start a local Ray.
DASHBOARD_PROBE = textwrap.dedent("""
    import json, psutil
    from raybilevel.tune import connected
    with connected(None) as dashboard:
        port = int(dashboard.rsplit(":", 1)[1])
        listening = [c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    print(json.dumps({"dashboard": dashboard, "listening": listening}))
""")


@pytest.mark.slow
def test_the_dashboard_listens_on_loopback_only():
    result = subprocess.run([sys.executable, "-c", DASHBOARD_PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["dashboard"].rsplit(":", 1)[0] == "127.0.0.1"
    assert probe["listening"] and set(probe["listening"]) == {"127.0.0.1"}
