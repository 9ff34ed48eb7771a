"""Per-objective parameter importance of a search, from its Optuna study: which knobs decide quality and
which decide suppression.

Optuna's get_param_importances with one target per objective and its default evaluator (PED-ANOVA in
Optuna 5: how much each parameter's distribution differs between the best trials for that objective and
all trials). Conditional parameters (solver.K, solver.lam, ...) are assessed too, from the few trials that
have them: read their values with care. Grids have no study: nothing is written.
"""
from __future__ import annotations

import warnings
from typing import Any

MIN_TRIALS = 4  # fewer complete trials cannot rank anything: every parameter looks decisive


def importances(storage_url: str, study_name: str, objectives: list[str]) -> list[dict[str, Any]]:
    """Rows of (objective, param, importance), importances of each objective summing to 1; [] when the
    study has fewer than MIN_TRIALS complete trials or no parameter shared by all of them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:  # no such study: a grid, or a sweep that has not told Optuna anything yet
        return []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS:
        return []
    rows = []
    for index, name in enumerate(objectives):
        sign = 1.0 if study.directions[index] == optuna.study.StudyDirection.MINIMIZE else -1.0
        with warnings.catch_warnings():  # PED-ANOVA warns that it ranks for *low* targets: the sign sees to it
            warnings.simplefilter("ignore")
            try:
                found = optuna.importance.get_param_importances(
                    study, target=lambda trial, i=index, s=sign: s * trial.values[i])
            except (RuntimeError, ValueError):  # e.g. every trial has the same value of every parameter
                return []
        rows += [{"objective": name, "param": param, "importance": value} for param, value in found.items()]
    return rows
