"""Bad input: one clear message saying what is wrong and how to fix it; nothing half-written."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnrecipe.checkpoint import load_checkpoint, save_checkpoint
from nnrecipe.data.splits import DataBundle, TensorSplit
from nnrecipe.errors import UserError
from nnrecipe.loop import Diverged

ROOT = Path(__file__).resolve().parents[1]


def bad_labels(seed=0, **_):
    """A data source whose labels reach num_classes: the classic off-by-one."""
    x = torch.rand(30, 1, 4, 4)
    split = TensorSplit(x, torch.arange(30) % 3 + 1)  # labels 1..3 for 3 classes
    return DataBundle(split, split, split, class_names=["a", "b", "c"], in_chans=1, image_size=4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=image_folder"], "data.root must be set"),
        (["data=image_folder", "data.root=/no/such/dir"], "does not exist"),
        (["model=timm", "model.name=resnet181"], "Did you mean: resnet18"),
        (["model=linear", "model.num_classes=5"], "outputs [2, 5]"),
        (["optimizer.lr=0"], "optimizer.lr must be positive"),
        (["optimizer.lr=-0.1"], "optimizer.lr must be positive"),
        (["data.batch_size=0"], "data.batch_size must be positive"),
        (
            ["data._target_=test_bad_input.bad_labels", "data.num_classes=3"],
            "labels lie outside [0, 3)",
        ),
        (["trainer.resume=/no/such/last.pt"], "does not exist"),
        (
            ["data=mnist", "data.download=false", "data.root=/tmp/nothing-here"],
            "copy the files into",
        ),
    ],
)
def test_bad_input_gets_one_clear_message(run_train, overrides, message):
    with pytest.raises(UserError) as e:
        run_train(*overrides)
    assert message in str(e.value)


def test_empty_image_folder(run_train, tmp_path):
    tmp_path = tmp_path / "images"
    tmp_path.mkdir()
    with pytest.raises(UserError, match="holds no class subfolders"):
        run_train("data=image_folder", f"data.root={tmp_path}")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no readable image files"):
        run_train("data=image_folder", f"data.root={tmp_path}")


def test_unreadable_checkpoint(run_train, tmp_path):
    garbage = tmp_path / "last.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        run_train(f"trainer.resume={garbage}")


def test_divergence_stops_with_a_message_and_keeps_checkpoints_whole(run_train, tmp_path):
    # epoch 1 trains and is saved; the step schedule then multiplies the lr by 1e9: NaN in epoch 2
    with pytest.raises(Diverged, match="Lower the learning rate") as e:
        run_train("optimizer=sgd", "optimizer.lr=0.01", "schedule=step", "schedule.step_epochs=1",
                  "schedule.gamma=1e9", "trainer.max_epochs=3", "trainer.checkpoint_every_s=0")
    assert "epoch 2" in str(e.value)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # no temp files
    assert load_checkpoint(ckpts / "last.pt")["fit_state"]["epoch"] == 1  # the sound epoch


def test_a_failed_save_leaves_no_half_written_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"model": {"w": torch.ones(3)}})

    def crash(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, {"model": {"w": torch.zeros(3)}})
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind
    assert torch.equal(torch.load(target)["model"]["w"], torch.ones(3))  # old one intact


def test_cli_prints_the_message_without_traceback_and_exits_nonzero(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "logger=none",
            "optimizer.lr=-1",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "nnrecipe: error: optimizer.lr must be positive" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_best_checkpoint_keeps_its_version_when_last_moves_on(tmp_path):
    from nnrecipe.checkpoint import copy_checkpoint, load_checkpoint

    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(1)}})
    copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(1)}})
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].item() == 1.0
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].item() == 0.0
