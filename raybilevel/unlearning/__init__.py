"""Upper-level unlearning losses, by name: esd_x, esd_u, esd, ablation (a new one is one file)."""
from raybilevel.unlearning import ablation, esd  # noqa: F401  (registers the methods)
from raybilevel.unlearning.base import UnlearningLoss, UpperBatch
from raybilevel.unlearning.registry import UNLEARNING

__all__ = ["UNLEARNING", "UnlearningLoss", "UpperBatch"]
