"""End to end through src/train.py's train(): accuracy, reproducibility, resume, W&B records."""

import math
import os

import pytest
import torch
from conftest import wandb_inspect


def test_default_job_is_accurate_and_logged_to_wandb(run_train):
    best_val_loss, run_dir = run_train(logger="wandb")
    info = wandb_inspect(run_dir)
    summary, config = info["summary"], info["config"]
    assert summary["test/acc"] >= 0.97
    assert summary["best/val_loss"] == pytest.approx(best_val_loss)
    assert config["optimizer"]["lr"] == 3e-4 and config["model"]["num_classes"] == 10
    assert config["data"]["mean"] and config["seed"] == 0  # resolved values, not ${...}
    history = [
        r["history"]["item"]
        for r in wandb_inspect(run_dir, summary=False)
        if r.get("type") == "history"
    ]
    steps = [h for h in history if "train/loss" in h]
    epochs = [h for h in history if "val/loss" in h]
    assert len(epochs) == 15 and len(steps) == 15 * math.ceil(1257 / 32)
    assert all(h["train/lr"] == 3e-4 for h in steps)
    assert min(h["val/loss"] for h in epochs) == pytest.approx(best_val_loss)
    assert (run_dir / "checkpoints" / "best.pt").exists()


def weights(run_dir, name="last.pt"):
    return torch.load(run_dir / "checkpoints" / name, weights_only=False)["model"]


def test_same_seed_same_run_other_seed_other_run(run_train, tmp_path):
    runs = [
        run_train("trainer.max_epochs=2", f"seed={s}", run_dir=tmp_path / f"r{i}")
        for i, s in enumerate([0, 0, 1])
    ]
    (a, da), (b, db), (c, dc) = runs
    assert a == b and all(torch.equal(weights(da)[k], weights(db)[k]) for k in weights(da))
    assert a != c


SCHEDULES = {  # each set so that its shape changes across the resume at epoch 2
    "constant": ["schedule.warmup_epochs=2.5"],
    "cosine": ["schedule=cosine", "schedule.min_lr_ratio=0.1"],
    "step": ["schedule=step", "schedule.step_epochs=1", "schedule.gamma=0.5"],
    "warmup_cosine": ["schedule=warmup_cosine", "schedule.warmup_epochs=3"],
    "plateau": ["schedule=plateau", "schedule.patience=0", "schedule.threshold=0.5"],
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_resume_two_plus_two_equals_four_for_every_schedule(run_train, recorder, tmp_path,
                                                            caplog, name):
    """A 4-epoch run stopped after epoch 2 and resumed (same config) ends with the weights,
    history and lr of the run that was never stopped. The MLP has dropout: the RNG state is part
    of what resumes."""
    from conftest import Interrupted

    common = ["model=mlp", "model.dropout=0.2", "trainer.max_epochs=4",
              "trainer.checkpoint_every_s=0", *SCHEDULES[name],
              "trainer.num_threads=1"]  # the runs compared bit for bit: one thread count
    whole = recorder()
    four, d4 = run_train(*common, run_dir=tmp_path / "four")
    recorder(stop_after_epoch=2)
    with pytest.raises(Interrupted):
        run_train(*common, run_dir=tmp_path / "two")
    second = recorder()
    resumed, dr = run_train(*common, f"trainer.resume={tmp_path / 'two'}",
                            run_dir=tmp_path / "resumed")
    assert resumed == four
    assert "differs from the checkpoint" not in caplog.text  # same config: no warning
    assert "shaped for" not in caplog.text
    w4, wr = weights(d4), weights(dr)
    assert all(torch.equal(w4[k], wr[k]) for k in w4)
    h4, hr = (torch.load(d / "checkpoints/last.pt", weights_only=False)["fit_state"]["history"]
              for d in (d4, dr))
    assert h4 == hr
    lrs = whole.series("train/lr")
    assert second.series("train/lr") == lrs[len(lrs) // 2:]  # epochs 3-4: the same lr per step
    assert len(set(lrs)) > 1 or name == "constant"  # the schedule moved across the resume


def test_a_cosine_resumed_with_more_epochs_keeps_its_shape_and_says_so(run_train, recorder,
                                                                       tmp_path, caplog):
    """2 epochs of cosine resumed to 4: the lr stays at min_lr (0) instead of jumping back to
    half the base lr, so epochs 3-4 leave the weights as they were, and the log says so."""
    _, d2 = run_train("model=mlp", "schedule=cosine", "trainer.max_epochs=2",
                      run_dir=tmp_path / "two")
    later = recorder()
    _, dr = run_train("model=mlp", "schedule=cosine", "trainer.max_epochs=4",
                      f"trainer.resume={d2}", run_dir=tmp_path / "resumed")
    assert set(later.series("train/lr")) == {0.0}
    w2, wr = weights(d2), weights(dr)
    assert all(torch.equal(w2[k], wr[k]) for k in w2)
    assert "shaped for 2 epochs" in caplog.text and "from epoch 3 to 4" in caplog.text


@pytest.fixture
def first_augmented_batch(train_module, monkeypatch):
    """{"in": (x, y), "out": (x, target)} of the first training batch the augmentation changed."""
    seen = {}
    build = train_module.build_augmentation

    def recording(cfg, data):
        augment = build(cfg, data)
        if augment is None:
            return None

        def apply(x, y):
            before = (x.clone(), y.clone())
            out = augment(x, y)
            seen.setdefault("in", before)
            seen.setdefault("out", out)
            return out
        return apply

    monkeypatch.setattr(train_module, "build_augmentation", recording)
    return seen


def last_state(run_dir):
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=False)


# What each option changes in training, read from what the run logged (lr per step, 40 steps
# an epoch), the optimizer state in last.pt, or the first batch the augmentation returned.
def _adam(lrs, state, batch):
    assert set(lrs) == {3e-4} and "exp_avg" in next(iter(state["optimizer"]["state"].values()))


def _adamw(lrs, state, batch):  # torch's AdamW: decoupled weight decay at the YAML's 0.05
    group = state["optimizer"]["param_groups"][0]
    assert set(lrs) == {1e-3} and group["weight_decay"] == 0.05
    assert group["decoupled_weight_decay"] is True


def _sgd(lrs, state, batch):  # momentum buffers exist only when SGD with momentum stepped
    group = state["optimizer"]["param_groups"][0]
    assert set(lrs) == {0.05} and group["momentum"] == 0.9 and group["nesterov"]
    assert all("momentum_buffer" in s for s in state["optimizer"]["state"].values())


def _cosine(lrs, state, batch):
    assert lrs[0] == 3e-4 and lrs[-1] < 0.01 * 3e-4 and lrs == sorted(lrs, reverse=True)


def _step(lrs, state, batch):  # step_epochs=1, gamma 0.1
    assert set(lrs[:40]) == {3e-4} and lrs[40:] == pytest.approx([3e-5] * 40)


def _warmup_cosine(lrs, state, batch):  # 2 epochs up linearly, then down
    assert lrs[:80] == pytest.approx([3e-4 * (i + 1) / 80 for i in range(80)])
    assert lrs[80:] == sorted(lrs[80:], reverse=True) and lrs[-1] < lrs[80]


def _plateau(lrs, state, batch):  # threshold 0.99: no epoch after the first counts as progress
    assert set(lrs[:80]) == {3e-4} and lrs[80:] == pytest.approx([3e-5] * 40)


def _changed_images_same_labels(lrs, state, batch):
    (x, y), (x_out, y_out) = batch["in"], batch["out"]
    assert x_out.shape == x.shape and torch.equal(y_out, y)
    assert (x_out - x).flatten(1).abs().amax(1).gt(1e-3).float().mean() > 0.5  # most images


def _mixup(lrs, state, batch):  # soft targets: two classes mixed per image, rows sum to 1
    (x, y), (x_out, target) = batch["in"], batch["out"]
    assert target.shape == (len(y), 10) and torch.allclose(target.sum(1), torch.ones(len(y)))
    assert (target > 0.2).sum(1).float().mean() > 1.2 and not torch.equal(x_out, x)


OPTIONS = {  # option -> (overrides that make its effect show within the epochs, epochs, proof)
    "optimizer=adam": ([], 1, _adam),
    "optimizer=adamw": ([], 1, _adamw),
    "optimizer=sgd": ([], 1, _sgd),
    "schedule=cosine": ([], 1, _cosine),
    "schedule=step": (["schedule.step_epochs=1"], 2, _step),
    "schedule=warmup_cosine": ([], 3, _warmup_cosine),
    "schedule=plateau": (["schedule.patience=0", "schedule.threshold=0.99"], 3, _plateau),
    "augmentation=flip_crop": (["augmentation.hflip=0", "augmentation.padding=1"], 3,
                               _changed_images_same_labels),
    "augmentation=randaugment": ([], 3, _changed_images_same_labels),
    "augmentation=mixup": ([], 3, _mixup),
}


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_changes_training_as_it_says_and_the_loss_falls(
        run_train, recorder, first_augmented_batch, option):
    """The option reaches fit() and does what its name says (lr trace, optimizer state or the
    augmented batch); the loss still falls from the prior's entropy (~ln 10) within its epochs."""
    extra, epochs, proof = OPTIONS[option]
    tracker = recorder()
    best_val_loss, run_dir = run_train(option, *extra, f"trainer.max_epochs={epochs}")
    lrs = tracker.series("train/lr")
    assert len(lrs) == 40 * epochs  # 1257 training images in batches of 32
    proof(lrs, last_state(run_dir), first_augmented_batch)
    assert best_val_loss < 0.75 * math.log(10)


@pytest.fixture
def forward_dtypes(train_module, monkeypatch):
    """The dtypes of the model's outputs in every training forward pass of the next run."""
    seen = set()
    build = train_module.build_model

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda m, i, out: seen.add(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(train_module, "build_model", recording)
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_computes_in_half_precision_and_trains(run_train, forward_dtypes,
                                                                precision):
    best_val_loss, _ = run_train(f"trainer.precision={precision}", "trainer.max_epochs=1",
                                 "trainer.grad_clip_norm=1.0", "model=mlp")
    assert forward_dtypes == {{"bf16": torch.bfloat16, "fp16": torch.float16}[precision]}
    assert best_val_loss < 0.75 * math.log(10)


def test_a_timm_resnet_trains_on_digits(run_train):
    """timm's test_resnet: resnet18's code path (timm wrapper, one input channel, the head found
    by get_classifier) at a test size; resnet18 itself cost 15-45 s of the suite here."""
    best_val_loss, _ = run_train("model=timm", "model.name=test_resnet", "optimizer.lr=3e-3",
                                 "trainer.max_epochs=1")
    assert best_val_loss < 0.5 * math.log(10)


def test_early_stopping_stops(run_train):
    _, run_dir = run_train(
        "trainer.max_epochs=50",
        "trainer.early_stopping.patience=1",
        "trainer.early_stopping.min_delta=10",
    )  # no epoch counts as progress: stops after one epoch without it
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["fit_state"]
    assert state["epoch"] == 2
    # min_delta is for stopping only: best.pt is still the lowest val/loss
    losses = [h["val/loss"] for h in state["history"]]
    assert losses[1] < losses[0] and state["best_epoch"] == 2


def test_best_checkpoint_holds_the_best_epoch_though_written_later(tmp_path):
    from nnrecipe.checkpoint import Checkpointer

    saver = Checkpointer(tmp_path, every_s=3600)  # nothing is due before the final epoch
    w = torch.zeros(2)
    for epoch, improved in enumerate([True, True, False, False], start=1):
        w.add_(1)  # training goes on changing the weights in place
        state = {"model": {"w": w}, "epoch": epoch}
        saver.epoch_end(lambda s=state: s, improved, final=epoch == 4)
        assert (tmp_path / "last.pt").exists() == (epoch == 4)
    last, best = (torch.load(tmp_path / f"{n}.pt") for n in ("last", "best"))
    assert last["epoch"] == 4 and torch.equal(last["model"]["w"], torch.full((2,), 4.0))
    assert best["epoch"] == 2 and torch.equal(best["model"]["w"], torch.full((2,), 2.0))


def test_resume_names_the_config_keys_that_changed():
    from nnrecipe.checkpoint import config_changes

    saved = {"optimizer": {"lr": 3e-4}, "data": {"batch_size": 32},
             "trainer": {"max_epochs": 2, "resume": None}}
    now = {"optimizer": {"lr": 1e-3}, "data": {"batch_size": 32},
           "trainer": {"max_epochs": 4, "resume": "last.pt"}, "seed": 1}
    assert config_changes(saved, now) == ["optimizer.lr", "seed"]  # max_epochs/resume may change


def test_training_threads_use_the_idle_cores_only(monkeypatch, caplog):
    from nnrecipe import runtime

    monkeypatch.setattr(runtime, "cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for busy, threads, each_of_two in [(0.1, 8, 4), (3.0, 5, 2), (7.9, 1, 1), (12.0, 1, 1)]:
        monkeypatch.setattr(runtime, "busy_cores", lambda b=busy: b)
        assert runtime.auto_threads()[0] == threads
        assert runtime.auto_threads(sharing=2)[0] == each_of_two  # e.g. two local ranks
    with caplog.at_level("INFO", logger="nnrecipe"):
        assert runtime.set_threads(None) == torch.get_num_threads() == 1
        assert "other processes keep 12.0 cores busy" in caplog.text  # the log says why
        assert runtime.set_threads(4) == 4  # the user's choice is kept, whatever the load
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.auto_threads() == (3, "OMP_NUM_THREADS")  # the environment's choice is kept
    assert len(runtime._cpu_times()) == len(os.sched_getaffinity(0))  # one entry per own CPU
    torch.set_num_threads(1)


def test_patience_zero_stops_at_the_first_epoch_without_progress_not_after_an_improving_one(
        run_train):
    _, run_dir = run_train("model=linear", "trainer.max_epochs=3",
                           "trainer.early_stopping.patience=0")
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["fit_state"]
    assert state["epoch"] == 3 and state["best_epoch"] == 3  # every epoch improved


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_schedule():
    from nnrecipe.loop import _optimizer_step

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    for x, stepped in [(float("inf"), False), (1.0, True)]:  # inf: inf gradients, skipped
        optimizer.zero_grad()
        scaler.scale(model(torch.full((1, 2), x)).sum()).backward()
        assert _optimizer_step(optimizer, scaler) is stepped  # the loop steps the lr if True


def test_nan_weights_after_a_finite_loss_stop_the_run_before_last_pt(run_train, monkeypatch):
    """The last step of epoch 1 leaves NaN weights (its loss was finite): Diverged, and no
    last.pt holding NaN weights."""
    from nnrecipe import loop
    from nnrecipe.loop import Diverged

    step, calls = loop._optimizer_step, []

    def poisoning(optimizer, scaler):
        done = step(optimizer, scaler)
        calls.append(1)
        if len(calls) == 40:  # digits: 40 steps an epoch
            for group in optimizer.param_groups:
                group["params"][0].data.fill_(float("nan"))
        return done

    monkeypatch.setattr(loop, "_optimizer_step", poisoning)
    with pytest.raises(Diverged, match="weights became NaN"):
        run_train("model=linear", "trainer.max_epochs=2", "trainer.checkpoint_every_s=0")


def test_tf32_is_a_key_and_each_epoch_is_one_line_in_the_log(run_train, caplog):
    with caplog.at_level("INFO", logger="nnrecipe"):
        run_train("model=linear", "trainer.max_epochs=2", "trainer.tf32=false")
    assert torch.get_float32_matmul_precision() == "highest"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and "epoch 2/2  train/loss" in lines[1] and "val/acc" in lines[1]
    torch.set_float32_matmul_precision("high")
