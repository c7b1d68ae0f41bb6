"""Recipe step 6: ensemble finished runs, and optionally average their weights (a soup).

    python scripts/ensemble.py outputs/multirun/2026-12-02_10-00-00          # a sweep's trials
    python scripts/ensemble.py run_a run_b run_c --top 3 --soup --logger none

Averages the members' predictions (task.average: the mean softmax) on val and test and prints
every member, their mean, the ensemble of all, the greedy ensemble chosen on val (Caruana; what
model soups select with) and, with --soup, the uniform and greedy weight averages. Members must
be scored on the same samples: runs with other data or splits are refused. Writes ensemble.json
(into the sweep folder's ensemble/, or --out) and logs a W&B run of job type `ensemble`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nnrecipe.errors import UserError  # noqa: E402

log = logging.getLogger("nnrecipe")
CONF = Path(__file__).resolve().parents[1] / "conf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders, sweep folders or checkpoint files")
    parser.add_argument("--top", type=int, default=None,
                        help="keep the K members with the lowest val loss")
    parser.add_argument("--soup", action="store_true",
                        help="also average the members' weights (members fine-tuned from one "
                             "model.init_from)")
    parser.add_argument("--out", type=Path, default=None, help="folder for ensemble.json")
    parser.add_argument("--logger", choices=("wandb", "none"), default="wandb")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run(args)
    except UserError as e:
        print(f"ensemble: error: {e}", file=sys.stderr)
        return 1
    print(result["table"])
    return 0


def run(args) -> dict:
    from omegaconf import OmegaConf

    from nnrecipe import runtime
    from nnrecipe.squeeze import ensemble
    from nnrecipe.tracking import start_tracking

    pool = ensemble.load_pool(args.runs, runtime.pick_device(args.device))
    out = args.out or _default_out(args.runs)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    if args.top:
        pool = ensemble.top_members(pool, args.top)
    n = len(pool.members)
    rows = {m.run.name: m.scores for m in pool.members}
    rows["mean member"] = _mean_scores(pool)
    rows[f"ensemble of all {n}"] = {s: ensemble.score_of(pool, list(range(n)), s)
                                    for s in pool.targets}
    chosen = ensemble.greedy_selection(pool)
    picked = ", ".join(pool.members[i].run.name for i in chosen)
    rows[f"greedy ensemble on val ({len(chosen)})"] = {s: ensemble.score_of(pool, chosen, s)
                                                       for s in pool.targets}
    notes = [f"greedy ensemble (chosen on val, with repeats): {picked}"]
    if args.soup:
        notes += _soups(pool, rows)
    table = _table(rows) + "\n" + "\n".join(notes)
    result = {"members": [str(m.run.file) for m in pool.members],
              "greedy": [pool.members[i].run.name for i in chosen],
              "rows": {name: {s: _plain(v) for s, v in r.items()} for name, r in rows.items()},
              "table": table}
    (out / "ensemble.json").write_text(json.dumps(result, indent=1))
    logger_cfg = OmegaConf.load(CONF / "logger" / f"{args.logger}.yaml")
    tracker = start_tracking(logger_cfg, out, {"members": result["members"], "top": args.top,
                                               "soup": args.soup},
                             name=f"ensemble-{n}", job_type="ensemble")
    columns = ["row"] + [f"{s}/{m}" for s in pool.targets for m in ("loss", "acc")]
    tracker.table("ensemble", columns,
                  [[name] + [r[s].get(m) for s in pool.targets for m in ("loss", "acc")]
                   for name, r in rows.items()])
    best = rows[f"greedy ensemble on val ({len(chosen)})"]
    tracker.summary({f"{s}/{k}": v for s in pool.targets for k, v in _plain(best[s]).items()})
    tracker.finish()
    log.info("wrote %s", out / "ensemble.json")
    return result


def _soups(pool, rows) -> list[str]:
    from nnrecipe.squeeze import ensemble, scoring

    notes = []
    if not ensemble.shared_init(pool):
        notes.append("soup: the members do not share one model.init_from; an average of "
                     "independently initialised weights is usually far worse than any member "
                     "(the greedy soup then keeps only the best member)")
    everyone = list(range(len(pool.members)))
    uniform = ensemble.soup_outputs(pool, everyone, tuple(pool.targets))
    rows[f"uniform soup ({len(everyone)})"] = {
        s: scoring.score(pool.task, o, pool.targets[s]) for s, o in uniform.items()}
    chosen, outputs = ensemble.greedy_soup(pool)
    rows[f"greedy soup ({len(chosen)})"] = {
        s: scoring.score(pool.task, o, pool.targets[s]) for s, o in outputs.items()}
    notes.append("greedy soup: " + ", ".join(pool.members[i].run.name for i in chosen))
    return notes


def _mean_scores(pool) -> dict:
    out = {}
    for s in pool.targets:
        keys = [k for k, v in pool.members[0].scores[s].items() if isinstance(v, float)]
        out[s] = {k: sum(m.scores[s][k] for m in pool.members) / len(pool.members) for k in keys}
    return out


def _plain(score: dict) -> dict:
    from nnrecipe.squeeze import scoring

    return scoring.plain(score)


def _table(rows: dict) -> str:
    from nnrecipe.squeeze.stats import format_interval

    def cell(s, metric):
        if metric not in s:
            return "-"
        ci = s.get(f"{metric}_ci")
        return format_interval(s[metric], ci) if ci else f"{s[metric]:.4f}"

    splits = list(next(iter(rows.values())))
    header = ["", *[f"{s} {m}" for s in splits for m in ("loss", "acc")]]
    body = [[name, *[cell(r[s], m) for s in splits for m in ("loss", "acc")]]
            for name, r in rows.items()]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths))
                     for row in [header, *body])


def _default_out(paths: list[Path]) -> Path:
    """A single sweep folder: its ensemble/; otherwise outputs/ensemble/<time>."""
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "checkpoints").is_dir():
        return paths[0] / "ensemble"
    return Path("outputs") / "ensemble" / time.strftime("%Y-%m-%d_%H-%M-%S")


if __name__ == "__main__":
    sys.exit(main())
