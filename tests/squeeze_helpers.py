"""Short digits runs shared by the squeeze tests (ensembles, eval, init_from)."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=["logger=none", "trainer.progress=false",
                                                 "checks=off", *overrides])


def train_run(train_module, run_dir: Path, *overrides) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    train_module.train(compose("trainer.checkpoint_every_s=0", *overrides), run_dir)
    return run_dir


def seed_overrides(seed: int) -> list[str]:
    """Another training seed on the same split: data.split_seed fixes the split where the data
    config has it; before it did, the seed drew the split too, so members vary by their dropout
    draws and lr instead (same samples in val and test either way)."""
    if "split_seed" in (ROOT / "conf" / "data" / "digits.yaml").read_text():
        return [f"seed={seed}", "data.split_seed=0"]
    return ["seed=0", f"model.dropout={0.1 * seed:.1f}", f"optimizer.lr={3e-3 * (1 + seed)}"]
