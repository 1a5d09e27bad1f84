"""runtime.session: provider choice and the providers a session really uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunec.compiler.ir import Provider
from prunec.runtime.session import CPU, available_providers, choose_providers, open_session

CUDA = "CUDAExecutionProvider"


def lookup_model(path: Path, vocab: int = 7) -> Path:
    """input_ids int64 [batch, seq] -> logits = table[input_ids] (float [batch, seq, vocab])."""
    table = numpy_helper.from_array(np.eye(vocab, dtype=np.float32) * 2.0, "table")
    node = helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)
    graph = helper.make_graph(
        [node], "lookup",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("requested, available, chosen, n_notes", [
    ((CUDA, CPU), (CUDA, CPU), (CUDA, CPU), 0),
    ((CUDA, CPU), (CPU,), (CPU,), 1),
    ((CUDA,), ("AzureExecutionProvider", CPU), (CPU,), 1),
    ((CPU, CUDA), (CUDA, CPU), (CPU, CUDA), 0),
    ((), (CPU,), (CPU,), 0),
])
def test_choose_providers(requested: tuple[str, ...], available: tuple[str, ...],
                          chosen: tuple[str, ...], n_notes: int) -> None:
    got, notes = choose_providers(requested, available)
    assert got == chosen and len(notes) == n_notes


def test_session_reports_what_it_uses(tmp_path: Path) -> None:
    path = lookup_model(tmp_path / "m.onnx")
    s = open_session(path, (Provider.CUDA, Provider.CPU))
    assert s.requested == (CUDA, CPU)
    assert s.used[-1] == CPU
    if CUDA not in available_providers():
        assert s.used == (CPU,) and any(CUDA in n for n in s.notes)
    out = s.session.run(["logits"], {"input_ids": np.array([[1, 2]], dtype=np.int64)})[0]
    assert out.shape == (1, 2, 7) and out[0, 1, 2] == 2.0
