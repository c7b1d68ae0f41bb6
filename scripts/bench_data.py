"""Image-folder speed: start-up (index built, then reused) and images/s of nnrecipe's input
pipeline against torchvision's ImageFolder + DataLoader with the same resize, normalisation,
batch size and workers, in one run.

    python scripts/bench_data.py                        # generates 20,000 32x32 PNGs in /tmp
    python scripts/bench_data.py --images 100000        # the issue's 100k folder
    python scripts/bench_data.py --root /my/images --image-size 64 --workers 8

Start times are measured in fresh processes (imports excluded, printed apart): the first with
an empty cache folder (the index is built over all cores), the second with the cache it left.

--process: whole processes instead, as a user meets them. `src/train.py` for one epoch
(`trainer.max_epochs=1 checks=off logger=none`: train, validate, test), first with an empty
cache folder, then again, against a bare script that trains the same model for one epoch
over torchvision's ImageFolder + DataLoader (same size, batch, workers), both timed from
launch to exit. Each touches every file once.
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


def folder_cfg(root: Path, image_size: int, workers: int, cache: str, cache_dir: Path,
               source: str = "folder"):
    """data=image_folder over root, or (--source) the same images as webdataset shards in
    <root>-shards or a Hugging Face dataset in <root>-hf (written once by make_image_folder)."""
    from omegaconf import OmegaConf

    common = {"batch_size": 256, "image_size": image_size, "in_chans": 3,
              "num_workers": workers, "cache": cache, "val_fraction": 0.15,
              "test_fraction": 0.15, "mean": None, "std": None}
    if source == "webdataset":
        return OmegaConf.create({"_target_": "nnrecipe.data.shards.webdataset_shards",
                                 "shards": f"{root}-shards", "cache_dir": str(cache_dir),
                                 **common})
    if source == "hf":
        return OmegaConf.create({"_target_": "nnrecipe.data.hf.hf_dataset", "path": f"{root}-hf",
                                 "cache_dir": str(cache_dir), **common})
    return OmegaConf.create({"_target_": "nnrecipe.data.sources.image_folder", "root": str(root),
                             "cache_dir": str(cache_dir), **common})


def start(args) -> None:
    """One start, in this (fresh) process: print seconds for imports and for build_data."""
    t = time.perf_counter()
    import torch  # noqa: F401

    from nnrecipe.data import build_data

    imports = time.perf_counter() - t
    t = time.perf_counter()
    build_data(folder_cfg(args.root, args.image_size, args.workers, args.cache, args.cache_dir,
                          args.source), 0)
    print(json.dumps({"imports_s": imports, "build_s": time.perf_counter() - t}))


def bare_epoch(args) -> None:
    """The script everyone writes first, one epoch: ImageFolder + DataLoader + the same model."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from nnrecipe.models import ConvNet, Linear

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.Resize((args.image_size, args.image_size)),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    folder = datasets.ImageFolder(str(args.root), transform=tf)
    loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers,
                                         pin_memory=args.device == "cuda")
    classes = len(folder.classes)
    model = (ConvNet(classes, 3) if args.model == "convnet"
             else Linear(classes, 3, args.image_size)).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    for x, y in loader:
        loss = F.cross_entropy(model(x.to(args.device)), y.to(args.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def timed_process(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return time.perf_counter() - t


def process_report(args) -> None:
    """Whole processes: train.py one epoch (first start, second start) / a bare epoch."""
    bare = [sys.executable, __file__, "--bare-epoch", "--root", str(args.root), "--image-size",
            str(args.image_size), "--workers", str(args.workers), "--batch-size",
            str(args.batch_size), "--device", args.device, "--model", args.model]
    print(f"folder {args.root}, trained at {args.image_size} px, {args.workers} workers, "
          f"batch {args.batch_size}, {args.device}, model {args.model}; whole processes, "
          f"launch to exit")
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            train = [sys.executable, str(ROOT / "src" / "train.py"), "data=image_folder",
                     f"data.root={args.root}", f"data.image_size={args.image_size}",
                     f"data.num_workers={args.workers}", f"data.batch_size={args.batch_size}",
                     f"data.cache_dir={tmp}/cache", f"model={args.model}",
                     "trainer.max_epochs=1", "checks=off",
                     "logger=none", "trainer.progress=false", f"hydra.run.dir={tmp}/run1"]
            plain = timed_process(bare)
            first = timed_process(train)
            train[-1] = f"hydra.run.dir={tmp}/run2"
            second = timed_process(train)
        print(f"repeat {repeat + 1}: bare torchvision epoch {plain:.1f} s; nnrecipe 1-epoch run "
              f"first {first:.1f} s ({first / plain:.2f}x), second {second:.1f} s "
              f"({second / plain:.2f}x)")


def timed_start(args, cache_dir: Path, cache: str = "index") -> dict:
    cmd = [sys.executable, __file__, "--start-only", "--root", str(args.root), "--cache-dir",
           str(cache_dir), "--cache", cache, "--image-size", str(args.image_size),
           "--workers", str(args.workers), "--source", args.source]
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
    p.add_argument("--source", default="folder", choices=["folder", "webdataset", "hf"],
                   help="nnrecipe reads the images from the folder, or from the same images "
                        "as webdataset shards / a Hugging Face dataset (data.cache=index)")
    p.add_argument("--process", action="store_true",
                   help="whole processes: a 1-epoch train.py run against a bare epoch")
    p.add_argument("--repeats", type=int, default=2, help="--process: times to alternate")
    p.add_argument("--model", default="convnet", choices=["convnet", "linear"],
                   help="--process: linear leaves the input pipeline as the cost; convnet at "
                        "32 px is compute-bound on a CPU")
    p.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare-epoch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.start_only:
        return start(args)
    if args.bare_epoch:
        return bare_epoch(args)
    if args.root is None:
        from make_image_folder import make_image_folder

        args.root = Path(tempfile.gettempdir()) / f"nnrecipe-bench-{args.images}-{args.size}" \
            f"-{args.format}"
        if not args.root.exists():
            t = time.perf_counter()
            make_image_folder(args.root, args.images, args.size, fmt=args.format)
            print(f"generated {args.images:,} {args.size}px {args.format} in "
                  f"{time.perf_counter() - t:.0f} s: {args.root}")
    library = Path(f"{args.root}-{'shards' if args.source == 'webdataset' else 'hf'}")
    if args.source != "folder" and not library.exists():
        from make_image_folder import to_hf, to_shards

        (to_shards if args.source == "webdataset" else to_hf)(args.root, library)
        print(f"wrote the folder's images as {args.source}: {library}")
    process_report(args) if args.process else report(args)


def report(args) -> None:
    import torch

    from nnrecipe.data import build_data

    print(f"folder {args.root} (nnrecipe reads it as: {args.source}), trained at "
          f"{args.image_size} px, {args.workers} workers, batch {args.batch_size}, "
          f"{args.device}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as cache:
        first = timed_start(args, Path(cache))
        second = timed_start(args, Path(cache))
        none = timed_start(args, Path(cache), cache="none")
        built, reused, kept = {
            "folder": ("index built", "index reused", "pixels from disk"),
            "webdataset": ("shards indexed", "index reused", "decoded again"),
            "hf": ("rows checked", "checks reused", "decoded again")}[args.source]
        print(f"start (build_data, imports {first['imports_s']:.1f} s apart): first "
              f"{first['build_s']:.1f} s ({built}), second {second['build_s']:.2f} s "
              f"({reused}); data.cache=none {none['build_s']:.1f} s")
        if args.memory:
            decoded, again = (timed_start(args, Path(cache), cache="memory") for _ in range(2))
            print(f"data.cache=memory start: first {decoded['build_s']:.1f} s (decoded into "
                  f"memory), second {again['build_s']:.1f} s ({kept})")
        data = build_data(folder_cfg(args.root, args.image_size, args.workers, "index",
                                     Path(cache), args.source), 0, args.device)
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
