"""Starting from weights (model.init_from, timm's pretrained_file), freezing the trunk, and the
regularizers that live in the model (spatial dropout, drop path)."""

from __future__ import annotations

import json

import pytest
import torch
from squeeze_helpers import train_run

from nnrecipe.errors import UserError
from nnrecipe.models import ConvNet, init_head_bias
from nnrecipe.models.init_from import HEAD_LOADED, init_from, set_trunk_frozen


def first_epoch_val_acc(run_dir) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["history"][0]["val/acc"]


def test_init_from_a_digits_run_starts_ahead_of_scratch(train_module, tmp_path, caplog):
    base = train_run(train_module, tmp_path / "base", "trainer.max_epochs=3", "optimizer.lr=3e-3")
    scratch = train_run(train_module, tmp_path / "scratch", "trainer.max_epochs=1", "seed=1")
    with caplog.at_level("INFO", logger="nnrecipe"):
        tuned = train_run(train_module, tmp_path / "tuned", "trainer.max_epochs=1", "seed=1",
                          f"model.init_from={base}")
    assert first_epoch_val_acc(tuned) > first_epoch_val_acc(scratch) + 0.05
    assert "loaded" in caplog.text and "model.init_from" in caplog.text


def test_a_head_of_another_class_count_is_remade_with_the_prior_bias(tmp_path):
    source = ConvNet(10, in_chans=1, widths=[8])
    torch.save({"model": source.state_dict()}, tmp_path / "ten.pt")
    target = ConvNet(4, in_chans=1, widths=[8])
    report = init_from(target, tmp_path / "ten.pt")
    assert report.skipped == ["head.weight", "head.bias"] == report.reinitialised
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 5 + [3] * 5)
    assert init_head_bias(target, labels, 4) and not getattr(target, HEAD_LOADED)
    assert target.head.bias.argmax().item() == 0  # the prior's most frequent class

    same = ConvNet(10, in_chans=1, widths=[8])
    init_from(same, tmp_path / "ten.pt")
    init_head_bias(same, torch.arange(10), 10)  # a loaded head keeps its learned bias
    assert torch.equal(same.head.bias, source.head.bias)


def test_init_from_that_fits_nothing_or_is_missing_says_so(tmp_path):
    torch.save({"other.weight": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no tensor of it fits"):
        init_from(ConvNet(10, in_chans=1), tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not exist"):
        init_from(ConvNet(10, in_chans=1), tmp_path / "nothing")


def test_a_frozen_trunk_does_not_move_while_the_head_learns():
    model = ConvNet(3, in_chans=1, widths=[4])
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    trunk_before = model.features[0].weight.clone()
    head_before = model.head.weight.clone()
    set_trunk_frozen(model, True)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 0])
                                      ).backward()
    opt.step()
    assert torch.equal(model.features[0].weight, trunk_before)
    assert not torch.equal(model.head.weight, head_before)
    set_trunk_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_spatial_dropout_drops_whole_channels_and_keeps_checkpoint_keys():
    plain, dropped = ConvNet(10, 1, widths=[16]), ConvNet(10, 1, widths=[16], spatial_dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.train()
    stage = dropped.features[:6]  # conv-bn-relu, conv-bn-(relu + Dropout2d)
    out = stage(torch.randn(2, 1, 8, 8))
    zero_channels = (out.flatten(2).abs().sum(-1) == 0).float().mean().item()
    assert 0.2 < zero_channels < 0.8   # about half the channels, each zero everywhere
    dropped.eval()
    assert (stage(torch.randn(2, 1, 8, 8)).flatten(2).abs().sum(-1) > 0).all()


def test_timm_drop_path_and_offline_pretrained_file(tmp_path):
    from timm.layers import DropPath

    from nnrecipe.models import timm_model

    deep = timm_model("test_resnet", num_classes=5, in_chans=1, drop_path_rate=0.2)
    assert any(isinstance(m, DropPath) and m.drop_prob > 0 for m in deep.modules())
    source = timm_model("test_resnet", num_classes=5, in_chans=1)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    loaded = timm_model("test_resnet", num_classes=5, in_chans=1,
                        pretrained_file=str(tmp_path / "weights.pth"))
    after = loaded.state_dict()
    differ = [k for k, v in source.state_dict().items() if not torch.equal(v, after[k])]
    assert differ == ["fc.weight", "fc.bias"]  # the trunk loaded; timm remade the head
    with pytest.raises(UserError, match="pretrained_file=.* does not exist"):
        timm_model("test_resnet", 5, 1, pretrained_file=str(tmp_path / "none.pth"))


def test_pretrained_weights_in_the_local_cache_are_read_without_the_network(tmp_path,
                                                                             monkeypatch):
    import huggingface_hub

    from nnrecipe.models import timm_model

    source = timm_model("test_resnet", num_classes=5, in_chans=1)
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")
    asked = []

    def cache(repo, filename, **kwargs):
        asked.append(repo)
        return str(tmp_path / filename) if filename == "pytorch_model.bin" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("asked the Hub for cached weights"))
    loaded = timm_model("test_resnet", num_classes=5, in_chans=1, pretrained=True)
    assert asked == ["timm/test_resnet.r160_in1k", "timm/test_resnet.r160_in1k"]
    assert torch.equal(loaded.conv1[0].weight, source.conv1[0].weight)
