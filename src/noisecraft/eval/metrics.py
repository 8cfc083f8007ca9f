"""Metrics of the evaluation: Frechet distance between feature sets, top-k hits and PSNR. Torch only."""

from __future__ import annotations

import math

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of features [N, D], in float64."""
    x = features.double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape [N, D], got {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance_stats(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    The trace of the matrix square root is computed without a general `sqrtm`: sigma1 sigma2 has
    the same eigenvalues as the symmetric PSD matrix s sigma2 s with s = sigma1^(1/2), so
    tr((sigma1 sigma2)^(1/2)) = sum(sqrt(eigvalsh(s sigma2 s))). Two `eigh` calls, float64.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    values, vectors = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt
    return float(distance.clamp_min(0))


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Frechet distance between two sets of feature vectors, each summarised by a Gaussian."""
    return frechet_distance_stats(*gaussian_stats(features1), *gaussian_stats(features2))


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, whether `labels` is among the `k` largest logits (bool [N]). Ties count as misses only
    when k other classes score strictly higher."""
    k = min(k, logits.shape[-1])
    target = logits.gather(1, labels.long()[:, None])
    return (logits > target).sum(1) < k


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two pictures or sets of them on the 8-bit scale (0..255, any
    dtype), from the mean squared error over all their values."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))
