"""One run on many processes: torch.distributed set up from torchrun's or SLURM's environment.

Every helper works unchanged in a single process (rank 0 of a world of 1), so the rest of
nnrecipe calls them without asking whether the run is distributed.

    torchrun --standalone --nproc_per_node=2 src/train.py     # RANK, WORLD_SIZE, LOCAL_RANK set
    python src/train.py -m hydra/launcher=slurm hydra.launcher.tasks_per_node=4   # via submitit

Collectives on the model's tensors (DDP's gradients, evaluation sums) use the main group: nccl
on GPUs, gloo on CPUs. Decisions and Python objects (an error, a run folder, RNG states) go
through a gloo side group with a long timeout, so that rank 0's slow work (the preflight, a
checkpoint) never trips the main group's collective timeout while the other ranks wait.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import string
import sys
import time
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")

SIDE_TIMEOUT = timedelta(hours=2)  # the other ranks wait this long for rank 0's preflight
_side = None  # the gloo group for decisions and objects


class OtherRankFailed(UserError):
    """Raised on a rank whose own work went well when another rank failed (see settle()): the
    message is that rank's; only rank 0 prints it (train.py), so N ranks give one message."""

    settled = True


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.lstrip("-").isdigit() else default


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def local_world() -> int:
    """Processes of this run on this machine (they share its cores)."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether this process is one of several (torchrun or a multi-task SLURM job)."""
    return world() > 1


def init() -> bool:
    """Join the process group when launched as one of several processes; True when joined.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. A SLURM (or
    submitit_local) job with several tasks gets them from submitit's TorchDistributedEnvironment.
    Idempotent: a second call does nothing.
    """
    global _side
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # the GPUs stay as SLURM made them visible: each rank picks cuda:LOCAL_RANK
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if _env_int("WORLD_SIZE", 1) < 2:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"  # model tensors on nccl; CPU tensors (if any) on gloo
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    _side = dist.new_group(backend="gloo", timeout=SIDE_TIMEOUT)
    return True


def _submitit_tasks() -> int:
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 1
    try:
        import submitit

        return submitit.JobEnvironment().num_tasks
    except Exception:  # not inside a submitit job after all
        return 1


def backend() -> str:
    return dist.get_backend() if dist.is_initialized() else "none"


def close() -> None:
    global _side
    if dist.is_initialized():
        dist.destroy_process_group()
    _side = None


# --- collectives -------------------------------------------------------------------------------


def barrier() -> None:
    """Wait for every rank (on the side group: rank 0 may be slow, e.g. in the preflight)."""
    if dist.is_initialized():
        dist.barrier(group=_side)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks, in place; returned for convenience."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj=None):
    """Rank 0's `obj` on every rank (a picklable Python object)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_side)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj, group=_side)
    return out


def agree(flag: bool) -> bool:
    """True on every rank when `flag` is True on any: for decisions all ranks must take
    together (stop early, preempted, diverged), so that none is left waiting in a collective."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_side)
    return bool(t.item())


def settle(error: BaseException | None) -> None:
    """Every rank calls this at the same point with its own error (or None): when any rank
    failed, every rank raises the first failed rank's UserError (OtherRankFailed), so all
    exit together with one message. A single process re-raises its own error."""
    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    mine = None if error is None else (type(error).__name__, str(error),
                                       isinstance(error, UserError))
    outcomes = gather_objects(mine)
    failed = next(((r, o) for r, o in enumerate(outcomes) if o is not None), None)
    if failed is None:
        return
    r, (kind, message, user_error) = failed
    if isinstance(error, UserError):
        error.settled = True  # rank 0 prints the message (its own or the first failed rank's)
        raise error
    if error is not None and rank() == r:
        raise error  # the first rank that crashed keeps its traceback
    if not user_error:
        message = f"{kind} on rank {r}: {message} (its traceback is above)"
    raise OtherRankFailed(message)


def together(fn, *args, **kwargs):
    """fn(*args, **kwargs) on every rank, then settle(): all succeed or all raise one error."""
    try:
        result = fn(*args, **kwargs)
    except Exception as e:
        settle(e)
        raise  # not reached: settle raises
    settle(None)
    return result


def main_only(fn):
    """Decorator: run `fn` on rank 0 only (other ranks get None)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def on_main(fn, *args, **kwargs):
    """fn on rank 0 while the others wait; its result (or its error) reaches every rank."""
    outcome, error = None, None
    if is_main():
        try:
            outcome = fn(*args, **kwargs)
        except Exception as e:
            error = e
    settle(error)
    return broadcast_object(outcome)


@contextmanager
def main_first():
    """Rank 0 runs the block first (downloads, caches), then the others (reading what it left)."""
    if is_main():
        try:
            yield
        finally:
            barrier()
    else:
        barrier()
        yield


# --- run folder ---------------------------------------------------------------------------------

STAMP_ENV = "NNRECIPE_RUN_STAMP"


def run_stamp() -> str:
    """'<date>/<time>-<suffix>': the run folder's readable date/time plus a suffix unique to the
    job: the SLURM job id (a requeued job keeps it, so it finds its folder again), else 4
    random characters (two runs started in the same second differ). Computed once per job:
    rank 0's value reaches every rank through $NNRECIPE_RUN_STAMP (see share_run_stamp)."""
    if not os.environ.get(STAMP_ENV):
        job = os.environ.get("SLURM_ARRAY_JOB_ID") and "{}_{}".format(
            os.environ["SLURM_ARRAY_JOB_ID"], os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
        job = job or os.environ.get("SLURM_JOB_ID")
        suffix = f"j{job}" if job else "".join(random.choices(string.ascii_lowercase, k=4))
        os.environ[STAMP_ENV] = time.strftime("%Y-%m-%d/%H-%M-%S") + "-" + suffix
    return os.environ[STAMP_ENV]


def run_folder(base: str = "outputs") -> str:
    """The resolver behind hydra.run.dir (${run_folder:outputs}): <base>/<run_stamp>, or the
    folder an earlier start of this SLURM job made (a requeued job resumes from it)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        tag = run_stamp().rpartition("-")[2]
        import glob

        earlier = sorted(glob.glob(os.path.join(base, "*", f"*-{tag}")))
        if earlier:
            return earlier[0]
    return os.path.join(base, run_stamp())


def launch_rank() -> int:
    """This process's rank as its launcher set it, before any process group exists: torchrun's
    RANK, or the task number of a submitit job (SLURM or local)."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    name = ("RANK" if "RANK" in os.environ else "SLURM_PROCID" if executor == "slurm"
            else "SUBMITIT_LOCAL_GLOBALID" if executor == "local" else "RANK")
    return _env_int(name, 0)


def rank0_only(value):
    """Resolver ${rank0_only:.hydra} (hydra.output_subdir): `value` in rank 0, None (nothing
    written) in the other ranks of a job: Hydra writes .hydra/ once, from rank 0."""
    return value if launch_rank() == 0 else None


def share_run_stamp() -> None:
    """Give every rank rank 0's run stamp (ranks started a second apart would each make a
    folder). Called before Hydra composes the config, once the process group exists."""
    if dist.is_initialized():
        os.environ[STAMP_ENV] = broadcast_object(run_stamp() if is_main() else None)


def quiet_other_ranks() -> None:
    """Ranks other than 0 log errors only and write no train.log: rank 0 speaks for the run."""
    if is_main():
        return
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    root.setLevel(logging.ERROR)
    logging.getLogger("nnrecipe").setLevel(logging.ERROR)


def hydra_overrides_for_other_ranks() -> list[str]:
    """Command-line overrides that keep Hydra on torchrun's ranks > 0 from logging into rank 0's
    train.log (.hydra/ is rank 0's through ${rank0_only:.hydra} in conf/train.yaml)."""
    if not launched() or is_main():
        return []
    return ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def exit_quietly(code: int) -> None:
    """Leave the process group and exit with `code`, without Python's error output."""
    try:
        close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code) if launched() else sys.exit(code)


# --- the model ----------------------------------------------------------------------------------


def wrap_model(model, sync_batchnorm: bool | None, device):
    """The module the training step calls: `model` itself in one process; with several ranks,
    DistributedDataParallel around it (gradients averaged over ranks; it starts every rank from
    rank 0's weights and buffers), its BatchNorms synchronised when `sync_batchnorm` (None: on
    GPUs; torch's SyncBatchNorm has no CPU kernel, so CPU ranks keep per-rank statistics).
    BatchNorm layers are swapped inside `model`, so `model` stays what is saved and evaluated."""
    if not launched():
        return model
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if sync_batchnorm and device.type == "cpu":
        raise UserError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no "
                        "CPU kernel): use trainer.sync_batchnorm=null on CPU")
    if has_bn and (sync_batchnorm or (sync_batchnorm is None and device.type != "cpu")):
        _sync_batchnorm_in_place(model)
        log.info("BatchNorm statistics synchronised over %d ranks (trainer.sync_batchnorm)",
                 world())
    elif has_bn:
        log.info("BatchNorm statistics per rank (trainer.sync_batchnorm=%s, device %s)",
                 sync_batchnorm, device.type)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def same_buffers(model) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: per-rank statistics drift
    apart in the last steps, and every rank should evaluate the model rank 0 saves."""
    if launched():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _sync_batchnorm_in_place(model) -> None:
    from torch import nn

    for name, child in model.named_children():
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(model, name, converted)


def check_global_batch(batch_size: int) -> None:
    """data.batch_size is the global batch: it must split evenly over the ranks."""
    if batch_size % world():
        raise UserError(
            f"data.batch_size={batch_size} is the global batch and does not divide over "
            f"{world()} processes: use a multiple of {world()} (e.g. "
            f"data.batch_size={max(world(), batch_size // world() * world())})")


def lost_a_rank(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank went away."""
    names = {type(error).__name__} | {t.__name__ for t in type(error).__mro__}
    return bool(names & {"DistBackendError", "DistNetworkError", "DistError"}) or (
        isinstance(error, RuntimeError) and any(
            s in str(error) for s in ("Connection closed by peer", "Connection reset by peer",
                                      "Gloo", "NCCL")))
