"""Recipe step 5 offline: rank a sweep's trials, aggregate seeds, plot.

    python scripts/compare_runs.py outputs/multirun/2026-11-26_20-38-33
    python scripts/compare_runs.py <sweep dir> --top 3     # learning curves of the best 3

Prints the trials ranked by the sweep's objective with their swept values, mean ± std over seeds
for configurations that differ only by seed, and writes objective_vs_hparams.png and
learning_curves.png into the sweep folder. Reads only the trial folders (no W&B needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nnrecipe.errors import UserError  # noqa: E402
from nnrecipe.sweeps import compare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    parser.add_argument("--top", type=int, default=5, help="trials whose learning curves to plot")
    args = parser.parse_args(argv)
    try:
        print(compare(args.sweep_dir, top=args.top))
    except UserError as e:
        print(f"compare_runs: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
