"""Shared test helpers: compose the real config and run the real entry point, offline."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's package first (worktrees too)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# data=image_folder caches its index there: never in the user's ~/.cache during tests
if "NNRECIPE_CACHE_DIR" not in os.environ:
    os.environ["NNRECIPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="nnrecipe-cache-")
    atexit.register(shutil.rmtree, os.environ["NNRECIPE_CACHE_DIR"], ignore_errors=True)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one torch thread per worker, or the
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers' threads wait on each other's cores


def load_train_module():
    spec = importlib.util.spec_from_file_location("nnrecipe_train_entry", ROOT / "src" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_module():
    return load_train_module()


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the DictConfig src/train.py would get (logger off, quiet).

    The preflight is off unless a test asks for it (`checks=default`): its tests are
    test_checks_*.py, and 2-3 s per training run would double the suite's time.
    """
    from hydra import compose, initialize_config_dir

    def _compose(*overrides, logger="none"):
        quiet = [f"logger={logger}", "trainer.progress=false"]
        if not any(o.startswith("checks=") for o in overrides):
            quiet.append("checks=off")
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return compose("train", overrides=[*quiet, *overrides])

    return _compose


@pytest.fixture
def run_train(train_module, compose_cfg, tmp_path):
    """run_train(*overrides) -> (best val loss, run dir): one in-process training run."""

    def _run(*overrides, logger="none", run_dir=None):
        cfg = compose_cfg(*overrides, logger=logger)
        run_dir = Path(run_dir or tmp_path / "run")
        run_dir.mkdir(parents=True, exist_ok=True)
        return train_module.train(cfg, run_dir), run_dir

    return _run


@pytest.fixture
def run_cli(train_module, tmp_path, capsys):
    """run_cli(*overrides) -> (exit code, stderr, run dir): src/train.py's main() as the command
    line runs it (Hydra's config, the same error handling), in this process: a subprocess would
    spend ~5 s importing. Logger and preflight off unless asked, as compose_cfg does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _run(*overrides, run_dir=None):
        quiet = ["logger=none", "trainer.progress=false"]
        if not any(o.startswith("checks=") for o in overrides):
            quiet.append("checks=off")
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*quiet, *overrides], return_hydra_config=True)
        run_dir = Path(run_dir or tmp_path / "cli-run")
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]  # as Hydra's run_job hands it to the task
        capsys.readouterr()
        try:
            train_module.main(cfg)
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            HydraConfig.instance().cfg = None
        return code, capsys.readouterr().err, run_dir

    return _run


class Interrupted(Exception):
    """Raised by a RecordingTracker to stop a run as a preemption would."""


@pytest.fixture
def recorder(train_module, monkeypatch):
    """recorder(stop_after_epoch=None) -> the Tracker the next train() calls log into: it keeps
    every logged dict (`.logs`: (step, metrics)), and with stop_after_epoch=N raises Interrupted
    once epoch N is checkpointed (at epoch N+1's metrics; use trainer.checkpoint_every_s=0)."""
    from nnrecipe.tracking import Tracker

    class RecordingTracker(Tracker):
        def __init__(self, stop_after_epoch=None):
            self.logs, self.stop = [], stop_after_epoch

        def log(self, metrics, step=None):
            if self.stop is not None and metrics.get("epoch") == self.stop + 1:
                raise Interrupted(f"stopped after epoch {self.stop}")
            self.logs.append((step, dict(metrics)))

        def series(self, key):
            return [m[key] for _, m in self.logs if key in m]

    def _make(stop_after_epoch=None):
        tracker = RecordingTracker(stop_after_epoch)
        monkeypatch.setattr(train_module, "start_tracking", lambda *a, **k: tracker)
        return tracker

    return _make


def wandb_inspect(run_dir: Path, summary: bool = True):
    """Read an offline W&B run back with W&B's own CLI (`wandb leet inspect`)."""
    import json
    import subprocess

    (run,) = Path(run_dir).glob("wandb/offline-run-*")
    wandb_cli = Path(sys.executable).with_name("wandb")
    args = [
        str(wandb_cli),
        "leet",
        "inspect",
        "--json",
        *(["--summary"] if summary else []),
        str(run),
    ]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line]
