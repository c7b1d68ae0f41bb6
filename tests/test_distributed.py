"""One run on 2 processes (torchrun, gloo on CPU) against the same run in one process.

Each torchrun start costs ~5-10 s (imports in both ranks), so each test checks several things
of one or a few runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import wandb_inspect

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
QUIET = ["trainer.progress=false", "logger=none", "checks=off", "trainer.num_threads=1"]


def torchrun(*overrides, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    args = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "src" / "train.py"),
            *QUIET, *overrides]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("nnrecipe: error:")]


def test_two_ranks_train_as_one_process_into_one_run_folder_and_one_wandb_run(
        run_train, tmp_path):
    """model=linear (no dropout, no BatchNorm), fp32, the same global batch: the same
    optimisation (the EMA of the weights too), every sample evaluated once, and one run folder,
    W&B run and checkpoints/ (and rank 0's pictures of the inside)."""
    common = ["model=linear", "trainer.max_epochs=2", "trainer.ema.decay=0.9"]
    _, one = run_train(*common, "trainer.num_threads=1", run_dir=tmp_path / "one")
    done = torchrun(*common, "logger=wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    (folder,) = (tmp_path / "outputs").glob("*/*")  # one folder: rank 0's, not one per rank
    assert (folder / ".hydra" / "config.yaml").is_file() and (folder / "train.log").is_file()
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list(folder.glob("wandb/offline-run-*"))) == 1
    assert wandb_inspect(folder)["config"]["world_size"] == 2
    two_m, one_m = metrics(folder), metrics(one)
    for a, b in zip(two_m["history"], one_m["history"], strict=True):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
        assert a["val/loss_ema"] == pytest.approx(b["val/loss_ema"], rel=1e-4)
    assert two_m["summary"]["test/acc"] == one_m["summary"]["test/acc"]
    assert (folder / "filters.png").is_file() and (folder / "activations.png").is_file()
    assert "epoch 2/2" in (folder / "train.log").read_text()  # the learning curve, one line


def test_batchnorm_dropout_augmentation_on_two_ranks_preempted_resumes_as_never_stopped(
        run_train, tmp_path, caplog):
    """ConvNet (BatchNorm) with dropout and flip_crop on 2 ranks: the preflight passes (on rank
    0), it trains. SIGTERM in epoch 2: both ranks stop at the same step, last.pt is written,
    and the same command (trainer.resume=auto) ends where the run that was never stopped ends
    (every rank's RNG state resumes, mid-epoch). The 2-rank checkpoint continues on 1 process."""
    common = ["model=custom", "model._target_=dist_helpers.SignalledConvNet", "+model.dropout=0.2",
              "augmentation=flip_crop", "augmentation.hflip=0.0", "trainer.max_epochs=3"]
    whole = torchrun(*common, "checks=default", f"hydra.run.dir={tmp_path / 'whole'}",
                     cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert (tmp_path / "whole" / "checks.json").is_file()

    stopped = torchrun(*common, "+model.signal_at=50", f"hydra.run.dir={tmp_path / 'parts'}",
                       cwd=tmp_path)  # rank 0 gets SIGTERM in its 50th step (epoch 2)
    assert stopped.returncode != 0 and "nnrecipe: preempted" in stopped.stderr, stopped.stderr
    state = last(tmp_path / "parts")["fit_state"]
    assert state["epoch"] == 1 and state["step"] >= 50 and state["step_in_epoch"] > 0
    assert metrics(tmp_path / "parts")["status"] == "preempted"
    again = torchrun(*common, f"hydra.run.dir={tmp_path / 'parts'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = last(tmp_path / "whole"), last(tmp_path / "parts")
    assert a["fit_state"]["history"] == b["fit_state"]["history"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(b["rng_ranks"]) == 2 and not torch.equal(b["rng_ranks"][0]["torch"],
                                                        b["rng_ranks"][1]["torch"])

    _, solo = run_train(*common, "trainer.max_epochs=4", f"trainer.resume={tmp_path / 'parts'}",
                        run_dir=tmp_path / "solo")
    assert "written by 2 rank(s) and resumes on 1" in caplog.text
    assert [h["epoch"] for h in metrics(solo)["history"]] == [1, 2, 3, 4]


def test_a_preflight_fail_a_nan_or_a_mistake_on_one_rank_stop_both_ranks_with_one_message(
        tmp_path):
    preflight = torchrun("checks=default", "model=linear", "data.mean=[0.0]",
                         "data.std=[0.001]", f"hydra.run.dir={tmp_path / 'fail'}", cwd=tmp_path)
    assert preflight.returncode != 0
    assert len(errors(preflight.stderr)) == 1, preflight.stderr[-3000:]
    assert "data_batch" in preflight.stderr and "Traceback (most recent call last):\n  File \"" \
        not in preflight.stderr.split("nnrecipe: error:")[0][-2000:]
    assert not (tmp_path / "fail" / "checkpoints").exists()

    nan = torchrun("model=custom", "model._target_=dist_helpers.NaNOnRankOne",
                   "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'nan'}", cwd=tmp_path)
    assert nan.returncode != 0
    (line,) = errors(nan.stderr)
    assert "train/loss became nan" in line
    assert metrics(tmp_path / "nan")["status"] == "failed"

    one = torchrun("model=custom", "model._target_=dist_helpers.FailsOnRankOne",
                   f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode != 0
    (line,) = errors(one.stderr)  # rank 0 says what rank 1 found
    assert "weights file missing on rank 1's node" in line


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """sigterm_at_step(n): this process gets SIGTERM during its n-th optimizer step."""
    from nnrecipe import loop

    def _arm(n):
        step, calls = loop._optimizer_step, []

        def stepping(optimizer, scaler):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(optimizer, scaler)

        monkeypatch.setattr(loop, "_optimizer_step", stepping)
        return monkeypatch

    return _arm


def test_sigterm_mid_epoch_writes_last_pt_exits_75_and_resume_auto_finishes_the_same_run(
        run_cli, sigterm_at_step, tmp_path):
    from nnrecipe.runtime import PREEMPTED_EXIT

    common = ["model=mlp", "model.dropout=0.2", "trainer.max_epochs=3", "logger=wandb",
              "trainer.num_threads=1"]  # compared bit for bit: one thread count
    patch = sigterm_at_step(50)  # epoch 2 has 40 steps: the 10th of epoch 2
    code, err, run_dir = run_cli(*common, run_dir=tmp_path / "run")
    assert code == PREEMPTED_EXIT == 75, err
    assert "preempted" in err and metrics(run_dir)["status"] == "preempted"
    state = last(run_dir)["fit_state"]
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (50, 1, 10)
    patch.undo()

    code, err, _ = run_cli(*common, run_dir=run_dir)  # trainer.resume=auto: the same folder
    assert code == 0, err
    code, err, whole = run_cli(*common, run_dir=tmp_path / "whole")
    assert code == 0, err
    a, b = last(whole), last(run_dir)
    assert a["fit_state"]["history"] == b["fit_state"]["history"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    runs = sorted(run_dir.glob("wandb/offline-run-*"))  # two starts of one W&B run
    # offline-run-<date>_<time>-<id>, and -1 after it when both started in the same second
    ids = {re.match(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)", r.name).group(1) for r in runs}
    assert len(runs) == 2 and len(ids) == 1, [r.name for r in runs]


def test_submitit_local_with_two_tasks_is_one_two_rank_run(tmp_path):
    """The SLURM path as far as a machine without SLURM goes: Hydra's submitit launcher starts
    2 tasks; they join one process group from submitit's environment and write one trial."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         "model=linear", "trainer.max_epochs=1", *QUIET],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trial = tmp_path / "sweep" / "0"
    assert metrics(trial)["status"] == "finished" and (trial / ".hydra/config.yaml").is_file()
    log = (trial / "train.log").read_text()
    assert "2 processes (gloo)" in log
    assert log.count("epoch 1/1  train/loss") == 1  # rank 0 alone writes train.log


def test_run_folders_are_unique_and_a_requeued_slurm_job_finds_its_own(monkeypatch, tmp_path):
    """Issue 13 item 7: outputs/<date>/<time>-<suffix>, two starts in one second differ; a
    requeued SLURM job (same job id, SLURM_RESTART_COUNT > 0) gets the folder it made first."""
    import re

    from nnrecipe import distributed

    for name in (distributed.STAMP_ENV, "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    folders = []
    for _ in range(2):
        folders.append(distributed.run_folder("outputs"))
        monkeypatch.delenv(distributed.STAMP_ENV)  # another process
    assert all(re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-[a-z]{4}", f)
               for f in folders) and folders[0] != folders[1]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert distributed.run_folder("outputs").endswith("-j4242")
    first = Path("outputs/2020-01-01/23-59-59-j4242")  # made by the job's first start
    first.mkdir(parents=True)
    monkeypatch.delenv(distributed.STAMP_ENV)  # the requeued job starts later
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert distributed.run_folder("outputs") == str(first)


def test_ranks_share_each_global_batch_and_evaluation_covers_each_sample_once(monkeypatch):
    """What makes 2 ranks train as 1 process: with the same generator state, rank 0's and rank
    1's shares of each global batch are together the batch one process takes; in order, the
    ranks' parts of a split cover each sample exactly once. The global batch must divide."""
    from nnrecipe.data import TensorSplit, iterate_batches
    from nnrecipe.distributed import check_global_batch
    from nnrecipe.errors import UserError

    split = TensorSplit(torch.arange(37.0).view(37, 1, 1, 1), torch.arange(37))
    draw = lambda **kw: [y.tolist() for _, y in iterate_batches(  # noqa: E731
        split, 8, shuffle=True, generator=torch.Generator().manual_seed(3), **kw)]
    one, r0, r1 = draw(), draw(rank=0, world=2), draw(rank=1, world=2)
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one  # the tail of 5 splits 3 + 2
    assert draw(rank=1, world=2, skip=2) == r1[2:]  # resumed mid-epoch: the same batches
    parts = [y.tolist() for r in range(3) for _, y in iterate_batches(split, 4, rank=r, world=3)]
    assert sorted(sum(parts, [])) == list(range(37))

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="data.batch_size=33 .* data.batch_size=32"):
        check_global_batch(33)


def test_file_splits_shard_with_a_distributed_sampler_and_evaluate_each_file_once(tmp_path):
    """Files: shuffled, each rank reads batch_size/world of its DistributedSampler share, the
    shares disjoint and together the whole split (reseeded per epoch from the generator, so
    a resumed run redraws the same); in order, the ranks' ranges cover each file once."""
    from PIL import Image

    from nnrecipe.data import FileSplit, iterate_batches

    for i in range(10):
        Image.new("L", (2, 2), color=i).save(tmp_path / f"{i}.png")
    split = FileSplit(tmp_path, [f"{i}.png" for i in range(10)], list(range(10)), in_chans=1,
                      image_size=2)

    def labels(**kw):
        return [y.tolist() for _, y in iterate_batches(split, **kw)]

    shares = [labels(batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0),
                     rank=r, world=2) for r in (0, 1)]
    assert all(len(b) <= 2 for s in shares for b in s)  # 4 global = 2 per rank
    seen = [sum(s, []) for s in shares]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(10))
    again = labels(batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0),
                   rank=0, world=2)
    assert again == shares[0]
    parts = [sum(labels(batch_size=3, rank=r, world=2), []) for r in (0, 1)]
    assert parts[0] + parts[1] == list(range(10))
