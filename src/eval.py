"""Score a finished run again, with error bars (recipe step 6):

    python src/eval.py checkpoint=outputs/2026-12-02/10-00-00          # a run folder (best.pt)
    python src/eval.py checkpoint=path/to/last.pt logger=none

The model and data are rebuilt from the checkpoint's own config, so the test accuracy is the
training run's test/acc exactly. Prints loss and accuracy with 95% intervals (Wilson for the
accuracy), per-class accuracy; saves confusion.png (test; confusion_val.png for val) and
eval.json in the eval folder (outputs/eval/...); logs a W&B run of job type `eval`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nnrecipe import runtime
from nnrecipe.config import validate
from nnrecipe.errors import UserError, report_error
from nnrecipe.squeeze import runs, scoring
from nnrecipe.squeeze.stats import format_interval
from nnrecipe.tracking import start_tracking

log = logging.getLogger("nnrecipe")


def evaluate_run(cfg: DictConfig, out_dir: Path) -> dict:
    """Score the run `cfg.checkpoint` on cfg.splits; return {split: score}."""
    validate(cfg, "eval")
    run = runs.load_run(cfg.checkpoint)
    device = runtime.pick_device(cfg.device)
    trainer = run.config.get("trainer", {})
    batch_size = cfg.eval_batch_size or trainer.get("eval_batch_size", 512)
    unknown = [s for s in cfg.splits if s not in ("train", "val", "test")]
    if unknown:
        raise UserError(f"splits={list(cfg.splits)}: {unknown[0]} is not a split: "
                        f"use train, val, test")
    tracker = start_tracking(cfg.logger, out_dir, {"eval": OmegaConf.to_container(cfg),
                                                   **run.config},
                             name=f"eval-{run.name}", job_type="eval")
    try:
        data = runs.build_data_of(run.config, device)
        task = runs.task_of(run.config, data)
        model = runs.build_model_of(run, data, device, task)
        log.info("evaluating %s (%s)", run.file, run.config["model"].get("_target_"))
        scores = {}
        for split in cfg.splits:
            outputs, targets = runs.predict(model, data.splits[split], batch_size,
                                            trainer.get("precision", "fp32"), data.num_workers)
            scores[split] = s = scoring.score(task, outputs, targets)
            _report(split, s, data.class_names, out_dir, tracker)
        (out_dir / "eval.json").write_text(json.dumps(
            {"checkpoint": str(run.file), **{k: _jsonable(v) for k, v in scores.items()}},
            indent=1))
        tracker.summary({f"{k}/{m}": v for k, s in scores.items()
                         for m, v in scoring.plain(s).items()})
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.finish()
    log.info("eval folder: %s", out_dir)
    return scores


def _report(split: str, s: dict, class_names: list[str], out_dir: Path, tracker) -> None:
    log.info("%s", scoring.summary_line(split, s))
    if "per_class" not in s:
        return
    width = max(len(n) for n in class_names)
    lines = [f"  {class_names[k]:>{width}}  n={n:<5d} acc {format_interval(acc, ci)}"
             for k, n, acc, ci in s["per_class"]]
    log.info("%s per-class accuracy (95%% Wilson interval):\n%s", split, "\n".join(lines))
    from nnrecipe.plots import confusion_matrix

    name = "confusion.png" if split == "test" else f"confusion_{split}.png"
    picture = confusion_matrix(s["confusion"], class_names, out_dir / name,
                               title=f"{split}: acc {s['acc']:.4f} (n={s['n']})")
    tracker.image(f"{split}/confusion", picture)
    tracker.table(f"{split}/per_class", ["class", "n", "acc", "ci_low", "ci_high"],
                  [[class_names[k], n, acc, *ci] for k, n, acc, ci in s["per_class"]])


def _jsonable(s: dict) -> dict:
    return {**scoring.plain(s), **{k: s[k] for k in ("confusion", "per_class") if k in s}}


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        report_error(e, log)
        sys.exit(1)


if __name__ == "__main__":
    main()
