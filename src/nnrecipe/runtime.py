"""Seeds, device and threads: the run's environment, set once before anything is built."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch

from nnrecipe.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={name} but no CUDA GPU is visible: use trainer.device=auto"
        )
    return device


def spread_over_gpus(name: str, job_num: int) -> str:
    """trainer.device for sweep trial `job_num`: with several GPUs, parallel trials use one each.

    `cuda:<job_num mod GPUs>` when the device is auto (or cuda) and more than one GPU is visible;
    on a SLURM node each job sees only its own GPU, so it stays on cuda:0.
    """
    if name not in ("auto", "cuda") or not torch.cuda.is_available():
        return name
    count = torch.cuda.device_count()
    if count < 2:
        return name
    index = job_num % count
    torch.cuda.set_device(index)  # CUDA context and pinned memory on that GPU, not GPU 0
    return f"cuda:{index}"


def share_cores(num_threads: int | None, parallel_jobs: int | None) -> int | None:
    """CPU threads for one of `parallel_jobs` trials running side by side (joblib's n_jobs; -1:
    one per core): an equal share of the cores, unless trainer.num_threads is set."""
    if num_threads is not None or parallel_jobs in (None, 0, 1):
        return num_threads
    n = cores()
    return max(1, n // (n if parallel_jobs < 0 else parallel_jobs))


def cores() -> int:
    """CPU cores this process may use (SLURM and taskset limits included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_threads(num_threads: int | None) -> int:
    """Use `num_threads` CPU threads, never more than the machine's cores."""
    n = min(num_threads or cores(), cores())
    if n < 1:
        raise UserError(f"trainer.num_threads must be positive, got {num_threads}")
    torch.set_num_threads(n)
    return n


@contextmanager
def threads(n: int | None):
    """At most `n` CPU threads inside the block (None: unchanged), restored after. Small tensor
    work gains nothing from threads, and on a shared machine waiting threads cost 10-100x."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(min(before, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
