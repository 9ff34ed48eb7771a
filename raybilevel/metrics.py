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


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), in float64."""
    return (a.double() @ b.double().T / a.shape[1] + 1) ** 3


class KernelReference:
    """A large reference feature set, its kernel statistics computed once and reused by every model scored
    against it: E k(y, y') over the reference is the expensive part of KID."""

    def __init__(self, features: torch.Tensor, standardize: bool = True) -> None:
        """standardize: centre every feature set on the reference's mean and divide by one scalar, the
        reference's root-mean-square spread per dimension (one fixed isotropic map, so still an MMD, and
        the kernel's "+1" meets features of order 1). Per-dimension scaling is avoided: nearly constant
        (dead ReLU) reference features would blow up any sample that differs there."""
        if len(features) < 2:
            raise ValueError("a KID reference needs at least two feature rows")
        features = features.double()
        self.shift = features.mean(0) if standardize else torch.zeros(features.shape[1], dtype=torch.float64)
        spread = float(features.var(0).mean().sqrt()) if standardize else 1.0
        self.scale = spread if spread > 1e-12 else 1.0
        self.features = self.map(features)
        n = len(self.features)
        gram = polynomial_kernel(self.features, self.features)
        self.mean_kyy = float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))

    def map(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() - self.shift) / self.scale

    def parts(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k(x_i, x_j) over the samples, mean_j k(x_i, y_j) per sample): KID from any subset of rows."""
        samples = self.map(samples)
        return polynomial_kernel(samples, samples), polynomial_kernel(samples, self.features).mean(1)

    def kid(self, samples: torch.Tensor) -> float:
        kxx, kxy = self.parts(samples)
        return kid_from_parts(kxx, kxy, self.mean_kyy)


def kid_from_parts(kxx: torch.Tensor, kxy: torch.Tensor, mean_kyy: float, rows: torch.Tensor | None = None) -> float:
    """The unbiased MMD^2 estimate with the polynomial kernel (KID): mean over pairs i != j of k(x_i, x_j)
    + E k(y, y') - 2 mean k(x_i, y); `rows` picks (with repeats, for the bootstrap) which samples count."""
    if rows is None:
        rows = torch.arange(kxx.shape[0])
    if len(rows) < 2:
        raise ValueError("KID needs at least two samples")
    # pairs of the same original sample are left out (a resample repeats rows: k(x, x) would bias it up)
    distinct = rows.view(-1, 1) != rows.view(1, -1)
    within = kxx[rows][:, rows][distinct].mean()
    return float(within + mean_kyy - 2 * kxy[rows].mean())


def bootstrap_interval(statistic, n: int, *, reps: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of statistic(rows) over n samples resampled with replacement.
    `statistic` takes a LongTensor of row indices; non-finite replicates are dropped."""
    if n < 2:
        return [float("nan"), float("nan")]
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(torch.randint(0, n, (n,), generator=generator)) for _ in range(reps)],
                          dtype=torch.float64)
    values = values[torch.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2
    return [float(torch.quantile(values, tail)), float(torch.quantile(values, 1 - tail))]


# Two-sided 95% Student-t quantiles by degrees of freedom (benchmarks report means over a few seeds).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_halfwidth(values: list[float]) -> float:
    """Half-width of the 95% Student-t interval of the mean over seeds (0 for one value: no spread known)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return T_975.get(len(values) - 1, 1.96) * std / len(values) ** 0.5
