"""Seeds, device and threads: the run's environment, set once before anything is built."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch

from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: this process's GPU (cuda:LOCAL_RANK under torchrun/SLURM), then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={name} but no CUDA GPU is visible: use trainer.device=auto"
        )
    if device.type == "cuda" and device.index is None:  # each rank its own GPU
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
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


def process_map(fn, jobs, workers: int):
    """fn over `jobs` (any iterable, consumed as the work goes), the results in order: on
    `workers` forked processes (decoding images holds the GIL: threads would take turns), in
    this process when workers < 2. At most two jobs per process are in flight, so a job's input
    (bytes the parent reads) is read only as it is needed."""
    if workers < 2:
        yield from map(fn, jobs)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending = deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def set_threads(num_threads: int | None, sharing: int = 1) -> int:
    """Use `num_threads` CPU threads (never more than the cores); None: as many as are idle,
    shared by the `sharing` processes of a run on this machine (its local ranks).

    Why not all cores: torch's intra-op threads meet at a barrier after every op, so one thread
    that another process pushes off its core makes the others wait for the scheduler. With
    small ops (a small model, small batches) that waiting dominates: the default job took
    2-3.5 min on a loaded 2-core machine with 2 threads and 26 s with 1
    (scripts/bench_threads.py measures it). Threads on idle cores cost nothing of the kind.
    """
    if num_threads is not None and num_threads < 1:
        raise UserError(f"trainer.num_threads must be positive, got {num_threads}")
    n, why = ((min(num_threads, cores()), "trainer.num_threads") if num_threads
              else auto_threads(sharing))
    torch.set_num_threads(n)
    log.info("CPU threads: %d of %d cores (%s)", n, cores(), why)
    return n


def auto_threads(sharing: int = 1) -> tuple[int, str]:
    """(threads, why) for a run that did not choose: $OMP_NUM_THREADS when set (a cluster's or the
    user's choice), else its share of the cores that other processes leave idle, at least one.
    `sharing`: processes started together on these cores (the local ranks of a distributed run,
    parallel trials), each getting an equal share."""
    total = cores()
    share = max(1, total // sharing)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]):
        return min(share, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"  # set by you
    busy = busy_cores()
    n = max(1, min(share, math.floor((total - busy) / sharing + 0.25)))
    if n == share:
        return n, "all idle" if sharing == 1 else f"1/{sharing} of the cores"
    return n, (f"other processes keep {busy:.1f} cores busy, and threads beyond the idle "
               f"cores wait on each other; trainer.num_threads=N to choose")


_busy_seen: tuple[float, float] | None = None  # (when, busy cores): measured once a minute


def busy_cores(window_s: float = 0.1, reuse_s: float = 60.0) -> float:
    """Cores of this process's set that other processes keep busy now: from the kernel's CPU
    times over `window_s` (Linux), else the 1-minute load average. Measured once per `reuse_s`
    (a sweep's trials in one process do not each wait `window_s`)."""
    global _busy_seen
    now = time.monotonic()
    if _busy_seen and now - _busy_seen[0] < reuse_s:
        return _busy_seen[1]
    try:
        before = _cpu_times()
        time.sleep(window_s)  # this process sleeps: what is busy meanwhile is someone else
        after = _cpu_times()
        busy = sum(1 - (a[1] - b[1]) / max(1, a[0] - b[0]) for b, a in zip(before, after))
    except (OSError, ValueError, IndexError):
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    _busy_seen = (now, max(0.0, busy))
    return _busy_seen[1]


def _cpu_times() -> list[tuple[int, int]]:
    """(total, idle) jiffies of each CPU this process may use, from /proc/stat."""
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    times = []
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                if mine is None or int(name[3:]) in mine:
                    values = [int(v) for v in fields[:8]]
                    times.append((sum(values), values[3] + values[4]))  # idle + iowait
    return times


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


def set_tf32(enabled: bool, device: torch.device) -> None:
    """TF32 matmuls and convolutions on GPUs that have them (Ampere and later): ~2x faster fp32
    at ~1e-3 relative precision, which training tolerates; trainer.tf32=false for full fp32."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    if device.type == "cuda":
        log.info("TF32 matmuls: %s (trainer.tf32)", "on" if enabled else "off")


# --- preemption --------------------------------------------------------------------------------

# The exit status of a run stopped by SIGTERM/SIGUSR1 after writing last.pt: EX_TEMPFAIL,
# "try again later". A wrapper script can requeue on it; trainer.resume=auto then continues.
PREEMPTED_EXIT = 75
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")  # SLURM's before a time limit / preemption


class Preempted(Exception):
    """A stop signal arrived; last.pt holds the state after the step that was running."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: last.pt written; run again "
                         f"with the same run folder (trainer.resume=auto) to continue")


class StopSignals:
    """While active, SIGTERM/SIGUSR1/SIGUSR2 only set `.received`: the loop finishes its step,
    writes last.pt and raises Preempted. A second signal stops at once. Handlers that were
    installed before (submitit's requeue on SIGUSR2) run after last.pt is written (chain())."""

    def __init__(self):
        self.received: int | None = None
        self.received_at = 0.0
        self.previous: dict[int, object] = {}

    def __enter__(self):
        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no handlers, as before
                break
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        # Asked again later: stop now. Within seconds it is the same request twice (SLURM
        # signals every process of the job, and torchrun forwards its own copy to its workers).
        if self.received is not None and time.monotonic() - self.received_at > 5:
            sys.exit(128 + signum)
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()

    def chain(self) -> None:
        """Run the handler that was installed before ours (e.g. submitit's checkpoint-and-requeue
        on SIGUSR2) for the signal received."""
        previous = self.previous.get(self.received)
        if callable(previous):
            try:
                previous(self.received, None)
            except SystemExit:  # submitit's exits once it has requeued the job: ours follows
                pass
