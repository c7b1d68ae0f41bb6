"""Regenerate every picture and number the README shows, by running the commands it documents.

    python scripts/make_figures.py                 # all steps (~5 min on 2 CPU cores)
    python scripts/make_figures.py default_job audit   # some steps
    python scripts/make_figures.py --list

Each step runs the README's own command as a newcomer would (a fresh process, W&B offline, the
default output folders), copies its pictures into docs/img/ and writes what it measured into
docs/numbers.md, which the README's figures come from. Wall times depend on the machine and its
load: the file says which machine and when; on a shared machine rerun and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
NUMBERS = ROOT / "docs" / "numbers.md"
PY = sys.executable
STEPS = {}


def step(fn):
    STEPS[fn.__name__] = fn
    return fn


def run(*args: str, check: bool = True) -> tuple[str, float]:
    """Run a command from the repository root; (its console output, wall seconds). The CPU
    seconds it used (its processes, all cores) are left in run.cpu_s: on a loaded machine they
    say more about the work than the wall time does."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([PY, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = done.stdout + done.stderr
    if check and done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{out[-3000:]}")
    return out, seconds


def folder_in(output: str, pattern: str) -> Path:
    """The run or sweep folder a command printed (its log line names it)."""
    match = re.search(pattern, output)
    if not match:
        sys.exit(f"no folder matching {pattern!r} in the output:\n{output[-2000:]}")
    return ROOT / match.group(1) if not Path(match.group(1)).is_absolute() else Path(match.group(1))


def latest_sweep() -> Path:
    """The sweep folder just written: outputs/multirun/<date>_<time> (the README says so)."""
    folder = max((ROOT / "outputs" / "multirun").iterdir(), key=lambda p: p.stat().st_mtime)
    if not re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(-\w+)?", folder.name):
        sys.exit(f"sweep folder {folder}: not outputs/multirun/<date>_<time> as the README says")
    return folder


def copy(source: Path, name: str) -> str:
    IMG.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, IMG / name)
    return f"docs/img/{name}"


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# --- the steps: each returns (title, markdown lines) --------------------------------------------


@step
def default_job():
    """`make train`: wall time, test accuracy, the preflight's pictures; and without W&B/checks."""
    out, seconds = run("src/train.py")
    cpu = run.cpu_s
    run_dir = folder_in(out, r"run folder: (\S+)")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d(-\w+)?", "/".join(run_dir.parts[-2:])):
        sys.exit(f"run folder {run_dir}: not outputs/<date>/<time> as the README says")
    m = metrics(run_dir)
    checks = json.loads((run_dir / "checks.json").read_text())
    pictures = [copy(run_dir / "batch.png", "checks_batch_digits.png"),
                copy(run_dir / "prediction_dynamics.png", "checks_prediction_dynamics_digits.png")]
    _, bare = run("src/train.py", "logger=none", "checks=off")
    threads = re.search(r"CPU threads: (.*)", out)
    return "The default job (`make train`)", [
        f"- wall time, start-up included: {seconds:.1f} s, {cpu:.1f} s of CPU "
        f"(`logger=none checks=off`: {bare:.1f} s, {run.cpu_s:.1f} s of CPU)",
        f"- preflight: {len(checks)} checks in {sum(c['seconds'] for c in checks):.1f} s",
        f"- test/acc {m['summary']['test/acc']:.4f}, best epoch "
        f"{m['summary']['best/epoch']} of {len(m['history'])}",
        f"- threads: {threads.group(1) if threads else '?'}",
        f"- run folder: `{run_dir.relative_to(ROOT)}`", *(f"- picture: {p}" for p in pictures)]


@step
def seeds():
    """Test accuracy of the default job over seeds 0-3 (a grid multirun)."""
    _, seconds = run("src/train.py", "-m", "seed=0,1,2,3", "logger=none", "checks=off")
    folder = latest_sweep()
    accs = [metrics(folder / str(n))["summary"]["test/acc"] for n in range(4)]
    return "Seeds 0-3 of the default job", [
        f"- test/acc per seed: {', '.join(f'{a:.4f}' for a in accs)} "
        f"(min {min(accs):.3f}, max {max(accs):.3f}, mean {statistics.fmean(accs):.4f})",
        f"- sweep folder: `{folder.relative_to(ROOT)}` ({seconds:.0f} s for the four runs)"]


@step
def audit():
    """`python scripts/inspect_data.py` on the digits: its time, findings, label-issue picture."""
    out, seconds = run("scripts/inspect_data.py")
    report = folder_in(out, r"report: (\S+)/report\.md")
    found = json.loads((report / "report.json").read_text())
    pictures = []
    if (report / "figures" / "label_issues.png").exists():
        pictures.append(copy(report / "figures" / "label_issues.png",
                             "audit_digits_label_issues.png"))
    counts = {k: len(found.get(k) or []) for k in ("duplicates", "corrupt", "outliers",
                                                    "label_issues")}
    return "The digits audit (`python scripts/inspect_data.py`)", [
        f"- wall time (W&B offline): {seconds:.1f} s",
        f"- findings: {', '.join(f'{k} {n}' for k, n in sorted(counts.items()))}",
        f"- report folder: `{report.relative_to(ROOT) if report.is_absolute() else report}`",
        *(f"- picture: {p}" for p in pictures)]


def compare(sweep: Path) -> str:
    out, _ = run("scripts/compare_runs.py", str(sweep))
    return out.strip()


@step
def sweep():
    """The README's random search example (SGD, lr range wide on purpose) and its comparison."""
    out, seconds = run("src/train.py", "-m", "hparams_search=random", "hydra.sweeper.n_trials=6",
                       "trainer.max_epochs=2", "optimizer=sgd",
                       "optimizer.lr=tag(log, interval(1e-3, 10.0))",
                       "hydra.sweeper.max_failure_rate=0.9")
    folder = latest_sweep()
    report = compare(folder.relative_to(ROOT))  # writes the pictures
    pictures = [copy(folder / "objective_vs_hparams.png", "sweep_objective_vs_hparams.png")]
    best = (folder / "optimization_results.yaml").read_text().strip()
    return "A 6-trial random search (`compare_runs.py`)", [
        f"- console: {len(out.splitlines())} lines for 6 trials; {seconds:.0f} s in all", "",
        "```", report, "```", "", "```yaml", best, "```", *(f"- picture: {p}" for p in pictures)]


@step
def seed_grid():
    """The README's seed grid (two seeds x two learning rates) and its over-seeds table."""
    run("src/train.py", "-m", "seed=0,1", "optimizer.lr=1e-3,3e-3", "model=mlp",
        "trainer.max_epochs=1", "logger=none")
    folder = latest_sweep()
    return "A seed grid (`compare_runs.py`)", ["```", compare(folder.relative_to(ROOT)), "```"]


@step
def bench():
    """`make bench`: the loop against a bare PyTorch loop."""
    out, _ = run("scripts/bench.py")
    return "`scripts/bench.py`", ["```", out.strip(), "```"]


@step
def bench_threads():
    """Training threads under added load (scripts/bench_threads.py)."""
    out, _ = run("scripts/bench_threads.py", "--repeats", "2", "--loads", "0", "2")
    lines = [line for line in out.splitlines() if "busy" in line or "cores;" in line]
    return "`scripts/bench_threads.py`", ["```", *lines, "```"]


@step
def tests():
    """`make test`: the whole suite's wall time."""
    out, seconds = run("-m", "pytest", "-q", "-p", "no:randomly")
    return "`make test`", [f"- {out.strip().splitlines()[-1]} ({seconds:.0f} s wall, "
                           f"{run.cpu_s:.0f} s of CPU)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="*", help=f"some of: {', '.join(STEPS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    args = parser.parse_args()
    if args.list:
        for name, fn in STEPS.items():
            print(f"{name:14s} {fn.__doc__.splitlines()[0]}")
        return
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        sys.exit(f"unknown steps {sorted(unknown)}: use {', '.join(STEPS)}")
    sections = _read_sections()
    for name in args.steps or list(STEPS):
        print(f"{name} ...", flush=True)
        title, lines = STEPS[name]()
        sections[name] = [f"## {title}", *lines]
        print("\n".join(lines), flush=True)
        _write_sections(sections)
    print(f"wrote {NUMBERS.relative_to(ROOT)}")


def _read_sections() -> dict[str, list[str]]:
    """The steps measured before (their sections are kept when only some steps rerun)."""
    if not NUMBERS.exists():
        return {}
    sections, current = {}, None
    for line in NUMBERS.read_text().splitlines():
        if match := re.match(r"<!-- step: (\w+) -->", line):
            current = match.group(1)
            sections[current] = []
        elif current:
            sections[current].append(line)
    return {k: [line for line in v if line.strip() or v] for k, v in sections.items()}


def _write_sections(sections: dict[str, list[str]]) -> None:
    head = ["# Numbers and pictures in the README",
            "", "Written by `python scripts/make_figures.py` (each section by the step named "
            "above it); the README quotes them. Last run on "
            f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}) at "
            f"{time.strftime('%Y-%m-%d %H:%M')}.", ""]
    body = []
    for name in STEPS:
        if name in sections:
            lines = [line for line in sections[name]]
            while lines and not lines[-1].strip():
                lines.pop()
            body += [f"<!-- step: {name} -->", *lines, ""]
    NUMBERS.parent.mkdir(parents=True, exist_ok=True)
    NUMBERS.write_text("\n".join(head + body))


if __name__ == "__main__":
    main()
