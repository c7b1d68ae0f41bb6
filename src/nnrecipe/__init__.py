"""nnrecipe: Karpathy's "A Recipe for Training Neural Networks" as a PyTorch template.

Where each step of the recipe lives:
  1. become one with the data   -> nnrecipe.audit, scripts/inspect_data.py
  2. skeleton + dumb baselines   -> nnrecipe.checks (the preflight), nnrecipe.models.Linear
  3. overfit                     -> nnrecipe.models, nnrecipe.loop
  4. regularize                  -> nnrecipe.augment, weight decay / dropout in conf/
  5. tune                        -> conf/hparams_search, scripts/compare_runs.py
  6. squeeze out the juice       -> nnrecipe.optim (schedules), longer training
"""


def _run_folder(base: str = "outputs") -> str:
    from nnrecipe.distributed import run_folder  # torch: only when a run folder is made

    return run_folder(base)


def _rank0_only(value):
    from nnrecipe.distributed import rank0_only

    return rank0_only(value)


def register_resolvers() -> None:
    """${run_folder:outputs} (conf/train.yaml's hydra.run.dir) and ${rank0_only:.hydra}
    (hydra.output_subdir, so that only rank 0 writes .hydra/). Registered on import when
    OmegaConf is loaded already (an entry point imports hydra before nnrecipe), so that every
    entry point composing train.yaml resolves it; light scripts do not pay for OmegaConf."""
    from omegaconf import OmegaConf

    for name, resolver in (("run_folder", _run_folder), ("rank0_only", _rank0_only)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


if "omegaconf" in __import__("sys").modules:
    register_resolvers()
