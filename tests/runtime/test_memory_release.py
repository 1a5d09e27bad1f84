"""Memory the build hands back: once ``runtime.export.export_onnx`` has written the file, no
weight of the exported program is alive (onnxruntime's evaluation session must not sit on top
of them), and the evaluation session keeps no prepacked copy of the weights."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from tinymodels import TinyConfig, every_rule_plan, tiny_llama, torch_threads

from prunec.compiler.ir import Provider
from prunec.passes.pipeline import prune_graph
from prunec.passes.reference import shape_of
from prunec.runtime.evaluate import onnx_logits
from prunec.runtime.export import ExportConfig, export_onnx
from prunec.runtime.session import artifact_runner, open_session


def _exported_weights(tmp_path: Path, fuse: bool) -> list[weakref.ref[object]]:
    """Export a pruned tiny model; weak references to every weight the export saw."""
    with torch_threads(1):
        model = tiny_llama(5, TinyConfig(layers=3))
        shape = shape_of(model)
        program, _ = prune_graph(model, every_rule_plan(shape), shape)
        refs = [weakref.ref(t) for t in [*model.parameters(), *program.state_dict.values()]]
        export_onnx(program, tmp_path / "m.onnx",
                    config=ExportConfig(fuse=fuse, check_onnxruntime=False))
    return refs


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
def test_no_weight_outlives_the_export(tmp_path: Path, fuse: bool) -> None:
    refs = _exported_weights(tmp_path, fuse)
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert refs and not alive, f"{len(alive)} of {len(refs)} weights still referenced"


def test_evaluation_sessions_do_not_prepack(tmp_path: Path) -> None:
    refs = _exported_weights(tmp_path, fuse=True)
    assert refs
    session, logits_fn, reset = artifact_runner(tmp_path / "m.onnx", (Provider.CPU,))
    assert _prepacking_disabled(session.session) and reset is None
    prepacked = open_session(tmp_path / "m.onnx").session
    assert not _prepacking_disabled(prepacked)
    batch = torch.randint(0, TinyConfig().vocab, (2, 12))  # same numbers either way
    torch.testing.assert_close(logits_fn(batch), onnx_logits(prepacked)(batch),
                               rtol=1e-5, atol=1e-5)


def _prepacking_disabled(session: object) -> bool:
    options = session.get_session_options()  # type: ignore[attr-defined]
    try:
        return bool(options.get_session_config_entry("session.disable_prepacking") == "1")
    except RuntimeError:  # not set
        return False
