"""A small embedding of every image and its nearest neighbours, shared by the findings.

Embedding: the image shrunk to 16x16, centred and scaled to unit length (so brightness and
contrast do not matter), projected on its top principal components. Cosine distance in this
space is small for the same picture with a little noise, resizing or re-encoding, and large for
different pictures.

At size everything streams: the components are fitted on a sample (PCA_SAMPLE images: the
top components of 768 pixels are settled long before), the pool is projected block by block,
and only [N, dims] float32 is kept (51 MB for 200k images at 64 dims, where the 16x16 pixels in
float64 were 1.2 GB). Neighbours: exact by blocked matrix products, or FAISS's inverted-file
index for large pools (see nearest_neighbours).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nnrecipe import runtime

log = logging.getLogger("nnrecipe.audit")
PCA_SAMPLE = 20_000
BLOCK = 4096  # images converted to float at a time (150 MB at 32x32 RGB, temporaries included)


def embed(pool, dims: int = 64, side: int = 16, seed: int = 0) -> torch.Tensor:
    """The pool's images -> [N, dims] unit vectors (zeros for constant or non-finite images)."""
    z = project(pool, dims, side, unit_rows=True, seed=seed)
    return F.normalize(z, dim=1)


def project(pool, dims: int, side: int = 16, unit_rows: bool = False,
            seed: int = 0) -> torch.Tensor:
    """[N, dims] float32: the pool's 16x16 pixels (each row centred and scaled to unit length
    when `unit_rows`) on their top principal components, fitted on a sample of rows."""
    n = len(pool)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, PCA_SAMPLE, replace=False)) if n > PCA_SAMPLE else np.arange(n)
    fit = torch.cat([_features(pool.images(sample[s:s + BLOCK]), side, unit_rows)
                     for s in range(0, len(sample), BLOCK)])  # float pixels: a block at a time
    mean = fit.mean(0)
    components = principal_components(fit - mean, dims)
    del fit
    out = torch.empty(n, components.shape[1] if components is not None else len(mean))
    mean = mean.float()  # the fit in float64, the projection in float32: 2-4x faster
    components = components.float() if components is not None else None
    for rows, images in pool.blocks(BLOCK):
        x = _features(images, side, unit_rows).float() - mean
        out[rows] = x @ components if components is not None else x
    return out


def _features(images: torch.Tensor, side: int, unit_rows: bool) -> torch.Tensor:
    x = pixels(images, side)
    if unit_rows:
        x = x - x.mean(1, keepdim=True)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return x


def pixels(thumbs: torch.Tensor, side: int = 16) -> torch.Tensor:
    """Images shrunk to at most side x side, flattened: [N, C * side * side] float64."""
    x = thumbs.nan_to_num(0.0, 0.0, 0.0)
    if x.shape[-1] > side or x.shape[-2] > side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1).double()


def principal_components(x: torch.Tensor, dims: int) -> torch.Tensor | None:
    """[D, dims] top principal directions of the centred rows of x, largest variance first;
    None when there are not more dimensions (or rows) than `dims`: keep x as it is.

    Exact, from the eigenvectors of the D x D covariance (D <= 768 here): faster and steadier
    than a randomised SVD, and deterministic.
    """
    if dims >= x.shape[1] or len(x) <= dims:
        return None
    with runtime.threads(1):  # a small matrix: extra LAPACK threads only wait
        _, vectors = torch.linalg.eigh(x.T @ x)
    return vectors[:, -dims:].flip(1)


def nearest_neighbours(z: torch.Tensor, k: int = 5, block: int | None = None,
                       progress: bool = True, exact_max: int | None = None,
                       probes: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine distances [N, k] and indices [N, k] of each row's k nearest other rows.

    Exact, by blocked matrix products: each block of rows against all rows, its top k kept;
    the block is sized so its similarity buffer stays near 128 MB whatever N. The work grows
    as N^2 (50k images: 39 s on 2 loaded cores, 200k: ~10 min), so above `exact_max` rows
    FAISS's inverted-file index searches `probes` of its 2 sqrt(N) cells per query instead
    (50k: 5.4 s, the true nearest neighbour found for all; scripts/bench_audit.py
    neighbours), when faiss is installed.
    """
    if exact_max is not None and len(z) > exact_max:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing
        try:
            import faiss  # noqa: F401  (optional: pip install faiss-cpu)
        except ImportError:
            log.warning("audit: %d images: exact neighbour search grows as N^2; pip install "
                        "faiss-cpu for the approximate one", len(z))
        else:
            return _faiss_neighbours(z, k, probes)
    return _blocked_neighbours(z, k, block, progress)


def _faiss_neighbours(z: torch.Tensor, k: int, probes: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    n, d = z.shape
    k = max(1, min(k, n - 1))
    x = np.ascontiguousarray(z.numpy(), dtype=np.float32)
    faiss.omp_set_num_threads(torch.get_num_threads())
    cells = max(1, int(2 * np.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # k-means: the cells need not be optimal, only coherent
    rng = np.random.default_rng(0)
    index.train(x[np.sort(rng.choice(n, min(n, 40 * cells), replace=False))])
    index.add(x)
    index.nprobe = probes
    sim, at = index.search(x, k + 1)
    # drop each row itself (not always first: an exact copy ties with it)
    order = np.argsort(at == np.arange(n)[:, None], axis=1, kind="stable")[:, :k]
    sim, at = np.take_along_axis(sim, order, 1), np.take_along_axis(at, order, 1)
    missing = at < 0  # fewer than k rows in the probed cells: as far as can be
    sim[missing], at[missing] = -1.0, np.arange(n).repeat(k).reshape(n, k)[missing]
    return torch.from_numpy(1 - sim).clamp_min(0), torch.from_numpy(at).long()


def _blocked_neighbours(z: torch.Tensor, k: int, block: int | None,
                        progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(z)
    k = max(1, min(k, n - 1))
    block = block or max(64, (32 << 20) // max(1, n))
    dist = torch.empty(n, k)
    idx = torch.empty(n, k, dtype=torch.long)
    zt = z.T.contiguous()
    buffer = torch.empty(min(block, n), n)  # reused: a fresh buffer each time page-faults
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
