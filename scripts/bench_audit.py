"""The audit at size, and its label-issue finder against cleanlab's.

    python scripts/bench_audit.py audit /path/to/folder [image_size]   # the whole audit
    python scripts/bench_audit.py synthetic [num_samples]              # in-memory, 32x32 RGB
    python scripts/bench_audit.py neighbours [num_samples]             # blocked vs FAISS
    python scripts/bench_audit.py labels                               # planted label errors

`audit` prints each stage's seconds, the total and the peak memory (make a folder with
scripts/make_image_folder.py /tmp/f200k --images 200000 --size 32; target: 200k 32x32 images
in 5 minutes on 2 cores). `neighbours` times the exact blocked search and FAISS's flat and
inverted-file indexes on the same unit vectors. `labels` plants label errors (5% of the
labels moved to another class) in the digits and in learnable synthetic images, computes the
out-of-fold probabilities once, and prints how many planted errors each finder flags and at
what precision: the audit's confident-learning rule and cleanlab's find_label_issues.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nnrecipe.audit import run_audit  # noqa: E402


def audit(overrides: list[str], what: str) -> float:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("inspect_data", overrides=["logger=none", *overrides])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        findings = run_audit(cfg, Path(out))
        seconds = time.perf_counter() - start
    peak = findings["peak_memory_mb"]
    for stage, s in findings["timings"].items():
        print(f"  {stage:<22} {s:6.1f} s   peak memory so far {peak['after_stage'][stage]:6d} MB")
    print(f"audit of {what}: {seconds:.1f} s, peak memory {peak['audit']} MB "
          f"(largest decoding process {peak['largest_worker']} MB); "
          f"{torch.get_num_threads()} threads")
    return seconds


def neighbours(n: int) -> None:
    from nnrecipe.audit.embed import nearest_neighbours

    rng = np.random.default_rng(0)  # clustered, like images: 200 groups of similar pictures
    centres = rng.normal(size=(200, 64))
    z = torch.from_numpy(centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, 64)))
    z = torch.nn.functional.normalize(z.float(), dim=1)
    start = time.perf_counter()
    _, exact = nearest_neighbours(z, k=5, progress=False)
    blocked = time.perf_counter() - start
    start = time.perf_counter()
    _, approx = nearest_neighbours(z, k=5, progress=False, exact_max=0)
    ivf = time.perf_counter() - start
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    start = time.perf_counter()
    index = faiss.IndexFlatIP(64)
    index.add(z.numpy())
    index.search(z.numpy(), 6)
    flat = time.perf_counter() - start
    found = (approx[:, 0] == exact[:, 0]).float().mean().item()
    print(f"{n:,} vectors, k=5, {torch.get_num_threads()} threads: blocked products "
          f"{blocked:.1f} s, FAISS flat {flat:.1f} s, FAISS inverted file {ivf:.1f} s "
          f"(finds the true nearest neighbour of {found:.1%})")


def plant(labels: np.ndarray, classes: int, fraction: float, seed: int = 0):
    """Labels with `fraction` of them moved to another class, and the moved positions."""
    rng = np.random.default_rng(seed)
    moved = np.sort(rng.choice(len(labels), int(fraction * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[moved] = (labels[moved] + rng.integers(1, classes, len(moved))) % classes
    return noisy, set(moved.tolist())


def compare_label_finders(name: str, overrides: list[str], fraction: float = 0.05) -> None:
    from cleanlab.filter import find_label_issues

    from nnrecipe.audit import labels as audit_labels
    from nnrecipe.audit.pool import build_pool
    from nnrecipe.data import build_data

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("inspect_data", overrides=["logger=none", *overrides])
    pool = build_pool(build_data(cfg.data, cfg.seed, "cpu"), cfg.audit.thumb_size, False)
    k = len(pool.class_names)
    pool.labels, planted = plant(pool.labels, k, fraction)
    a = cfg.audit
    start = time.perf_counter()
    probs = audit_labels.out_of_fold_probs(pool, a.label_folds, a.label_dims, 0, a.label_l2)
    fit = time.perf_counter() - start
    print(f"{name}: {len(pool):,} images, {len(planted)} planted label errors, out-of-fold "
          f"accuracy against the noisy labels {audit_labels.accuracy(pool, probs):.1%} "
          f"({fit:.1f} s)")
    finders = {
        "hand-written confident learning": lambda: audit_labels._confident_issues(
            pool.labels, probs),
        **{f"cleanlab find_label_issues({by})": (lambda by=by: find_label_issues(
            pool.labels, probs, filter_by=by, return_indices_ranked_by="self_confidence"))
           for by in ("prune_by_noise_rate", "both", "confident_learning")},
        "the audit's label_issues (what report.json lists)": lambda: [
            f["pool"] for f in audit_labels.label_issues(pool, probs, len(pool))],
    }
    for finder, run in finders.items():
        start = time.perf_counter()
        flagged = {int(i) for i in run()}
        seconds = time.perf_counter() - start
        hits = len(flagged & planted)
        print(f"  {finder:<52} flags {len(flagged):5d}: {hits:5d} planted "
              f"(recall {hits / len(planted):.1%}, precision {hits / max(1, len(flagged)):.1%})"
              f", {seconds:.2f} s")


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "synthetic"
    if what == "audit":
        size = argv[2] if len(argv) > 2 else "32"
        audit(["data=image_folder", f"data.root={argv[1]}", f"data.image_size={size}"],
              f"{argv[1]} at {size}x{size}")
    elif what == "synthetic":
        n = int(argv[1]) if len(argv) > 1 else 50_000
        audit(["data=synthetic", f"data.num_samples={n}", "data.shape=[3,32,32]"],
              f"{n:,} synthetic 32x32 images")
    elif what == "neighbours":
        neighbours(int(argv[1]) if len(argv) > 1 else 50_000)
    elif what == "labels":
        compare_label_finders("digits", ["data=digits"])
        compare_label_finders("synthetic 3x32x32, noise 2.0", [
            "data=synthetic", "data.num_samples=20000", "data.shape=[3,32,32]",
            "data.noise=2.0"])
    else:
        raise SystemExit(__doc__)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {rss:.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
