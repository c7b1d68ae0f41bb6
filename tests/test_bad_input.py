"""The catalog of bad input: one clear message naming the key or file and how to fix it, exit 1,
no traceback, nothing lost. And the odd-but-valid input that must train.

Grow the catalog: one line per case. A case whose fix lies in another slice's files is kept here
marked xfail(strict=True, reason="<owner> slice: ...") until that fix lands.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnrecipe.checkpoint import load_checkpoint, save_checkpoint
from nnrecipe.data.splits import DataBundle, TensorSplit
from nnrecipe.errors import UserError
from nnrecipe.loop import Diverged

ROOT = Path(__file__).resolve().parents[1]


# --- files the cases are made of ---------------------------------------------------------------


def write_images(folder: Path, n: int, mode: str = "RGB", size: int = 12, ext: str = "png",
                 brightness: int = 60, names=None) -> None:
    """n small images of one class (brightness tells classes apart), in PIL mode `mode`."""
    rng = np.random.default_rng(brightness + n)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(brightness + rng.normal(0, 25, (size, size, 3)), 0, 255).astype("uint8")
        image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":  # 16-bit grayscale, as scanners and microscopes write
            image = Image.fromarray(np.asarray(image).astype("<u2") * 257)
        name = names[i] if names else f"{i}.{ext}"
        image.save(folder / name)


def image_folder(tmp: Path) -> dict:
    write_images(tmp / "images" / "dark", 8, brightness=50)
    write_images(tmp / "images" / "light", 8, brightness=200)
    return {"images": tmp / "images"}


def empty_root(tmp: Path) -> dict:
    (tmp / "empty").mkdir()
    return {"images": tmp / "empty"}


def no_image_files(tmp: Path) -> dict:
    (tmp / "notes" / "cat").mkdir(parents=True)
    (tmp / "notes" / "cat" / "notes.txt").write_text("hi")
    return {"images": tmp / "notes"}


def one_class(tmp: Path) -> dict:
    write_images(tmp / "one" / "cat", 12)
    return {"images": tmp / "one"}


def garbage_checkpoint(tmp: Path) -> dict:
    (tmp / "last.pt").write_bytes(b"\x00not a checkpoint")
    return {"file": tmp / "last.pt"}


def bad_labels(seed=0, **_):
    """A data source whose labels reach num_classes: the classic off-by-one."""
    x = torch.rand(30, 1, 4, 4)
    split = TensorSplit(x, torch.arange(30) % 3 + 1)  # labels 1..3 for 3 classes
    return DataBundle(split, split, split, class_names=["a", "b", "c"], in_chans=1, image_size=4)


class TinyNet(torch.nn.Module):
    def __init__(self, num_classes: int, in_chans: int, depth: int = 1):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.head(x)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, train_module):
    """A finished run (model=linear, 1 epoch): what resume cases start from and must not lose."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["logger=none", "checks=off", "trainer.progress=false",
                                "model=linear", "trainer.max_epochs=1"])
    run_dir = tmp_path_factory.mktemp("trained")
    train_module.train(cfg, run_dir)
    return run_dir


def fingerprint(*folders: Path) -> dict:
    """Every file under the folders and a hash of its bytes: what "nothing lost" compares."""
    return {p: hashlib.sha1(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the catalog -------------------------------------------------------------------------------


def bad(case_id, *overrides, says, make=None, owner=None, why=""):
    """One case: the overrides ({images}, {file}, {run}: made by `make` / the trained run),
    the fragment the one error line must hold, and the slice that owns a fix not landed yet."""
    marks = [pytest.mark.xfail(strict=True, reason=f"{owner} slice: {why}")] if owner else []
    return pytest.param(list(overrides), says, make, id=case_id, marks=marks)


CATALOG = [
    # values of the wrong type or out of range: nnrecipe.config.validate, before any work
    bad("lr-text", "optimizer.lr=abc", says="optimizer.lr=abc must be a number"),
    bad("lr-negative", "optimizer.lr=-0.1", says="optimizer.lr=-0.1 must be > 0"),
    bad("lr-zero", "optimizer.lr=0", says="optimizer.lr=0 must be > 0"),
    bad("lr-null", "optimizer.lr=null", says="optimizer.lr=null must be a number"),
    bad("epochs-zero", "trainer.max_epochs=0", says="trainer.max_epochs=0 must be >= 1"),
    bad("epochs-negative", "trainer.max_epochs=-1", says="trainer.max_epochs=-1 must be >= 1"),
    bad("epochs-float", "trainer.max_epochs=2.5", says="max_epochs=2.5 must be an integer"),
    bad("batch-zero", "data.batch_size=0", says="data.batch_size=0 must be >= 1"),
    bad("eval-batch-zero", "trainer.eval_batch_size=0", says="eval_batch_size=0 must be >= 1"),
    bad("val-fraction-above-1", "data.val_fraction=1.5", says="data.val_fraction=1.5 must be in"),
    bad("test-fraction-negative", "data.test_fraction=-0.1", says="test_fraction=-0.1 must be"),
    bad("fractions-sum-to-1", "data.val_fraction=0.5", "data.test_fraction=0.5",
        says="leaves no training data"),
    bad("precision", "trainer.precision=fp8", says="trainer.precision=fp8 must be fp32, bf16"),
    bad("head-bias", "init.head_bias=zeros", says="init.head_bias=zeros must be prior or zero"),
    bad("threads-zero", "trainer.num_threads=0", says="trainer.num_threads=0 must be >= 1"),
    bad("compile-yes", "trainer.compile=yes", says="trainer.compile=yes must be true or false"),
    bad("dropout-above-1", "model.dropout=1.5", says="model.dropout=1.5 must be in [0, 1)"),
    bad("seed-text", "seed=abc", says="seed=abc must be an integer"),
    bad("misspelt-key", "+trainer.max_epoch=3", says="did you mean trainer.max_epochs?"),
    bad("argument-the-optimizer-lacks", "+optimizer.momentum=0.9",
        says="torch.optim.Adam takes no argument 'momentum'"),
    bad("sgd-momentum-above-1", "optimizer=sgd", "optimizer.momentum=1.2",
        says="optimizer.momentum=1.2 must be in [0, 1)"),
    bad("cosine-floor-above-1", "schedule=cosine", "schedule.min_lr_ratio=2",
        says="schedule.min_lr_ratio=2 must be in [0, 1]"),
    bad("unknown-schedule", "schedule.name=linear", says="schedule.name=linear: use one of"),
    bad("clip-negative", "trainer.grad_clip_norm=-1", says="grad_clip_norm=-1 must be > 0"),
    bad("patience-negative", "trainer.early_stopping.patience=-1", says="patience=-1 must be"),
    bad("std-zero", "data.mean=[0.5]", "data.std=[0]", says="data.std=[0] must be > 0"),
    bad("mixup-prob", "augmentation=mixup", "augmentation.prob=2", says="prob=2 must be in"),
    bad("user-model-argument-type", "model=custom", "model._target_=test_bad_input.TinyNet",
        "+model.depth=abc", says="model.depth=abc must be an integer"),
    bad("objective", "objective=val/los", says="use one of val/loss, val/acc"),
    bad("resume-with-a-bad-value", "trainer.resume={run}", "optimizer.lr=abc",
        says="optimizer.lr=abc must be a number"),
    # data
    bad("no-data-root", "data=image_folder", says="data.root must be set"),
    bad("data-root-missing", "data=image_folder", "data.root={tmp}/no/such/dir",
        says="does not exist"),
    bad("data-root-without-classes", "data=image_folder", "data.root={images}",
        make=empty_root, says="holds no class subfolders"),
    bad("class-folders-without-images", "data=image_folder", "data.root={images}",
        make=no_image_files, says="no readable image files"),
    bad("labels-off-by-one", "data._target_=test_bad_input.bad_labels", "data.num_classes=3",
        says="labels lie outside [0, 3)"),
    bad("num-classes-wrong", "data.num_classes=5", says="data.num_classes=5 but the data has 10"),
    bad("offline-torchvision-set", "data=mnist", "data.download=false",
        "data.root={tmp}/nothing-here", says="copy the files into"),
    bad("cache-unknown", "data=image_folder", "data.root={images}", "data.cache=disk",
        make=image_folder, says="data.cache=disk must be index, memory or none"),
    bad("misspelt-folder-key", "data=image_folder", "data.root={images}", "+data.imagesize=8",
        make=image_folder, says="did you mean data.image_size?"),
    bad("hf-path-missing", "data=hf", "data.path={tmp}/no-such-set", says="does not exist"),
    bad("hf-path-unset", "data=hf", says="data.path must be set"),
    bad("webdataset-no-shards", "data=webdataset", "data.shards={tmp}", says="no .tar shards"),
    bad("workers-text", "data=image_folder", "data.root={tmp}", "data.num_workers=abc",
        says="data.num_workers=abc must be an integer"),
    bad("single-class", "data=image_folder", "data.root={images}", "model=linear",
        "trainer.max_epochs=1", make=one_class, says="only one class was found"),
    # models
    bad("timm-name-misspelt", "model=timm", "model.name=resnet181", says="Did you mean: resnet18"),
    bad("head-too-small", "model=linear", "model.num_classes=5", says="outputs [2, 5]"),
    bad("custom-model-not-importable", "model=custom", "model._target_=nopkg.Net",
        says="could not build model"),
    bad("init-from-missing", "model.init_from={tmp}/no/such/run", says="does not exist"),
    bad("init-from-another-model", "model.init_from={run}", says="another architecture"),
    bad("spatial-dropout-above-1", "model.spatial_dropout=1.5",
        says="model.spatial_dropout=1.5 must be in [0, 1)"),
    bad("freeze-negative", "model.freeze_epochs=-1", says="model.freeze_epochs=-1 must be >= 0"),
    bad("pretrained-file-missing", "model=timm", "model.name=test_resnet",
        "model.pretrained_file={tmp}/none.pth", says="pretrained_file="),
    # checkpoints
    bad("resume-missing", "trainer.resume={tmp}/no/such/last.pt", says="does not exist"),
    bad("resume-garbage", "trainer.resume={file}", make=garbage_checkpoint, says="unreadable"),
    bad("resume-another-model", "trainer.resume={run}", says="model=linear"),
    bad("sync-batchnorm-not-a-bool", "trainer.sync_batchnorm=yes",
        says="trainer.sync_batchnorm=yes must be true or false or null"),
    # checks
    bad("unknown-check-skipped", "checks=default", "checks.skip=[leakagee]",
        says="unknown checks ['leakagee']"),
    # tasks and tables
    bad("task-and-data-disagree", "data=diabetes", "task=classification",
        says="holds values targets but task=classification learns classes: use task=regression"),
    bad("objective-of-another-task", "data=diabetes", "objective=val/acc",
        says="not a metric of task regression: use one of val/loss, val/mae"),
    bad("regression-loss-unknown", "data=diabetes", "task.loss=mae",
        says="task.loss=mae must be mse, huber or l1"),
    bad("multilabel-threshold", "data=digits_multilabel", "task.threshold=1.5",
        says="task.threshold=1.5 must be in (0, 1)"),
    bad("mixup-on-regression", "data=diabetes", "augmentation=mixup",
        says="augmentation=mixup (mixup/cutmix) mixes class labels"),
    bad("table-without-path", "data=tabular", "data.target=y", says="data.path must be set"),
    bad("table-missing", "data=tabular", "data.path={tmp}/no.csv", "data.target=y",
        says="no such file"),
]


@pytest.mark.parametrize(("overrides", "says", "make"), CATALOG)
def test_bad_input(run_cli, tmp_path, trained_run, overrides, says, make):
    places = {"tmp": tmp_path, "run": trained_run, **(make(tmp_path) if make else {})}
    overrides = [o.format(**places) for o in overrides]
    before = fingerprint(tmp_path, trained_run)
    code, err, run_dir = run_cli(*overrides, run_dir=tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("nnrecipe: error:")]
    assert code == 1 and len(errors) == 1, err
    assert says in errors[0]
    assert "Traceback" not in err
    assert fingerprint(tmp_path, trained_run) == before | fingerprint(tmp_path / "out")
    assert not (run_dir / "checkpoints").exists()  # failed before training: nothing written


# --- a value the user set is honoured or rejected, never dropped -------------------------------


HONOURED = [
    pytest.param("data.std=[0.5]", "data.std", [0.5], id="std-without-mean"),
    pytest.param("data.in_chans=3", "data.in_chans", 3, id="digits-in-chans"),
    pytest.param("+data.batchsize=16", "data.batchsize", None, id="misspelt-data-key"),
    pytest.param("data.image_size=16", "data.image_size", 16, id="digits-image-size"),
]


@pytest.mark.parametrize(("override", "key", "value"), HONOURED)  # value None: reject it
def test_a_value_the_user_set_is_honoured_or_rejected(compose_cfg, train_module, tmp_path,
                                                      override, key, value):
    from omegaconf import OmegaConf

    cfg = compose_cfg(override, "model=linear", "trainer.max_epochs=1")
    try:
        train_module.train(cfg, tmp_path)
    except UserError as e:
        assert key in str(e)  # rejected, naming the key
        return
    assert value is not None, f"{key} cannot be honoured: it must be rejected"
    assert OmegaConf.select(cfg, key) == value  # honoured: the run used it (and logged it)


def test_head_bias_zero_zeroes_the_bias_and_prior_sets_the_log_prior(compose_cfg):
    from nnrecipe.data import build_data, iterate_batches
    from nnrecipe.models import build_model, init_head_bias
    from nnrecipe.models.build import class_prior, classifier_head

    cfg = compose_cfg("model=linear")
    data = build_data(cfg.data, seed=0)
    x, _ = next(iterate_batches(data.train, 2))
    model = build_model(cfg.model, x, 10)
    assert init_head_bias(model, data.train.labels, 10, "prior")
    prior = class_prior(data.train.labels, 10).log()
    assert torch.allclose(classifier_head(model).bias, prior)
    assert init_head_bias(model, data.train.labels, 10, "zero")
    assert torch.equal(classifier_head(model).bias, torch.zeros(10))


# --- odd but valid: must train -----------------------------------------------------------------


def unusual_modes(tmp: Path) -> dict:
    """Palette, grey+alpha, RGBA, 16-bit grey, 1-bit, CMYK JPEG and plain grey in one folder."""
    for label, brightness in (("dark", 50), ("light", 200)):
        for mode, ext in (("P", "png"), ("LA", "png"), ("RGBA", "png"), ("I;16", "png"),
                          ("1", "png"), ("CMYK", "jpg"), ("L", "jpg")):
            write_images(tmp / "modes" / label, 1, mode, brightness=brightness,
                         names=[f"{mode.replace(';', '')}.{ext}"])
    return {"images": tmp / "modes"}


def non_ascii_names(tmp: Path) -> dict:
    write_images(tmp / "ñames" / "chat été", 6, brightness=50,
                 names=[f"ß{i}.png" for i in range(6)])
    write_images(tmp / "ñames" / "狗", 6, brightness=200, names=[f"图{i}.PNG" for i in range(6)])
    return {"images": tmp / "ñames"}


def empty_class_folder(tmp: Path) -> dict:
    image_folder(tmp)
    (tmp / "images" / "unlabelled-yet").mkdir()
    return {"images": tmp / "images"}


def tiny(tmp: Path) -> dict:
    """Three images per class: one for each split."""
    write_images(tmp / "tiny" / "a", 3, brightness=50)
    write_images(tmp / "tiny" / "b", 3, brightness=200)
    return {"images": tmp / "tiny"}


def junk_beside_images(tmp: Path) -> dict:
    """What copied folders hold: macOS ._ files, .DS_Store, a text file, upper-case suffixes,
    hidden folders (Jupyter's checkpoints, a viewer's thumbnails): no class, no sample."""
    image_folder(tmp)
    write_images(tmp / "images" / ".ipynb_checkpoints", 2, brightness=120)
    for cls in ("dark", "light"):
        write_images(tmp / "images" / cls / ".thumbnails", 2, brightness=120)
        (tmp / "images" / cls / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (tmp / "images" / cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (tmp / "images" / cls / "README.txt").write_text("labels by hand")
        write_images(tmp / "images" / cls, 1, ext="JPEG", names=["upper.JPEG"])
    return {"images": tmp / "images"}


@pytest.mark.parametrize("make", [unusual_modes, non_ascii_names, empty_class_folder, tiny,
                                  junk_beside_images], ids=lambda f: f.__name__)
@pytest.mark.parametrize("in_chans", [3, 1], ids=["rgb", "grey"])
def test_odd_but_valid_input_trains(run_cli, tmp_path, make, in_chans):
    if in_chans == 1 and make is not unusual_modes:
        pytest.skip("channels matter for the image modes only")
    places = make(tmp_path)
    code, err, run_dir = run_cli("data=image_folder", f"data.root='{places['images']}'",
                                 f"data.in_chans={in_chans}", "data.image_size=8",
                                 "data.batch_size=4", "data.num_workers=0", "model=linear",
                                 "trainer.max_epochs=1", run_dir=tmp_path / "out")
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and len(metrics["history"]) == 1


# --- failures during training and saving: nothing half-written ---------------------------------


def test_divergence_stops_with_a_message_and_keeps_checkpoints_whole(run_train, tmp_path):
    # epoch 1 trains and is saved; the step schedule then multiplies the lr by 1e9: NaN in epoch 2
    with pytest.raises(Diverged, match="Lower the learning rate") as e:
        run_train("model=linear", "optimizer=sgd", "optimizer.lr=0.01", "schedule=step",
                  "schedule.step_epochs=1", "schedule.gamma=1e9", "trainer.max_epochs=3",
                  "trainer.checkpoint_every_s=0")
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


def test_the_command_line_prints_one_message_without_traceback_and_exits_1(tmp_path):
    """The real command, once: the catalog above runs main() in-process."""
    result = subprocess.run(
        [sys.executable, "src/train.py", "logger=none", "optimizer.lr=abc",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "nnrecipe: error: invalid config: optimizer.lr=abc must be a number" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_best_checkpoint_keeps_its_version_when_last_moves_on(tmp_path):
    from nnrecipe.checkpoint import copy_checkpoint

    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(1)}})
    copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(1)}})
    assert load_checkpoint(tmp_path / "best.pt")["model"]["w"].item() == 1.0
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].item() == 0.0
