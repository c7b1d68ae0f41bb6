"""CheckResult, the console table, checks.json and the W&B summary + table."""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from nnrecipe import runtime
from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
_SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}
COLUMNS = ["name", "status", "measured", "expected", "message", "seconds"]


class PreflightFailed(UserError):
    """A preflight check failed with checks.strict=true: the run stops before training."""


@dataclass
class CheckResult:
    name: str
    status: str          # PASS | WARN | FAIL | SKIP
    measured: str        # what the check saw, with numbers
    expected: str        # what a healthy setup gives
    message: str         # what it means and what to try
    seconds: float = 0.0
    # Not written to checks.json: pictures saved and objects a later check may reuse.
    pictures: list[Path] = field(default_factory=list, repr=False)
    extras: dict = field(default_factory=dict, repr=False)
    shortened: bool = field(default=False, repr=False)  # cut to fit checks.budget_s

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def row(self) -> list:
        return [self.name, self.status, self.measured, self.expected, self.message,
                round(self.seconds, 3)]


def worst(*statuses: str) -> str:
    return max(statuses, key=_SEVERITY.__getitem__, default=PASS)


class preserved_rng:
    """Run a block on a private RNG stream (seeded), then put the global RNG state back.

    The checks draw random numbers (dropout, init of probe vectors); the real training must
    see exactly the stream it would have seen without them.
    """

    def __init__(self, seed: int | None = 0):
        self.seed = seed

    def __enter__(self):
        self.state = runtime.rng_state()
        if self.seed is not None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        runtime.set_rng_state(self.state)
        return False


def timed_check(name: str):
    """Decorator: time the check, run it on a private RNG stream, turn a crash into a FAIL."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, seed: int = 0, **kwargs) -> CheckResult:
            start = time.perf_counter()
            oom = False
            with preserved_rng(seed):
                try:
                    result = fn(*args, **kwargs)
                except Exception as e:  # a check that crashes is itself a finding
                    oom = is_out_of_memory(e)
                    result = (out_of_memory(name, e) if oom else
                              CheckResult(name, FAIL, f"raised {type(e).__name__}",
                                          "runs without error", f"{type(e).__name__}: {e}"))
            if oom:  # here the traceback (and the copy its frames hold) is gone: free it
                _free_memory()
            result.seconds = time.perf_counter() - start
            return result

        return wrapper

    return decorate


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's (and MPS's) torch.OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def out_of_memory(name: str, e: BaseException) -> CheckResult:
    """A WARN, never a FAIL: the check's copy (and its optimizer state) did not fit next to the
    user's model; training itself holds one model, and may fit."""
    needed = _memory_needed(str(e))
    peak = ""
    if torch.cuda.is_available():
        peak = f", peak {_bytes(torch.cuda.max_memory_allocated())} allocated on the GPU"
    return CheckResult(
        name, WARN, f"out of memory: needed {needed}{peak}", "fits in memory",
        f"{name} ran out of memory (it needed {needed} more; it trains a copy of the model "
        f"with its own optimizer state beside yours): not checked. Training holds no such "
        f"copy, but if it runs out too, lower data.batch_size or use a smaller model")


def _free_memory() -> None:
    """The failed check's tensors, freed before the next check runs."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _memory_needed(message: str) -> str:
    """'2.00 GiB' from CUDA's 'Tried to allocate 2.00 GiB', bytes from the CPU allocator's."""
    import re

    found = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B)", message)
    if found:
        return found.group(1)
    found = re.search(r"allocate (\d+) bytes", message)
    return _bytes(int(found.group(1))) if found else "an unknown amount"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.2f} {unit}"


@dataclass
class Report:
    results: list[CheckResult]
    budget_s: float | None = None
    wall_s: float | None = None  # the whole preflight: checks, batches read, the timed step

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)

    def table(self) -> str:
        """The console table: check, status, seconds, measured; then expected and the message."""
        head = f"{'check':<26} {'status':<6} {'s':>5}  measured / expected / what to do"
        lines = ["preflight checks", head, "-" * 100]
        for r in self.results:
            lines.append(f"{r.name:<26} {r.status:<6} {r.seconds:5.2f}  {r.measured}")
            if r.expected:
                lines.append(f"{'':<41}expected: {r.expected}")
            if r.message:
                lines.append(f"{'':<41}-> {r.message}")
        lines.append(f"{len(self.results)} checks in {self.seconds:.2f} s: "
                     + ", ".join(f"{sum(r.status == s for r in self.results)} {s}"
                                 for s in (PASS, WARN, FAIL, SKIP)) + self._budget_note())
        return "\n".join(lines)

    def _budget_note(self) -> str:
        cut = [r.name for r in self.results if r.shortened]
        parts = [f"{self.wall_s:.1f} s in all" if self.wall_s is not None else "",
                 f"budget {self.budget_s:g} s" if self.budget_s is not None else "",
                 f"shortened to fit: {', '.join(cut)}" if cut else ""]
        parts = [p for p in parts if p]
        return f" ({'; '.join(parts)})" if parts else ""

    def write_json(self, path: Path) -> Path:
        rows = [{k: v for k, v in asdict(r).items() if k in COLUMNS} for r in self.results]
        for row in rows:
            row["seconds"] = round(row["seconds"], 4)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2))
        return path

    def log_to(self, tracker, step: int = 0) -> None:
        """W&B: summary checks/<name> = status, a checks/table table, the pictures."""
        summary = {f"checks/{r.name}": r.status for r in self.results}
        summary["checks/failed"] = len(self.failures)
        summary["checks/seconds"] = round(self.seconds, 3)
        summary["checks/shortened"] = ", ".join(r.name for r in self.results if r.shortened)
        tracker.summary(summary)
        tracker.table("checks/table", COLUMNS, [r.row() for r in self.results], step=step)
        for r in self.results:
            for picture in r.pictures:
                tracker.image(f"checks/{Path(picture).stem}", picture, caption=r.name, step=step)

    def raise_if_failed(self, strict: bool) -> None:
        if not self.failures:
            return
        names = "; ".join(f"{r.name}: {r.message}" for r in self.failures)
        if strict:
            raise PreflightFailed(
                f"{len(self.failures)} preflight check(s) failed before training. {names} "
                f"(table above, checks.json in the run folder). Fix the cause, or train anyway "
                f"with checks.strict=false (checks=off skips the checks)."
            )
        log.warning("checks.strict=false: training despite %d failed check(s): %s",
                    len(self.failures), names)
