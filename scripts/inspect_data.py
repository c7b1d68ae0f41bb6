"""Recipe step 1, become one with the data: audit a dataset, pictures and all.

    python scripts/inspect_data.py                          # the bundled digits
    python scripts/inspect_data.py data=image_folder data.root=/path/to/images
    python scripts/inspect_data.py checkpoint=outputs/2026-01-01/12-00-00   # + the model's view

Composes the same config as src/train.py (conf/inspect_data.yaml = conf/train.yaml + audit
settings), so data=, seed= and the splits are exactly those training uses. Writes report.md,
report.json and figures/ into the Hydra run folder, and a W&B run of job type `audit`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout

from nnrecipe.audit import run_audit  # noqa: E402
from nnrecipe.config import validate  # noqa: E402
from nnrecipe.errors import UserError, report_error  # noqa: E402

log = logging.getLogger("nnrecipe")


@hydra.main(config_path="../conf", config_name="inspect_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        validate(cfg, "inspect_data")  # wrong types and ranges: one message, before any work
        run_audit(cfg, Path(hc.runtime.output_dir), name=f"audit-{hc.runtime.choices['data']}")
    except UserError as e:
        report_error(e, log)
        sys.exit(1)


if __name__ == "__main__":
    main()
