"""Every option of every config group composes, and the composed values reach the objects."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nnrecipe import config
from nnrecipe.config import validate
from nnrecipe.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["data", "task", "model", "optimizer", "schedule", "augmentation", "logger", "trainer"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(compose_cfg, group, option):
    overrides = [f"{group}={option}"]
    if option == "image_folder":
        overrides.append("data.root=/some/images")
    if option in ("hf", "webdataset"):  # their mandatory keys
        overrides.append("data.path=/some/set" if option == "hf" else "data.shards=/some/tars")
    if option == "custom":
        overrides.append("model._target_=mypkg.MyNet")
    if option == "tabular":
        overrides += ["data.path=table.csv", "data.target=y"]
    cfg = compose_cfg(*overrides, logger="wandb" if group != "logger" else option)
    validate(cfg)  # every shipped option passes validation: no false alarm
    resolved = OmegaConf.to_container(cfg, resolve=True)[group]  # interpolations resolve
    own = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml"))
    for key, value in own.items():  # the option's own values reach the composed config
        if (
            key not in ("defaults", "progress")
            and value != "???"
            and not str(value).startswith("${")
        ):
            assert resolved[key] == value, key


def test_defaults_are_the_recipes(compose_cfg):
    cfg = compose_cfg()
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 3e-4
    assert cfg.optimizer.weight_decay == 0
    assert cfg.schedule.name == "constant" and cfg.schedule.warmup_epochs == 0
    assert cfg.augmentation.name == "none"
    assert cfg.data._target_.endswith("digits") and cfg.model._target_.endswith("ConvNet")
    assert isinstance(cfg.seed, int) and cfg.trainer.compile is False


@pytest.mark.parametrize("option", ["convnet", "linear", "mlp"])
def test_model_receives_classes_and_channels_from_data(compose_cfg, option):
    from nnrecipe.data import build_data, iterate_batches
    from nnrecipe.models import build_model

    cfg = compose_cfg(
        f"model={option}",
        "data=synthetic",
        "data.shape=[2,12,12]",
        "data.num_classes=7",
        "data.num_samples=210",
    )
    data = build_data(cfg.data, seed=0)
    x, _ = next(iterate_batches(data.train, 4))
    model = build_model(cfg.model, x, data.num_classes)
    assert model(x).shape == (4, 7)
    assert cfg.model.in_chans == 2 and cfg.model.num_classes == 7


def test_user_model_plugs_in_by_target(compose_cfg):
    """A user's own class: model._target_=pkg.Class with num_classes, in_chans and its kwargs."""
    from nnrecipe.data import build_data, iterate_batches
    from nnrecipe.models import build_model

    cfg = compose_cfg("model=custom", "model._target_=test_config.TinyUserModel", "+model.hidden=5")
    data = build_data(cfg.data, seed=0)
    x, _ = next(iterate_batches(data.train, 3))
    model = build_model(cfg.model, x, data.num_classes)
    assert isinstance(model, TinyUserModel) and model.hidden == 5
    assert model(x).shape == (3, 10)


class TinyUserModel(torch.nn.Module):
    def __init__(self, num_classes: int, in_chans: int, hidden: int = 3):
        super().__init__()
        self.hidden = hidden
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.LazyLinear(hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)


def test_validation_takes_types_from_the_yaml_so_new_keys_need_no_schema(tmp_path, monkeypatch):
    """A key another slice adds to a YAML is checked at once: its default's type is the rule."""
    import shutil

    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    with (conf / "trainer" / "default.yaml").open("a") as f:
        f.write("new_knob: 4\nnew_switch: true\nnew_budget_s: 15\n")
    monkeypatch.setattr(config, "CONF", conf)
    monkeypatch.setattr(config, "_reference", config._reference.__wrapped__)
    monkeypatch.setattr(config, "_options", config._options.__wrapped__)

    def check(*overrides):
        with initialize_config_dir(str(conf), version_base="1.3"):
            validate(compose("train", overrides=list(overrides)))

    check("trainer.new_knob=7", "trainer.new_switch=false", "trainer.new_budget_s=7.5")
    with pytest.raises(UserError, match=r"trainer.new_knob=abc must be an integer"):
        check("trainer.new_knob=abc")
    with pytest.raises(UserError, match=r"trainer.new_switch=1 must be true or false"):
        check("trainer.new_switch=1")


def test_every_problem_is_named_in_one_message(compose_cfg):
    with pytest.raises(UserError) as e:
        validate(compose_cfg("optimizer.lr=abc", "trainer.max_epochs=0", "+trainer.max_epoch=3"))
    message = str(e.value)
    for part in ("optimizer.lr=abc must be a number", "trainer.max_epochs=0 must be >= 1",
                 "did you mean trainer.max_epochs?"):
        assert part in message


def test_extra_keys_of_a_user_class_are_checked_against_its_signature(compose_cfg):
    target = ["model=custom", "model._target_=test_config.TinyUserModel"]
    validate(compose_cfg(*target, "+model.hidden=5"))
    with pytest.raises(UserError, match="takes no argument 'hiden'.*did you mean model.hidden"):
        validate(compose_cfg(*target, "+model.hiden=5"))
    validate(compose_cfg("model=timm", "+model.drop_rate=0.1"))  # **kwargs: passed on
