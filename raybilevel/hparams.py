"""A trial's TensorBoard run as an HParams session (written by the sweep's trial driver, tune.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def write_hparams(run_dir: Path, trial_id: str, hparams: dict[str, Any]) -> None:
    """Mark the trial's TensorBoard run as an HParams session, so the HParams dashboard lists every trial
    with its values beside the run's last eval/* scalars (the final evaluation)."""
    from tensorboard.plugins.hparams import summary_v2 as hp
    from torch.utils.tensorboard import SummaryWriter

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    writer._get_file_writer().add_summary(hp.hparams_pb(values, trial_id=trial_id))
    writer.close()
