"""How long the audit takes on 50,000 synthetic 32x32 RGB images (target: under 2 minutes).

    python scripts/bench_audit.py [num_samples]

Prints the seconds of each stage and the total; the near-duplicate search is the stage that a
pure-Python all-pairs loop would make quadratic.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nnrecipe.audit import run_audit  # noqa: E402


def main(num_samples: int = 50_000) -> float:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("inspect_data", overrides=[
            "logger=none", "data=synthetic", f"data.num_samples={num_samples}",
            "data.shape=[3,32,32]"])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        findings = run_audit(cfg, Path(out))
        seconds = time.perf_counter() - start
    for stage, s in findings["timings"].items():
        print(f"  {stage:<22} {s:6.1f} s")
    print(f"audit of {num_samples:,} synthetic 32x32 images: {seconds:.1f} s "
          f"(target: 120 s)")
    return seconds


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
