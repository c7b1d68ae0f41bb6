"""A small embedding of every image and its nearest neighbours, shared by the findings.

Embedding: the image shrunk to 16x16, centred and scaled to unit length (so brightness and
contrast do not matter), projected on its top principal components. Cosine distance in this
space is small for the same picture with a little noise, resizing or re-encoding, and large for
different pictures. Neighbours are found by blocked matrix products (exact, vectorised):
50,000 images take seconds, where a Python loop over pairs would take hours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nnrecipe import runtime


def embed(thumbs: torch.Tensor, dims: int = 64, side: int = 16) -> torch.Tensor:
    """[N, C, H, W] pixels -> [N, dims] unit vectors (zeros for constant or non-finite images)."""
    x = pixels(thumbs, side)
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return F.normalize(pca(x, dims).float(), dim=1)


def pixels(thumbs: torch.Tensor, side: int = 16) -> torch.Tensor:
    """Images shrunk to at most side x side, flattened: [N, C * side * side] float64."""
    x = thumbs.nan_to_num(0.0, 0.0, 0.0)
    if x.shape[-1] > side or x.shape[-2] > side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1).double()


def pca(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Projection of the centred rows of x on their top `dims` principal components.

    Exact, from the eigenvectors of the D x D covariance (D <= 768 here): faster and steadier
    than a randomised SVD, and deterministic.
    """
    x = x - x.mean(0)
    if dims >= x.shape[1] or len(x) <= dims:
        return x
    covariance = x.T @ x
    with runtime.threads(1):  # a small matrix: extra LAPACK threads only wait
        _, vectors = torch.linalg.eigh(covariance)
    return x @ vectors[:, -dims:].flip(1)  # largest variance first


def nearest_neighbours(z: torch.Tensor, k: int = 5, block: int = 1024,
                       progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine distances [N, k] and indices [N, k] of each row's k nearest other rows."""
    n = len(z)
    k = max(1, min(k, n - 1))
    dist = torch.empty(n, k)
    idx = torch.empty(n, k, dtype=torch.long)
    zt = z.T.contiguous()
    buffer = torch.empty(min(block, n), n)  # reused: a fresh 200 MB block each time page-faults
    starts = range(0, n, block)
    for s in tqdm(starts, desc="audit: nearest neighbours", unit="block", leave=False,
                  disable=None if progress else True):
        rows = torch.arange(s, min(s + block, n))
        sim = torch.mm(z[s : s + block], zt, out=buffer[: len(rows)])
        sim[rows - s, rows] = -float("inf")  # an image is not its own neighbour
        top, at = sim.topk(k, dim=1)
        dist[s : s + block] = (1 - top).clamp_min(0)
        idx[s : s + block] = at
    return dist, idx
