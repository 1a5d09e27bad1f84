"""The memory goal on the demo model (slow): ``prunec build specs/smollm2-magnitude.prune``
(a static plan) peaks at most 2.5x SmolLM2's float32 weight bytes, in every stage.

The build runs in a child process (a fresh interpreter: the test process's own imports and
models do not count); its ``report.json`` gives the peak RSS of each stage
(``runtime.stages``). The weight bytes are the demo's safetensors tensors (tied embeddings
once), as ``bench/large_model.py --smollm2`` counts them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOAL = 2.5


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="goal not met yet: the build peaks at 2.74x in the "
                   "compile stage (bench/results/memory_smollm2.json); remove when it holds")
def test_static_smollm2_build_peaks_within_the_goal(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from large_model import smollm2_weight_bytes

    prunec = Path(sys.executable).parent / "prunec"
    spec = ROOT / "specs" / "smollm2-magnitude.prune"
    done = subprocess.run([str(prunec), "build", str(spec), "-o", str(tmp_path / "a"), "-q"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    memory = json.loads((tmp_path / "a" / "report.json").read_text())["memory"]
    weights_mib = smollm2_weight_bytes() / 2**20
    ratios = {k: v / weights_mib for k, v in memory["stages_peak_rss_mb"].items()}
    assert max(ratios.values()) <= GOAL, ratios
