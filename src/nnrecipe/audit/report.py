"""The audit's outputs: figures, report.md (summary on top), report.json, and the W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nnrecipe import plots
from nnrecipe.audit.pool import Pool
from nnrecipe.tracking import Tracker

JSON_KEYS = ("splits", "imbalance_ratio", "duplicates", "corrupt", "outliers", "label_issues",
             "channel_mean", "channel_std")


# ---- figures -----------------------------------------------------------------------------------

def make_figures(pool: Pool, f: dict, folder: Path, shown: int, seed: int) -> dict[str, Path]:
    """Every figure of the report, by name; a figure with nothing to show is not made."""
    figs = {"class_counts": plots.grouped_bar_chart(
        {s: v["class_counts"] for s, v in f["splits"].items()}, folder / "class_counts.png",
        title="class counts per split")}
    figs["samples"] = _samples_per_class(pool, folder / "samples.png", seed)
    exact = [g for g in f["duplicates"] if g["kind"] == "exact"]
    near = [g for g in f["duplicates"] if g["kind"] == "near"]
    for name, groups in (("exact_duplicates", exact), ("near_duplicates", near)):
        pairs = [i for g in groups[: shown // 2] for i in g["pool"][:2]]
        if pairs:
            figs[name] = _grid(pool, pairs, folder / f"{name}.png",
                               f"{name.replace('_', ' ')}: side by side pairs")
    shown_corrupt = [c["pool"] for c in f["corrupt"] if "pool" in c][:shown]
    if shown_corrupt:
        figs["corrupt"] = _grid(pool, shown_corrupt, folder / "corrupt.png",
                                "blank, non-finite or unusual images")
    unusual = f["_most_unusual"][:shown]  # shown even when none crosses the outlier threshold
    if unusual:
        figs["outliers"] = _grid(pool, [o["pool"] for o in unusual], folder / "outliers.png",
                                 "the most unusual images (robust z-score)",
                                 [f"{_where(pool, o['pool'])}\nz={o['score']:.1f}"
                                  for o in unusual])
    if f["label_issues"]:
        issues = f["label_issues"][:shown]
        figs["label_issues"] = _grid(pool, [i["pool"] for i in issues],
                                     folder / "label_issues.png", "likely label errors",
                                     [f"{_where(pool, i['pool'], False)}\n{i['given_label']}"
                                      f"\u2192{i['suggested_label']}" for i in issues])
    if "model" in f:
        figs.update(_model_figures(pool, f["model"], folder, shown))
    return figs


def _model_figures(pool: Pool, view: dict, folder: Path, shown: int) -> dict[str, Path]:
    split = "val" if "val" in view["confusion_matrix"] else next(iter(view["confusion_matrix"]))
    figs = {
        "confusion_matrix": plots.confusion_matrix(
            view["confusion_matrix"][split], pool.class_names, folder / "confusion_matrix.png",
            title=f"{split}: true vs predicted"),
        "per_class_accuracy": plots.grouped_bar_chart(
            view["per_class_accuracy"], folder / "per_class_accuracy.png",
            title="per-class accuracy", ylabel="accuracy"),
    }
    for name, items in view["highest_loss"].items():
        if name in ("train", "val") and items:
            items = items[:shown]
            figs[f"highest_loss_{name}"] = _grid(
                pool, [i["pool"] for i in items], folder / f"highest_loss_{name}.png",
                f"{name}: highest loss (given \u2192 predicted)",
                [f"{i['given_label']}\u2192{i['predicted_label']}\n{i['loss']:.2f}"
                 for i in items])
    return figs


def _samples_per_class(pool: Pool, path: Path, seed: int, per_class: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    train = pool.in_split("train")
    classes = range(len(pool.class_names))
    if len(pool.class_names) > 16:
        per_class = 1  # many classes: one row of one image per class
    picks = []
    for c in list(classes)[:64]:
        members = train[pool.labels[train] == c]
        picks += rng.choice(members, min(per_class, len(members)), replace=False).tolist()
    return _grid(pool, picks, path, "random train samples per class",
                 [pool.class_names[pool.labels[i]] for i in picks], ncols=per_class)


def _grid(pool: Pool, positions: list[int], path: Path, title: str,
          titles: list[str] | None = None, ncols: int = 8) -> Path:
    images = pool.images(positions).nan_to_num(0.0, 0.0, 0.0) if positions else torch.zeros(0)
    titles = titles or [_where(pool, i) for i in positions]
    return plots.image_grid(images, path, captions=titles, title=title, ncols=ncols)


def _where(pool: Pool, i: int, label: bool = True) -> str:
    """A short caption: the file's name, or split#index for in-memory data."""
    path = pool.paths[i]
    text = Path(path).name[-18:] if path else f"{pool.split[i]}#{pool.index[i]}"
    return f"{text}\n{pool.class_names[pool.labels[i]]}" if label else text


# ---- report.json and report.md -----------------------------------------------------------------

def write_json(f: dict, path: Path) -> Path:
    """report.json: the issue's schema first, then the audit's extras (thresholds, model...)."""
    ordered = {k: f[k] for k in JSON_KEYS} | {k: v for k, v in f.items() if k not in JSON_KEYS}
    path.write_text(json.dumps(_public(ordered), indent=1) + "\n")
    return path


def _public(f: dict) -> dict:
    """Drop what is internal: keys starting with an underscore (figure helpers) and each
    finding's pool position (it indexes this process's pool, nothing on disk). Only findings
    are touched: class names, which key class_counts, may be any string."""
    out = {k: v for k, v in f.items() if not k.startswith("_")}
    for key in ("duplicates", "corrupt", "outliers", "label_issues"):
        out[key] = [_without_pool(x) for x in f[key]]
    if "model" in f:
        out["model"] = {**f["model"], "highest_loss": {
            s: [_without_pool(x) for x in items] for s, items in
            f["model"]["highest_loss"].items()}}
    return out


def _without_pool(finding: dict) -> dict:
    return {k: v for k, v in finding.items() if k != "pool"}


def summary_lines(f: dict) -> list[str]:
    """What was found, how bad, what to do: one line per finding."""
    sizes = " · ".join(f"{s} {v['size']:,}" for s, v in f["splits"].items())
    total = sum(v["size"] for v in f["splits"].values())
    exact = [g for g in f["duplicates"] if g["kind"] == "exact"]
    near = [g for g in f["duplicates"] if g["kind"] == "near"]
    leaks = sum(g["leak"] for g in exact)
    conflicts = sum(g["labels_disagree"] for g in exact + near)
    kinds = {}
    for c in f["corrupt"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    lines = [f"**{total:,} images** ({sizes}), {len(f['splits']['train']['class_counts'])} "
             f"classes; imbalance ratio **{f['imbalance_ratio']:.2f}** (largest / smallest train "
             f"class)" + (" \u2014 consider class weights or resampling"
                          if f["imbalance_ratio"] >= 3 else "")]
    for split, missing in f["missing_classes"].items():
        lines.append(f"\u26a0\ufe0f classes missing from {split}: {', '.join(missing)} \u2014 "
                     f"its metrics cannot see them")
    lines.append(_count_line(len(exact), "exact duplicate group", f"{leaks} leak across splits "
                 f"(remove the copies from val/test: they inflate the scores)", leaks))
    near_leaks = sum(g["leak"] for g in near)
    lines.append(_count_line(len(near), "near-duplicate pair",
                             (f"{near_leaks} across splits; " if near_leaks else "") +
                             "look at them: the same picture slightly changed counts as a "
                             "duplicate (and as a leak across splits)", near_leaks))
    if conflicts:
        lines.append(f"\u26a0\ufe0f {conflicts} duplicate groups/pairs with **disagreeing labels**"
                     " \u2014 at least one label in each is wrong")
    if f["corrupt"]:
        detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
        lines.append(f"\u26a0\ufe0f **{len(f['corrupt'])} corrupt or unusual images** ({detail})"
                     " \u2014 training skips unreadable files; delete or re-export them")
    else:
        lines.append("\u2705 no corrupt, blank or unusual images")
    lines.append(_count_line(len(f["outliers"]), "outlier", "look at them: broken data, or a "
                             "rare case the model must learn?", len(f["outliers"])))
    lines.append(_count_line(len(f["label_issues"]), "likely label error",
                             f"quick model's out-of-fold accuracy "
                             f"{f['label_model']['accuracy']:.1%}; check them by eye, relabel or "
                             "drop", len(f["label_issues"])))
    if "model" in f:
        acc = ", ".join(f"{s} {a:.1%}" for s, a in f["model"]["accuracy"].items())
        lines.append(f"model view of `{f['model']['checkpoint']}`: accuracy {acc}")
    return lines


def _count_line(n: int, what: str, detail: str, bad: int) -> str:
    if n == 0:
        return f"\u2705 no {what}s"
    mark = "\u26a0\ufe0f" if bad else "\u2139\ufe0f"
    return f"{mark} **{n} {what}{'s' if n != 1 else ''}** \u2014 {detail}"


def write_markdown(f: dict, figs: dict[str, Path], path: Path, shown: int) -> Path:
    out = ["# Data audit", "", *[f"- {line}" for line in summary_lines(f)], ""]
    out += ["## Splits and classes", "", _fig(figs, "class_counts", path),
            _fig(figs, "samples", path), "", "| split | size |", "|---|---|",
            *[f"| {s} | {v['size']:,} |" for s, v in f["splits"].items()], ""]
    out += ["## Normalisation (train split), ready for a data config", "", "```yaml",
            f"mean: {[round(m, 4) for m in f['channel_mean']]}",
            f"std: {[round(s, 4) for s in f['channel_std']]}", "```", ""]
    t = f["thresholds"]
    out += ["## Duplicates", "", "Exact: identical decoded pixels. Near: cosine distance of the "
            f"16x16 embedding \u2264 {t['near_duplicate_distance']}.", "",
            _fig(figs, "exact_duplicates", path), _fig(figs, "near_duplicates", path), "",
            _table(["kind", "leak", "labels disagree", "items"],
                   [[g["kind"], g["leak"], g["labels_disagree"],
                     "; ".join(_name(i) for i in g["items"][:6])] for g in f["duplicates"]],
                   shown), ""]
    out += ["## Corrupt, blank and unusual images", "", _fig(figs, "corrupt", path), "",
            _table(["item", "reason"], [[_name(c), c["reason"]] for c in f["corrupt"]], shown),
            ""]
    out += ["## Outliers", "", f"Robust z-score \u2265 {t['outlier_score']} over pixel "
            "statistics and the distance to the nearest neighbours.", "",
            _fig(figs, "outliers", path), "",
            _table(["item", "score"], [[_name(o), o["score"]] for o in f["outliers"]], shown), ""]
    out += ["## Likely label errors", "", f"Confident learning on out-of-fold probabilities of "
            f"a {f['label_model']['folds']}-fold softmax regression (accuracy "
            f"{f['label_model']['accuracy']:.1%}).", "", _fig(figs, "label_issues", path), "",
            _table(["item", "given", "suggested", "score"],
                   [[_name(i), i["given_label"], i["suggested_label"], i["score"]]
                    for i in f["label_issues"]], shown), ""]
    if "model" in f:
        view = f["model"]
        per_class = view["per_class_accuracy"]
        worst = sorted(per_class["val"], key=per_class["val"].get)
        out += ["## The model's view", "", f"Checkpoint: `{view['checkpoint']}`; accuracy "
                + ", ".join(f"{s} {a:.1%}" for s, a in view["accuracy"].items()) + ".", "",
                "Does the model fail where you would, on images that are hard or mislabelled? "
                "Or on clear ones (a bug, or a class it never learned)?", "",
                *[_fig(figs, k, path) for k in ("confusion_matrix", "per_class_accuracy",
                                                 "highest_loss_train", "highest_loss_val")], "",
                _table(["class (worst val first)", *per_class],
                       [[c, *(f"{per_class[s][c]:.1%}" for s in per_class)] for c in worst],
                       shown), ""]
    path.write_text("\n".join(line for line in out if line is not None) + "\n")
    return path


def _fig(figs: dict[str, Path], name: str, md: Path) -> str | None:
    if name not in figs:
        return None
    return f"![{name.replace('_', ' ')}]({figs[name].relative_to(md.parent).as_posix()})"


def _name(item: dict) -> str:
    where = item["path"] or f"{item['split']}#{item['index']}"
    return f"{where} ({item['label']})"


def _table(columns: list[str], rows: list[list], limit: int) -> str:
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in
              rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n{len(rows) - limit} more in report.json")
    return "\n".join(lines)


# ---- W&B -------------------------------------------------------------------------------------

def log_to_tracker(tracker: Tracker, f: dict, figs: dict[str, Path]) -> None:
    """The report's figures as images, its findings as tables, its counts in the summary
    (distinct keys: a summary value would replace the last table or image of the same key)."""
    for name, path in figs.items():
        tracker.image(f"audit/figure/{name}", path)
    tracker.table("audit/table/duplicates", ["kind", "leak", "labels_disagree", "items"],
                  [[g["kind"], g["leak"], g["labels_disagree"],
                    "; ".join(_name(i) for i in g["items"])] for g in f["duplicates"]])
    tracker.table("audit/table/corrupt", ["split", "index", "path", "label", "reason"],
                  [[c["split"], c["index"], c["path"], c["label"], c["reason"]]
                   for c in f["corrupt"]])
    tracker.table("audit/table/outliers", ["split", "index", "path", "label", "score"],
                  [[o["split"], o["index"], o["path"], o["label"], o["score"]]
                   for o in f["outliers"]])
    tracker.table("audit/table/label_issues",
                  ["split", "index", "path", "given_label", "suggested_label", "score"],
                  [[i["split"], i["index"], i["path"], i["given_label"], i["suggested_label"],
                    i["score"]] for i in f["label_issues"]])
    tracker.summary(counts(f))


def counts(f: dict) -> dict:
    exact = [g for g in f["duplicates"] if g["kind"] == "exact"]
    return {
        "audit/images": sum(v["size"] for v in f["splits"].values()),
        "audit/imbalance_ratio": f["imbalance_ratio"],
        "audit/exact_duplicate_groups": len(exact),
        "audit/leaks": sum(g["leak"] for g in exact),
        "audit/near_duplicate_pairs": len(f["duplicates"]) - len(exact),
        "audit/corrupt": len(f["corrupt"]),
        "audit/outliers": len(f["outliers"]),
        "audit/label_issues": len(f["label_issues"]),
        "audit/label_model_accuracy": f["label_model"]["accuracy"],
    }
