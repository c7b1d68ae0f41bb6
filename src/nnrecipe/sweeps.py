"""Recipe step 5, tune: what a sweep's trials were, how they did, and how they compare.

A sweep folder (Hydra's `hydra.sweep.dir`) holds one folder per trial: `.hydra/overrides.yaml`
(what the sweeper chose), `.hydra/config.yaml` (the composed config) and `metrics.json` (written
by src/train.py: status, history and summary). Everything here reads only those files, so a sweep
can be compared offline, with or without W&B.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nnrecipe.errors import UserError


def objective_direction(objective: str, task=None) -> str:
    """'val/<metric>' -> minimize | maximize, from the task (an instance, a class, its
    `_target_`, or None: classification). Also the `objective_direction` resolver of
    conf/hparams_search: `${objective_direction:${objective},${task._target_}}`."""
    from nnrecipe.tasks import task_class

    return task_class(task).objective_direction(objective)


def objective_value(objective: str, best_val: dict[str, float], task=None) -> float:
    """What train() returns to a sweeper: the objective's metric at the best (lowest val/loss)
    epoch; `best_val` holds that epoch's val metrics (FitState.best_val)."""
    objective_direction(objective, task)
    return best_val[objective.partition("/")[2]]


def summary_metrics(task=None) -> dict[str, str]:
    """What a trial is compared on -> its key in the W&B summary / metrics.json: every val
    metric of the best epoch, and the test value of the task's primary metric (acc, mae, map)."""
    from nnrecipe.tasks import task_class

    cls = task_class(task)
    metrics = {"val/loss": "best/val_loss"}
    metrics |= {f"val/{m}": f"best/val_{m}_at_best_loss" for m in cls.directions if m != "loss"}
    primary = cls.primary_metric()
    return metrics | {f"test/{primary}": f"test/{primary}"}


def write_metrics(run_dir: Path, status: str, **fields) -> Path:
    """metrics.json: what compare_runs reads, whether or not W&B was on. Atomic (parallel runs)."""
    path = Path(run_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"status": status, **fields}, indent=1, default=float))
    tmp.replace(path)
    return path


# --- a trial's console: one line, the rest in its train.log ----------------------------------

# A log record's one-line form for a sweep's console: log.info(..., extra={SWEEP_LINE: "..."}).
SWEEP_LINE = "sweep_line"


def compact_console() -> None:
    """Make this trial's console one line per trial: the root logger's console handlers pass
    warnings and errors, and of the other records only their one-line form (SWEEP_LINE), if
    they have one. train.log (a FileHandler) keeps everything. Hydra configures a trial's
    logging afresh, so this is called by each trial."""
    root = logging.getLogger()
    root.handlers = [_OneLinePerTrial(h) if type(h) is logging.StreamHandler else h
                     for h in root.handlers]


class _OneLinePerTrial(logging.Handler):
    def __init__(self, console: logging.Handler):
        super().__init__(console.level)
        self.console = console

    def handle(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return self.console.handle(record)
        line = getattr(record, SWEEP_LINE, None)
        if line is None:
            return False
        short = copy.copy(record)  # the file handler formats the original record
        short.msg, short.args = line, ()
        return self.console.handle(short)


# --- the trial's own identity (used while it runs) ---------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """['optimizer.lr=0.01', '+x=1', '~y'] -> {'optimizer.lr': '0.01', 'x': '1'}."""
    parsed = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep:
            parsed[key.lstrip("+~")] = value
    return parsed


def swept_keys(sweep_dir: Path) -> list[str]:
    """Keys the sweep varies: sweeper params plus sweeps on the command line (`seed=0,1,2`).

    Read from the sweep's multirun.yaml, which Hydra's grid sweeper and nnrecipe's Optuna
    sweeper write before the first trial starts.
    """
    return [key for key, override in _sweep_overrides(sweep_dir).items()
            if override.is_sweep_override()]


def log_scaled_keys(sweep_dir: Path) -> set[str]:
    """Keys the sweep samples on a log scale (`tag(log, interval(a, b))`): plotted on a log axis
    whatever range the trials happened to draw."""
    return {key for key, override in _sweep_overrides(sweep_dir).items()
            if override.is_sweep_override() and "log" in getattr(override.value(), "tags", ())}


def _sweep_overrides(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = yaml.safe_load(path.read_text())["hydra"]
    params = (cfg.get("sweeper") or {}).get("params") or {}
    candidates = [f"{k}={v}" for k, v in params.items()] + list(cfg["overrides"]["task"])
    parsed = {}  # the command line comes last and wins: `model=mlp` takes model out of the search
    for override in OverridesParser.create().parse_overrides(candidates):
        parsed[override.get_key_element().lstrip("+~")] = override
    return parsed


def trial_name(num: int, values: dict[str, str]) -> str:
    """trial3-mlp-lr=0.0021-batch_size=64: the trial number and its swept values, short."""
    parts = [f"trial{num}"]
    for key, value in values.items():
        short = _short_value(value)
        parts.append(short if "." not in key and key != "seed" else f"{key.split('.')[-1]}={short}")
    return "-".join(parts)


def _short_value(value: str) -> str:
    try:
        return str(int(value))
    except ValueError:
        pass
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


# --- reading a finished sweep ------------------------------------------------------------------


@dataclass
class Trial:
    num: int
    folder: Path
    overrides: dict[str, str]
    config: dict
    status: str                       # finished | failed | missing (no metrics.json)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    objective: float | None = None    # None unless the trial finished
    split_hash: str | None = None     # the data split it was scored on (None: not recorded)


def load_sweep(sweep_dir: Path) -> list[Trial]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder: pass a sweep folder (hydra.sweep.dir)")
    folders = sorted((p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")),
                     key=lambda p: (int(p.name) if p.name.isdigit() else math.inf, str(p)))
    if not folders:
        raise UserError(
            f"{sweep_dir} holds no trial folders (<trial>/.hydra/overrides.yaml): pass the "
            f"folder of a multirun, e.g. outputs/multirun/<date>_<time>"
        )
    return [_load_trial(folder, i) for i, folder in enumerate(folders)]


def _load_trial(folder: Path, index: int) -> Trial:
    overrides = parse_overrides(yaml.safe_load((folder / ".hydra/overrides.yaml").read_text()))
    config = yaml.safe_load((folder / ".hydra/config.yaml").read_text()) or {}
    num = int(folder.name) if folder.name.isdigit() else index
    metrics_path = folder / "metrics.json"
    if not metrics_path.exists():
        return Trial(num, folder, overrides, config, "missing",
                     error="no metrics.json: still running, killed, or stopped before it started "
                           "(an invalid config: the sweep's log names the key)")
    metrics = json.loads(metrics_path.read_text())
    trial = Trial(num, folder, overrides, config, metrics["status"],
                  summary=metrics.get("summary", {}), history=metrics.get("history", []),
                  error=metrics.get("error"), split_hash=metrics.get("split_hash"))
    if trial.status == "finished":
        trial.objective = metrics.get("objective")
    return trial


def task_of(trials: list[Trial]) -> str | None:
    """The `_target_` of the trials' task (None: classification, also for sweeps run before
    the task group existed)."""
    targets = {(t.config.get("task") or {}).get("_target_") for t in trials}
    if len(targets) > 1:
        raise UserError(f"the trials learn different tasks ({sorted(map(str, targets))})")
    return targets.pop()


def objective_of(trials: list[Trial]) -> str:
    objectives = {t.config.get("objective", "val/loss") for t in trials}
    if len(objectives) > 1:
        raise UserError(f"the trials optimise different objectives ({sorted(objectives)})")
    return objectives.pop()


def varying_keys(trials: list[Trial]) -> list[str]:
    """Override keys whose value differs between trials (or all of them, for a single trial)."""
    keys = []
    for t in trials:
        keys += [k for k in t.overrides if k not in keys]
    if len(trials) < 2:
        return keys
    return [k for k in keys if len({t.overrides.get(k) for t in trials}) > 1]


def rank(trials: list[Trial], direction: str) -> list[Trial]:
    """Finished trials best first, then the others in trial order."""
    done = [t for t in trials if t.objective is not None and math.isfinite(t.objective)]
    done.sort(key=lambda t: t.objective, reverse=direction == "maximize")
    return done + [t for t in trials if t not in done]


@dataclass
class SeedGroup:
    values: dict[str, str]          # the swept values shared by the group, seed left out
    trials: list[Trial]
    stats: dict[str, tuple[float, float]]  # metric (val/loss, val/acc, test/acc) -> mean, std


def aggregate_seeds(trials: list[Trial], keys: list[str], direction: str,
                    objective: str = "val/loss", task=None) -> list[SeedGroup]:
    """Finished trials that differ only by seed, grouped: mean ± std of each metric. Best first.
    Trials scored on different data splits never share a group: their test sets differ."""
    groups: dict[tuple, list[Trial]] = {}
    for t in trials:
        if t.objective is not None:
            values = tuple((k, t.overrides.get(k)) for k in keys if k != "seed")
            groups.setdefault((values, t.split_hash), []).append(t)
    result, metrics = [], summary_metrics(task)
    for (values, _), members in groups.items():
        stats = {m: _mean_std([t.summary.get(key, math.nan) for t in members])
                 for m, key in metrics.items()}
        result.append(SeedGroup(dict(values), members, stats))
    result.sort(key=lambda g: g.stats[objective][0], reverse=direction == "maximize")
    return result


def splits_of(trials: list[Trial]) -> dict[str | None, list[int]]:
    """Finished trials by the data split they were scored on (metrics.json's split_hash)."""
    splits: dict[str | None, list[int]] = {}
    for t in trials:
        if t.objective is not None:
            splits.setdefault(t.split_hash, []).append(t.num)
    return splits


def split_warning(splits: dict[str | None, list[int]]) -> list[str]:
    """Lines that say when trials were scored on different splits (warned, not refused: the
    ranking by val/loss still reads, and sweeps written before splits were recorded still
    compare; the over-seeds table never mixes splits)."""
    if len(splits) < 2:
        return []
    parts = [f"{'split ' + h if h else 'split not recorded'}: trial{'s' * (len(n) > 1)} "
             f"{', '.join(map(str, n))}" for h, n in splits.items()]
    return [f"WARNING: the trials were scored on {len(splits)} different data splits "
            f"({'; '.join(parts)}). Their val/test metrics are not comparable: a difference may "
            f"be the test set, not the hyperparameters. Keep data.split_seed fixed so that "
            f"seeds vary the training only.", ""]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def as_number(value: str | None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --- the comparison (scripts/compare_runs.py) --------------------------------------------------


def compare(sweep_dir: Path, top: int = 5) -> str:
    """Rank a sweep's trials, aggregate seeds, write plots into the sweep folder; the report."""
    sweep_dir = Path(sweep_dir)
    trials = load_sweep(sweep_dir)
    objective, task = objective_of(trials), task_of(trials)
    direction = objective_direction(objective, task)
    metrics = summary_metrics(task)
    keys = varying_keys(trials)
    ranked = rank(trials, direction)
    done = [t for t in ranked if t.objective is not None]
    splits = splits_of(trials)
    split_column = ["split"] if len(splits) > 1 else []
    lines = [f"{sweep_dir}: {len(trials)} trials, {len(done)} finished, "
             f"{len(trials) - len(done)} failed or unfinished",
             f"ranked by {objective} ({direction}); val metrics of the best epoch, "
             f"{list(metrics)[-1]} of its weights", "", *split_warning(splits)]
    lines += _table(
        ["rank", "trial", *metrics, *keys, *split_column],
        [[str(i + 1) if t in done else "-", str(t.num), *_metric_cells(t, metrics),
          *(_short_value(t.overrides.get(k, "")) for k in keys),
          *([t.split_hash or "?"] if split_column else [])] for i, t in enumerate(ranked)],
    )
    for t in ranked:
        if t not in done:
            lines.append(f"trial {t.num} {t.status}: {_first_words(t.error or '', t)}")

    groups = aggregate_seeds(trials, keys, direction, objective, task) if "seed" in keys else []
    if any(len(g.trials) > 1 for g in groups):
        lines += ["", f"Over seeds (mean ± std, per configuration; {_test_set_note(splits)}):"]
        config_keys = [k for k in keys if k != "seed"]
        lines += _table(
            ["n", *metrics, *config_keys, *split_column],
            [[str(len(g.trials)),
              *(f"{mean:.4f} ± {std:.4f}" for mean, std in g.stats.values()),
              *(_short_value(g.values.get(k) or "") for k in config_keys),
              *([g.trials[0].split_hash or "?"] if split_column else [])] for g in groups],
        )

    lines += ["", *(f"wrote {p}" for p in _plots(sweep_dir, ranked, keys, objective, top))]
    return "\n".join(lines)


def _first_words(error: str, t: Trial, limit: int = 140) -> str:
    """A failed trial's error on one line: its start, and where the rest is."""
    if len(error) <= limit:
        return error
    return f"{error[:limit].rsplit(' ', 1)[0]} ... ({t.folder.name}/metrics.json)"


def _test_set_note(splits: dict[str | None, list[int]]) -> str:
    if len(splits) > 1:
        return "each row's trials share one test set, rows on different splits are apart"
    (split,) = splits
    if split is None:
        return "split not recorded: seeds may have drawn different test sets"
    return f"every trial scored on the same test set, split {split}"


def _metric_cells(t: Trial, metrics: dict[str, str]) -> list[str]:
    if t.objective is None:
        return [t.status] + [""] * (len(metrics) - 1)
    return [f"{t.summary.get(key, math.nan):.4f}" for key in metrics.values()]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True))
            for row in [header, *rows]]


def _plots(sweep_dir: Path, trials: list[Trial], keys: list[str], objective: str,
           top: int) -> list[Path]:
    from nnrecipe import plots  # matplotlib: only when plotting

    written = []
    done = [t for t in trials if t.objective is not None]
    failed = [t for t in trials if t.status == "failed"]
    panels, crosses = {}, {}
    for key in (k for k in keys if k != "seed"):
        values = {t.num: t.overrides[key] for t in done + failed if key in t.overrides}
        numeric = all(as_number(v) is not None for v in values.values())
        x = {n: as_number(v) if numeric else v for n, v in values.items()}
        panels[key] = ([x[t.num] for t in done if t.num in x],
                       [t.objective for t in done if t.num in x])
        crosses[key] = [x[t.num] for t in failed if t.num in x]
    if panels and (done or failed):
        written.append(plots.scatter_panels(panels, sweep_dir / "objective_vs_hparams.png",
                                            objective, f"{objective} per trial",
                                            log_x=log_scaled_keys(sweep_dir), failed=crosses))
    best = {f"#{i + 1} trial {t.num}": t.history for i, t in enumerate(done[:top]) if t.history}
    if best:
        written.append(plots.learning_curves(best, sweep_dir / "learning_curves.png"))
    return written
