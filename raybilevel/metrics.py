"""World-independent metric arithmetic, each checked against a direct computation in tests."""
from __future__ import annotations

import torch


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2); the symmetric form keeps every
    square root on a positive semi-definite matrix, so eigh is exact where sqrtm of S_a S_b is not.
    """
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2 * cross)
    return float(value.clamp(min=0))


def changed_prompt_share(student: torch.Tensor, teacher: torch.Tensor, prompt_ids: torch.Tensor) -> float:
    """The paper's CP: the share of prompts whose mean CLIP similarity fell from the teacher's to the student's.

    student, teacher: (N,) CLIP similarities of each sample to its prompt, row i of both drawn from the same
    prompt and seed; prompt_ids: (N,) which prompt each row belongs to. A prompt counts when the mean over its
    rows is strictly lower for the student, so a student equal to its teacher scores 0.
    """
    if not student.shape == teacher.shape == prompt_ids.shape or student.dim() != 1 or not len(student):
        raise ValueError(f"changed_prompt_share needs three (N,) tensors, N >= 1; got shapes {tuple(student.shape)}, "
                         f"{tuple(teacher.shape)}, {tuple(prompt_ids.shape)}")
    _, groups = torch.unique(prompt_ids, return_inverse=True)
    sizes = torch.bincount(groups).double()

    def prompt_means(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(sizes), dtype=torch.float64).index_add_(0, groups, values.double()) / sizes

    return float((prompt_means(student) < prompt_means(teacher)).double().mean())
