"""Training threads on a loaded machine: each thread count, and the one nnrecipe picks.

    python scripts/bench_threads.py [--epochs 2] [--repeats 3] [--loads 0 1 2 4]

For each background load (that many busy processes added, each spinning on one core) it times
the default job (convnet on digits, batch 32, logger and checks off) end to end in this process
with every thread count from 1 to the cores, then with trainer.num_threads=null (nnrecipe's
choice, runtime.auto_threads), and prints each as a ratio to the fastest thread count measured
under the same load in the same run (target: nnrecipe's choice <= 1.5x). Each figure is the
fastest of the repeats, interleaved, so drift in the machine's own load hits every count alike;
other users of a shared machine add load this script does not control, so read the ratios, not
the seconds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nnrecipe import runtime  # noqa: E402

SPIN = "while True: pass"


def time_job(train, epochs: int, threads: int | None) -> tuple[float, int]:
    """Seconds of one default job (train() in this process) and the threads it used."""
    overrides = ["logger=none", "checks=off", "trainer.progress=false",
                 f"trainer.max_epochs={epochs}", f"trainer.num_threads={threads or 'null'}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides)
    runtime._busy_seen = None  # nnrecipe's choice looks at the load of this moment
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp))
        return time.perf_counter() - start, torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2, 4],
                        help="busy processes added in the background, one condition each")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "src" / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    cores = runtime.cores()
    counts = list(range(1, cores + 1))
    print(f"{cores} cores; default job, {args.epochs} epochs; fastest of {args.repeats}; ratio to "
          f"the fastest thread count under the same load (same run)")
    time_job(entry.train, 1, 1)  # warm-up: first imports and allocations
    for load in args.loads:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(load)]
        try:
            time.sleep(1.0 if load else 0.0)
            times = {n: [] for n in [*counts, None]}
            chosen = []
            for _ in range(args.repeats):
                for n in times:
                    seconds, used = time_job(entry.train, args.epochs, n)
                    times[n].append(seconds)
                    if n is None:
                        chosen.append(used)
            busy = runtime.busy_cores(reuse_s=0)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        best = {n: min(t) for n, t in times.items()}
        fastest = min(best[n] for n in counts)
        cells = "  ".join(f"{n} thr {best[n]:6.2f} s {best[n] / fastest:5.2f}x" for n in counts)
        print(f"+{load} busy (busy cores seen {busy:.1f}): {cells}  |  nnrecipe "
              f"(chose {sorted(set(chosen))}) {best[None]:6.2f} s {best[None] / fastest:5.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
