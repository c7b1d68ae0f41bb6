"""Image-folder speed: start-up (index built, then reused) and images/s of nnrecipe's input
pipeline against torchvision's ImageFolder + DataLoader with the same resize, normalisation,
batch size and workers, in one run.

    python scripts/bench_data.py                        # generates 20,000 32x32 PNGs in /tmp
    python scripts/bench_data.py --images 100000        # the issue's 100k folder
    python scripts/bench_data.py --root /my/images --image-size 64 --workers 8

Start times are measured in fresh processes (imports excluded, printed apart): the first with
an empty cache folder (the index is built over all cores), the second with the cache it left.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))


def folder_cfg(root: Path, image_size: int, workers: int, cache: str, cache_dir: Path):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "_target_": "nnrecipe.data.sources.image_folder", "root": str(root), "batch_size": 256,
        "image_size": image_size, "in_chans": 3, "num_workers": workers, "cache": cache,
        "cache_dir": str(cache_dir), "val_fraction": 0.15, "test_fraction": 0.15,
        "mean": None, "std": None})


def start(args) -> None:
    """One start, in this (fresh) process: print seconds for imports and for build_data."""
    t = time.perf_counter()
    import torch  # noqa: F401

    from nnrecipe.data import build_data

    imports = time.perf_counter() - t
    t = time.perf_counter()
    build_data(folder_cfg(args.root, args.image_size, args.workers, args.cache, args.cache_dir), 0)
    print(json.dumps({"imports_s": imports, "build_s": time.perf_counter() - t}))


def timed_start(args, cache_dir: Path, cache: str = "index") -> dict:
    cmd = [sys.executable, __file__, "--start-only", "--root", str(args.root), "--cache-dir",
           str(cache_dir), "--cache", cache, "--image-size", str(args.image_size),
           "--workers", str(args.workers)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def epoch_rate(batches) -> tuple[float, int]:
    """images/s over one pass (worker start-up included: it is part of what an epoch costs)."""
    t, n = time.perf_counter(), 0
    for x, _ in batches:
        n += len(x)
    return n / (time.perf_counter() - t), n


def nnrecipe_batches(data, args, device, epoch: int):
    import torch

    from nnrecipe.data import iterate_batches

    g = torch.Generator().manual_seed(epoch)
    return iterate_batches(data.train, args.batch_size, True, g, device, data.num_workers)


def torchvision_batches(args, data, device):
    """The classic pipeline: ImageFolder (PIL) + Resize + ToTensor + Normalize per sample."""
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((args.image_size, args.image_size)),
                             transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    t = time.perf_counter()
    folder = datasets.ImageFolder(str(args.root), transform=tf)
    scan = time.perf_counter() - t
    loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, pin_memory=device == "cuda")

    def batches():
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return batches, scan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, help="an image folder (default: generate one)")
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--size", type=int, default=32, help="generated images' size")
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    p.add_argument("--image-size", type=int, default=32, help="data.image_size to train at")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--cache", default="index")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--memory", action="store_true", help="also time data.cache=memory starts")
    p.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.start_only:
        return start(args)
    if args.root is None:
        from make_image_folder import make_image_folder

        args.root = Path(tempfile.gettempdir()) / f"nnrecipe-bench-{args.images}-{args.size}" \
            f"-{args.format}"
        if not args.root.exists():
            t = time.perf_counter()
            make_image_folder(args.root, args.images, args.size, fmt=args.format)
            print(f"generated {args.images:,} {args.size}px {args.format} in "
                  f"{time.perf_counter() - t:.0f} s: {args.root}")
    report(args)


def report(args) -> None:
    import torch

    from nnrecipe.data import build_data

    print(f"folder {args.root}, trained at {args.image_size} px, {args.workers} workers, "
          f"batch {args.batch_size}, {args.device}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as cache:
        first = timed_start(args, Path(cache))
        second = timed_start(args, Path(cache))
        none = timed_start(args, Path(cache), cache="none")
        print(f"start (build_data, imports {first['imports_s']:.1f} s apart): first "
              f"{first['build_s']:.1f} s (index built), second {second['build_s']:.2f} s "
              f"(index reused); data.cache=none {none['build_s']:.1f} s")
        if args.memory:
            decoded, again = (timed_start(args, Path(cache), cache="memory") for _ in range(2))
            print(f"data.cache=memory start: first {decoded['build_s']:.1f} s (decoded into "
                  f"memory, index reused), second {again['build_s']:.1f} s (pixels from disk)")
        data = build_data(folder_cfg(args.root, args.image_size, args.workers, "index",
                                     Path(cache)), 0, args.device)
    batches, scan = torchvision_batches(args, data, args.device)
    print(f"torchvision ImageFolder scan: {scan:.2f} s (no file decoded: a broken one fails "
          f"mid-epoch)")
    for epoch in range(args.epochs):  # alternated, so that load drifts hit both alike
        ours, n = epoch_rate(nnrecipe_batches(data, args, args.device, epoch))
        theirs, m = epoch_rate(batches())
        print(f"epoch {epoch + 1}: nnrecipe {ours:,.0f} img/s ({n:,} train images), "
              f"torchvision {theirs:,.0f} img/s ({m:,} images): ratio {ours / theirs:.2f}x")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
