"""The audit for data whose targets are not classes (regression values, multi-label rows, tabular
features): what applies of the image audit, and a list of what was skipped and why.

Applies: sizes, exact duplicates inside and across splits (leaks), non-finite inputs or targets
(corrupt rows), inputs far from the training distribution (outliers), the target distribution
per split and its outliers. Skipped: near duplicates and image quality (they look at pictures),
likely label errors (a classifier's out-of-fold disagreement), the model's view (a confusion
matrix).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("nnrecipe.audit")

SKIPPED = {
    "near_duplicates": "compares image embeddings; exact duplicates are reported",
    "image_quality": "blank, unusual size or mode: properties of image files",
    "label_issues": "a classifier's out-of-fold disagreement with class labels",
    "model_view": "a confusion matrix and the highest-loss images of a classifier",
}


def audit_targets(data, outlier_score: float, max_shown: int, run_dir: Path) -> dict:
    """Findings for `data` (a DataBundle built by build_data, targets as loaded); writes
    report.json and report.md into run_dir."""
    f = {"targets": data.targets, "outputs": list(data.class_names),
         "splits": {n: {"size": len(s)} for n, s in data.splits.items()}}
    f["duplicates"] = _duplicates(data)
    f["corrupt"] = {n: _nonfinite(s) for n, s in data.splits.items()}
    f["target_distribution"] = {n: _distribution(s.y, data.targets) for n, s in data.splits.items()}
    f["target_outliers"] = [] if data.targets == "labels" else _outliers(  # 0/1: no outliers
        data, lambda s: _rows(s.y), _rows(data.train.y), outlier_score, max_shown)
    f["skipped"] = dict(SKIPPED)
    if data.image_size == 1:  # a feature per column: a robust z-score per feature means something
        f["input_outliers"] = _outliers(data, lambda s: s.x.flatten(1).double(),
                                        data.train.x.flatten(1).double(), outlier_score, max_shown)
    else:
        f["input_outliers"] = []
        f["skipped"]["input_outliers"] = "per-pixel scores do not find unusual images"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(f, indent=1, default=float))
    (run_dir / "report.md").write_text(_markdown(f))
    for line in summary_lines(f):
        log.info("%s", line)
    log.info("report: %s", run_dir / "report.md")
    return f


def _rows(y: torch.Tensor) -> torch.Tensor:
    y = y.detach().cpu().double()
    return y.reshape(len(y), -1)


def _duplicates(data) -> dict:
    from nnrecipe.checks.data import content_hashes

    hashes = {n: content_hashes(s) for n, s in data.splits.items()}
    within = {n: len(h) - len(set(h)) for n, h in hashes.items()}
    train = set(hashes["train"])
    leaks = {f"{n}∩train": sum(h in train for h in hashes[n]) for n in ("val", "test")}
    leaks["test∩val"] = sum(h in set(hashes["val"]) for h in hashes["test"])
    return {"within_splits": within, "across_splits": leaks}


def _nonfinite(split) -> dict:
    x, y = split.x.detach().cpu(), split.y.detach().cpu()
    return {"inputs": int((~torch.isfinite(x.flatten(1).float())).any(1).sum()),
            "targets": int((~torch.isfinite(_rows(y))).any(1).sum())}


def _distribution(y: torch.Tensor, kind: str) -> dict:
    rows = _rows(y).numpy()
    if kind == "labels":  # frequency of each label, and how many labels a sample has
        return {"frequency": rows.mean(0).round(4).tolist(),
                "labels_per_sample": round(float(rows.sum(1).mean()), 4)}
    q = np.quantile(rows, [0, 0.25, 0.5, 0.75, 1], axis=0).round(4)
    return {"mean": rows.mean(0).round(4).tolist(), "std": rows.std(0).round(4).tolist(),
            "min": q[0].tolist(), "q25": q[1].tolist(), "median": q[2].tolist(),
            "q75": q[3].tolist(), "max": q[4].tolist()}


def _outliers(data, values, train: torch.Tensor, limit: float, max_shown: int) -> list[dict]:
    """Samples with a column beyond `limit` robust z-scores (MAD units of the train split)."""
    median = train.median(0).values
    mad = (train - median).abs().median(0).values * 1.4826
    scale = torch.where(mad > 0, mad, train.std(0).clamp_min(1e-12))
    found = []
    for name, split in data.splits.items():
        z = ((values(split) - median) / scale).abs().nan_to_num(0.0)
        score, column = z.max(1)
        for i in torch.nonzero(score > limit).flatten().tolist():
            found.append({"split": name, "index": i, "score": round(float(score[i]), 2),
                          "column": int(column[i])})
    return sorted(found, key=lambda o: -o["score"])[:max_shown]


def summary_lines(f: dict) -> list[str]:
    sizes = ", ".join(f"{n} {s['size']}" for n, s in f["splits"].items())
    leaks = sum(f["duplicates"]["across_splits"].values())
    corrupt = sum(v["inputs"] + v["targets"] for v in f["corrupt"].values())
    return [f"audit ({f['targets']} targets: {', '.join(f['outputs'][:8])}): {sizes}",
            f"  exact duplicates: {sum(f['duplicates']['within_splits'].values())} inside "
            f"splits, {leaks} across splits (leaks)",
            f"  rows with NaN/Inf: {corrupt}; target outliers: {len(f['target_outliers'])}; "
            f"input outliers: {len(f['input_outliers'])}",
            f"  skipped (classification/image only): {', '.join(f['skipped'])}"]


def _markdown(f: dict) -> str:
    lines = ["# Data audit", "", *summary_lines(f), "", "## Target distribution", ""]
    for name, dist in f["target_distribution"].items():
        lines.append(f"- {name}: " + "; ".join(f"{k} {v}" for k, v in dist.items()))
    lines += ["", "## Target outliers (robust z-score, train median/MAD)", ""]
    lines += [f"- {o['split']} #{o['index']}: {f['outputs'][o['column']]} z={o['score']}"
              for o in f["target_outliers"]] or ["- none"]
    lines += ["", "## Skipped", ""]
    lines += [f"- {k}: {why}" for k, why in f["skipped"].items()]
    return "\n".join(lines) + "\n"
