"""``prunec build --workers N``: the search on Ray actors writes the in-process plan lock.

One local Ray session serves the module (``distributed.connect``; the builds join it). The
first build of each spec compiles for real; the ``--workers 2`` builds copy its ONNX file
(``buildkit.copy_compile``): the plan is what is compared, and it must be the same.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.passes.methods import MethodOptions
from prunec.runtime.cli import main

ray = pytest.importorskip("ray")

STEPS = """  distribution = 30:60:10
  steps {
    mlp = 32
    heads = 1
  }
  reorder = on
  importance = wanda-sp
"""
SPEC = """name = "tiny-{method}"
model hf "{model}"
dataset calib text "{calib}" {{ samples = 4, seq_len = 32 }}
dataset heldout text "{held}" {{ samples = 2, seq_len = 32 }}
prune {method} {{
  target = 30%
{steps}  score = calib
  protect = [layers[0]]
}}
evaluate = [heldout]
export onnx "model.onnx"
"""


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    from prunec.passes.methods.distributed import connect

    started = connect(MethodOptions(workers=2))
    yield
    if started:
        ray.shutdown()


def _spec(tmp: Path, model: Path, method: str) -> Path:
    path = tmp / f"{method}.prune"
    steps = STEPS if method == "multipruner" else ""
    path.write_text(SPEC.format(method=method, model=model, calib=buildkit.KJV_CALIB,
                                held=buildkit.KJV_EVAL, steps=steps))
    return path


def _build(spec: Path, out: Path, *flags: str) -> bytes:
    assert main(["build", str(spec), "-o", str(out), "-q", *flags]) == 0
    return (out / "plan.lock.json").read_bytes()


@pytest.fixture(scope="module")
def in_process(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per method: its spec, the --workers 1 lock and the ONNX file of that build."""
    tmp = tmp_path_factory.mktemp("w1")
    out = {}
    for method in ("multipruner", "blockpruner"):
        spec = _spec(tmp, tiny_dir, method)
        lock = _build(spec, tmp / method, "--workers", "1")
        out[method] = (spec, lock, tmp / method / "model.onnx")
    return out


def _copy_backend(monkeypatch: pytest.MonkeyPatch, onnx: Path) -> None:
    from prunec.runtime import backends

    monkeypatch.setitem(backends.BACKENDS, "static", buildkit.copy_compile(onnx))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("method", ["multipruner", "blockpruner"])
def test_two_workers_write_the_in_process_lock(in_process: dict[str, Any], method: str,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec, lock, onnx = in_process[method]
    assert b'"decisions"' in lock and lock.count(b'"action"') >= 2  # a real search
    _copy_backend(monkeypatch, onnx)
    assert _build(spec, tmp_path / "w2", "--workers", "2") == lock


@pytest.mark.usefixtures("ray_session")
def test_a_worker_killed_mid_search_leaves_the_plan(in_process: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from prunec.passes.methods.distributed import RayEngine

    spec, lock, onnx = in_process["multipruner"]
    _copy_backend(monkeypatch, onnx)
    engines: list[RayEngine] = []
    original = RayEngine.score_all

    def kill_on_second_step(self: RayEngine, layers: Any) -> Any:
        engines.append(self)
        if len(engines) == 2:  # actor 0 dies before the step's batches reach it
            ray.kill(self.pool.actors[0], no_restart=True)
        return original(self, layers)

    monkeypatch.setattr(RayEngine, "score_all", kill_on_second_step)
    assert _build(spec, tmp_path / "killed", "--workers", "2") == lock
    assert len(engines) > 2 and engines[0].restarts == 1


def test_workers_without_ray_is_a_diagnostic(in_process: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    spec = in_process["blockpruner"][0]
    assert main(["build", str(spec), "-o", str(tmp_path / "none"), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "error[P0706]" in err and "prunec[distributed]" in err
    assert "Traceback" not in err and not (tmp_path / "none").exists()
