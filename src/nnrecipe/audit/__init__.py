"""Recipe step 1, become one with the data: search, sort and plot, so a person looks at what
matters.

    run_audit(cfg, run_dir) -> findings   (also writes report.md, report.json, figures/)

One module per family of findings: pool (reading every split), duplicates, quality (corrupt and
unusual files), outliers, labels (likely label errors), model_view (a trained model's mistakes),
report (the outputs).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from nnrecipe import runtime
from nnrecipe.audit import duplicates, labels, outliers, quality, report
from nnrecipe.audit.embed import embed, nearest_neighbours
from nnrecipe.audit.pool import Pool, build_pool
from nnrecipe.data import build_data
from nnrecipe.tracking import start_tracking

log = logging.getLogger("nnrecipe.audit")


def run_audit(cfg: DictConfig, run_dir: Path, name: str | None = None) -> dict:
    """Audit the data of `cfg` (the config src/train.py would get, plus `audit` and
    `checkpoint`) and write report.md, report.json and figures into `run_dir`."""
    runtime.seed_everything(cfg.seed)
    runtime.set_threads(cfg.trainer.num_threads)
    trained = _load_trained(cfg) if cfg.get("checkpoint") else None
    clock = Stopwatch()
    with clock("read data"):
        data = build_data(cfg.data, trained[2] if trained else cfg.seed, "cpu")
    classes = data.targets == "classes"
    if not classes:  # regression / multi-label: what applies, and what it skipped
        from nnrecipe.audit.targets import audit_targets

        return audit_targets(data, cfg.audit.outlier_score, cfg.audit.max_shown, Path(run_dir))
    with clock("decode images"):
        pool = build_pool(data, cfg.audit.thumb_size, bool(cfg.trainer.progress))
    log.info("audit: %d images in %d classes", len(pool), len(pool.class_names))
    f = find(pool, cfg, clock)
    if trained is not None:
        from nnrecipe.audit.model_view import model_view

        with clock("model view"):
            device = runtime.pick_device(cfg.trainer.device)
            f["model"] = {"checkpoint": str(trained[1]), **model_view(
                trained[0], data, pool, cfg.audit.max_shown, device)}
    publish(f, pool, cfg, Path(run_dir), name, clock)
    return f


def find(pool: Pool, cfg: DictConfig, clock: Stopwatch) -> dict:
    """Every finding about the pool, as report.json holds it (plus internal pool positions)."""
    a = cfg.audit
    f = split_findings(pool)
    with clock("exact duplicates"):
        exact = duplicates.exact_duplicates(pool)
    with clock("embedding"):
        z = embed(pool, dims=a.embedding_dims, seed=cfg.seed)
    with clock("nearest neighbours"):
        dist, idx = nearest_neighbours(z, k=a.neighbours, progress=bool(cfg.trainer.progress),
                                       exact_max=a.exact_neighbours_max,
                                       probes=a.neighbour_probes)
        near = duplicates.near_duplicates(pool, dist, idx, a.near_duplicate_distance,
                                          a.max_listed)
    f["duplicates"] = exact + near
    with clock("quality and outliers"):
        f["corrupt"] = quality.corrupt_items(pool, a.blank_range, a.usual_fraction)
        scores = outliers.outlier_scores(pool, dist)
        f["outliers"] = outliers.outliers(pool, scores, a.outlier_score, a.max_outliers)
        f["_most_unusual"] = outliers.outliers(pool, scores, -np.inf, a.max_shown)  # a look
    with clock("label issues"):
        probs = labels.out_of_fold_probs(pool, a.label_folds, a.label_dims, cfg.seed,
                                         a.label_l2)
        f["label_issues"] = labels.label_issues(pool, probs, a.max_listed)
    f["channel_mean"] = [round(float(m), 4) for m in pool.channel_mean]
    f["channel_std"] = [round(float(s), 4) for s in pool.channel_std]
    f["label_model"] = {"kind": "softmax regression", "folds": a.label_folds,
                        "accuracy": round(labels.accuracy(pool, probs), 4)}
    f["thresholds"] = {"near_duplicate_distance": a.near_duplicate_distance,
                       "outlier_score": a.outlier_score, "blank_range": a.blank_range}
    f["sizes"] = quality.size_summary(pool)
    return f


def publish(f: dict, pool: Pool, cfg: DictConfig, run_dir: Path, name: str | None,
            clock: Stopwatch) -> None:
    """Figures, report.json, report.md, the W&B run (job type audit) and the console summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with clock("figures"):
        figs = report.make_figures(pool, f, run_dir / "figures", cfg.audit.max_shown, cfg.seed)
    f["timings"] = clock.seconds
    f["peak_memory_mb"] = {**peak_memory_mb(), "after_stage": clock.peak_mb}
    report.write_json(f, run_dir / "report.json")
    report.write_markdown(f, figs, run_dir / "report.md", cfg.audit.max_shown)
    with open_dict(cfg):
        cfg.logger.job_type = "audit"  # the logged config says what the run was
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = start_tracking(cfg.logger, run_dir, config, name=name or f"audit-{run_dir.name}",
                             job_type="audit")
    try:
        report.log_to_tracker(tracker, f, figs)
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.finish()
    for line in report.summary_lines(f):
        log.info("%s", line)
    log.info("data config, ready to paste:\n  mean: %s\n  std: %s", f["channel_mean"],
             f["channel_std"])
    log.info("report: %s", run_dir / "report.md")


SPLIT_KEYS = ("val_fraction", "test_fraction", "split_seed")  # what draws train/val/test


def _load_trained(cfg: DictConfig) -> tuple[dict, Path, int]:
    """The checkpoint, after checking it was trained on this data, and the seed its data was
    built with. The audit then normalises as it did and splits as it did: with the audit's
    own split settings a model would get "val" accuracy partly on its training images."""
    from nnrecipe.audit.model_view import check_same_data, load_trained

    state, path = load_trained(cfg.checkpoint)
    trained = state["config"]
    trained_data = trained.get("data", {})
    check_same_data(trained_data, cfg.data)
    changed = []
    with open_dict(cfg):
        for key in ("mean", "std"):
            cfg.data[key] = trained_data.get(key) or cfg.data.get(key)
        for key in SPLIT_KEYS:
            if key in trained_data and trained_data[key] != cfg.data.get(key):
                changed.append(f"data.{key}={trained_data[key]}")
                cfg.data[key] = trained_data[key]
    seed = trained.get("seed", cfg.seed)
    if seed != cfg.seed:
        changed.append(f"seed={seed}")
    if changed:
        log.info("audit: splits as the checkpoint's run drew them (%s), not this audit's",
                 ", ".join(changed))
    return state, path, seed


def peak_memory_mb() -> dict:
    """Peak resident memory of this process and of the largest decoding process, in MB."""
    import resource

    kb = {who: resource.getrusage(getattr(resource, f"RUSAGE_{who.upper()}")).ru_maxrss
          for who in ("self", "children")}
    return {"audit": round(kb["self"] / 1024), "largest_worker": round(kb["children"] / 1024)}


class Stopwatch:
    """Seconds spent in each stage: `with clock("stage"): ...` (the report's timings)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, int] = {}  # this process's peak resident memory after each

    @contextmanager
    def __call__(self, stage: str):
        log.info("audit: %s", stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 3)
            self.peak_mb[stage] = peak_memory_mb()["audit"]
            log.debug("audit: %s took %.1f s", stage, self.seconds[stage])


def split_findings(pool: Pool) -> dict:
    """Sizes and class counts per split, the train imbalance ratio, classes missing anywhere."""
    splits, missing = {}, {}
    for name in ("train", "val", "test"):
        members = pool.in_split(name)
        counts = np.bincount(pool.labels[members], minlength=len(pool.class_names))
        splits[name] = {"size": int(len(members)),
                        "class_counts": dict(zip(pool.class_names, counts.tolist(), strict=True))}
        absent = [c for c, n in zip(pool.class_names, counts, strict=True) if n == 0]
        if absent:
            missing[name] = absent
    train = [n for n in splits["train"]["class_counts"].values() if n > 0]
    ratio = max(train) / min(train) if train else 0.0
    return {"splits": splits, "imbalance_ratio": round(ratio, 4), "missing_classes": missing}


__all__ = ["run_audit"]
