"""nnrecipe: Karpathy's "A Recipe for Training Neural Networks" as a PyTorch template.

Where each step of the recipe lives:
  1. become one with the data   -> nnrecipe.audit, scripts/inspect_data.py
  2. skeleton + dumb baselines   -> nnrecipe.checks (the preflight), nnrecipe.models.Linear
  3. overfit                     -> nnrecipe.models, nnrecipe.loop
  4. regularize                  -> nnrecipe.augment, weight decay / dropout in conf/
  5. tune                        -> conf/hparams_search, scripts/compare_runs.py
  6. squeeze out the juice       -> nnrecipe.optim (schedules), longer training
"""
