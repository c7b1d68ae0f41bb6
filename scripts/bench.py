"""nnrecipe's loop against a bare PyTorch loop: same model, data, batch size, same run.

    python scripts/bench.py [--epochs 15] [--repeats 9] [--models linear convnet]
    python scripts/bench.py --ddp 2 [--epochs 6] [--models convnet]

--ddp N: the epoch time of src/train.py on N gloo processes (torchrun --standalone) against one
process, the same config and global batch; each the median of its epochs after the first, read
from train.log's epoch lines.

Prints the per-epoch time of each and their ratio (target: nnrecipe <= 1.05x bare). Each is
the fastest of the repeats: on a shared 2-core machine noise only ever adds time, and medians of
15 ms epochs still swung between 0.95x and 1.3x from one run to the next. nnrecipe's
epoch includes everything fit() does (validation, last.pt/best.pt checkpoints, loss logging);
the bare loop does the same training and validation with nothing else.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nnrecipe import runtime  # noqa: E402
from nnrecipe.data import build_data, iterate_batches, num_batches  # noqa: E402
from nnrecipe.loop import fit  # noqa: E402
from nnrecipe.models import build_model  # noqa: E402
from nnrecipe.optim import Schedule, build_optimizer  # noqa: E402
from nnrecipe.tracking import Tracker  # noqa: E402


def bare_epochs(model, data, epochs: int, lr: float) -> float:
    """The loop everyone writes first: shuffle indices, slice, step; validate each epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y, bs = data.train.x, data.train.y, data.batch_size
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            F.cross_entropy(model(data.val.x), data.val.y).item()
    return (time.perf_counter() - start) / epochs


def nnrecipe_epochs(model, cfg, data, epochs: int) -> float:
    optimizer = build_optimizer(cfg.optimizer, model)
    schedule = Schedule(cfg.schedule, optimizer, num_batches(data.train, data.batch_size), epochs)
    cfg.trainer.max_epochs = epochs
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fit(model, optimizer, schedule, data, cfg.trainer, Tracker(), Path(tmp))
        return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--models", nargs="+", default=["linear", "convnet"])
    parser.add_argument("--ddp", type=int, default=0, help="processes to compare with one")
    args = parser.parse_args()
    if args.ddp:
        return ddp_main(args)
    runtime.set_threads(None)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits, "
          f"{args.epochs} epochs x {args.repeats} repeats, fastest per-epoch time")
    for name in args.models:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", [f"model={name}", "logger=none", "trainer.progress=false"])
        data = build_data(cfg.data, cfg.seed)
        example, _ = next(iterate_batches(data.train, 2))
        times = {"bare": [], "nnrecipe": []}
        for _ in range(args.repeats + 1):  # interleaved, so drift in machine load hits both
            torch.manual_seed(0)
            times["bare"].append(bare_epochs(build_model(cfg.model, example, 10), data,
                                             args.epochs, cfg.optimizer.lr))
            torch.manual_seed(0)
            times["nnrecipe"].append(nnrecipe_epochs(build_model(cfg.model, example, 10), cfg,
                                                     data, args.epochs))
        bare, ours = (min(times[k][1:]) for k in ("bare", "nnrecipe"))  # [0]: warm-up
        print(f"{name:8s} bare {bare * 1e3:7.1f} ms/epoch   nnrecipe {ours * 1e3:7.1f} ms/epoch"
              f"   ratio {ours / bare:.3f}x")


def train_epochs(processes: int, threads: int, model: str, epochs: int,
                 folder: Path) -> list[float]:
    """Seconds of each epoch of src/train.py on `processes` processes (1: plain python) of
    `threads` CPU threads each."""
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--standalone",
                 f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable])
    overrides = [f"model={model}", f"trainer.max_epochs={epochs}", "logger=none", "checks=off",
                 "trainer.progress=false", "trainer.checkpoint_every_s=600",
                 f"trainer.num_threads={threads}", f"hydra.run.dir={folder}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*launcher, str(ROOT / "src" / "train.py"), *overrides], env=env, check=True,
                   capture_output=True)
    log = (folder / "train.log").read_text()
    return [float(s) for s in re.findall(r"epoch \d+/\d+  train/loss .*  ([\d.]+)s\n", log)]


def ddp_main(args) -> None:
    cores = runtime.cores()
    print(f"torch {torch.__version__}, {cores} cores (load {os.getloadavg()[0]:.1f}), digits, "
          f"{args.epochs} epochs, median s/epoch after the first, global batch unchanged")
    shares = max(1, cores // args.ddp)
    setups = [(1, 1), (1, cores), (args.ddp, shares)]  # (processes, threads per process)
    for name in args.models if args.models != ["linear", "convnet"] else ["convnet"]:
        cells = []
        for processes, threads in setups:
            with tempfile.TemporaryDirectory() as tmp:
                times = train_epochs(processes, threads, name, args.epochs, Path(tmp) / "run")
            cells.append(f"{processes}x{threads} thr {statistics.median(times[1:]):6.2f}")
        print(f"{name:8s} " + "   ".join(cells) + "   (processes x threads: s/epoch)")


if __name__ == "__main__":
    main()
