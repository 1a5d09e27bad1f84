"""The model handed to the compile backend (``runtime.backends.Handoff``): the static backend
writes the same file as with a borrowed model, copies out only the weights the pruned graph
shares with the dense model (``own_weights``) and lets a safetensors mapping go; the build
report counts the file's parameters without loading it (``runtime.onnx_wire``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from tinymodels import TinyConfig, every_rule_plan, tiny_llama, torch_threads

from prunec.passes.pipeline import prune_graph
from prunec.passes.reference import shape_of
from prunec.runtime.backends import CompileJob, Handoff, graph_compile, own_weights, storages
from prunec.runtime.onnx_wire import initializer_headers
from prunec.runtime.report import onnx_counts

MAPS = Path("/proc/self/maps")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _compile(model: Any, path: Path, kv_cache: bool) -> Path:
    shape = shape_of(tiny_llama(0, TinyConfig(layers=3)))
    plan = every_rule_plan(shape)
    graph_compile(CompileJob(model, plan, shape, path, 18, None,  # type: ignore[arg-type]
                             kv_cache=kv_cache))
    return path


@pytest.mark.parametrize("kv_cache", [False, True], ids=["logits", "cache"])
def test_a_handed_off_model_compiles_to_the_same_file(tmp_path: Path, kv_cache: bool) -> None:
    borrowed = _compile(tiny_llama(4, TinyConfig(layers=3)), tmp_path / "a" / "m.onnx", kv_cache)
    owned = _compile(Handoff(tiny_llama(4, TinyConfig(layers=3))), tmp_path / "b" / "m.onnx",
                     kv_cache)
    assert borrowed.read_bytes() == owned.read_bytes()
    for name in ("m.kv.json",) if kv_cache else ():
        assert (borrowed.parent / name).read_text() == (owned.parent / name).read_text()


def test_a_handoff_is_taken_once() -> None:
    handoff = Handoff(tiny_llama(0))
    handoff.take()
    with pytest.raises(RuntimeError, match="already taken"):
        handoff.take()


def test_own_weights_copies_only_what_the_graph_shares_with_the_model() -> None:
    model = tiny_llama(6, TinyConfig(layers=3))  # tied embeddings
    shape = shape_of(model)
    plan, dense = every_rule_plan(shape), storages(model)
    plain, _ = prune_graph(model, plan, shape)
    owned, _ = prune_graph(model, plan, shape, release=lambda gm: own_weights(gm, dense))
    before = {k: v.untyped_storage().data_ptr() for k, v in plain.state_dict.items()}
    after = {k: v.untyped_storage().data_ptr() for k, v in owned.state_dict.items()}
    shared = {k for k, p in before.items() if p in dense}
    assert shared and len(shared) < len(before)  # the plan changed some weights, not all
    assert not set(after.values()) & dense
    assert [*owned.constants] == [*plain.constants]
    assert not {c.untyped_storage().data_ptr() for c in owned.constants.values()} & dense
    assert _same_tensor(owned.state_dict) == _same_tensor(plain.state_dict)  # tied stay one
    for name, value in owned.state_dict.items():
        torch.testing.assert_close(value, plain.state_dict[name], rtol=0, atol=0)


def _same_tensor(table: dict[str, Any]) -> set[frozenset[str]]:
    return {frozenset(k for k in table if table[k] is v) for v in table.values()}


def _mapped(path: Path) -> bool:
    return str(path) in MAPS.read_text()


@pytest.mark.skipif(not MAPS.exists(), reason="needs /proc/self/maps")
def test_the_static_backend_lets_the_safetensors_mapping_go(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    tiny_llama(2, TinyConfig(layers=3)).save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    if not _mapped(weights):
        pytest.skip("transformers copied the weights instead of mapping the file")
    alive = weakref.ref(model)
    handoff = Handoff(model)
    del model
    _compile(handoff, tmp_path / "out" / "m.onnx", kv_cache=True)
    gc.collect()  # the traced graphs hold cycles; when gc last ran depends on the test order
    assert alive() is None and not _mapped(weights)


def test_onnx_counts_reads_headers_only(tmp_path: Path) -> None:
    path = _compile(tiny_llama(1, TinyConfig(layers=3)), tmp_path / "m.onnx", kv_cache=False)
    proto = onnx.load(str(path))
    expected = [(t.data_type, tuple(t.dims)) for t in proto.graph.initializer]
    assert list(initializer_headers(path)) == expected and expected
    onnx.save_model(proto, str(tmp_path / "plain.onnx"))  # onnx's own writer, one record
    assert list(initializer_headers(tmp_path / "plain.onnx")) == expected
    floats = sum(int(torch.tensor(d).prod()) for t, d in expected if t == onnx.TensorProto.FLOAT)
    assert onnx_counts(path)[0] == floats


def test_packed_dims_are_read(tmp_path: Path) -> None:
    from prunec.runtime.onnx_wire import varint

    dims = varint(2) + varint(300)
    tensor = (b"\x0a" + varint(len(dims)) + dims + b"\x10\x01"  # dims packed, FLOAT
              + b"\x4a" + varint(4) + b"\0" * 4)  # raw_data, skipped
    graph = b"\x2a" + varint(len(tensor)) + tensor
    path = tmp_path / "packed.onnx"
    path.write_bytes(b"\x08\x08" + b"\x3a" + varint(len(graph)) + graph)  # ir_version, graph
    assert list(initializer_headers(path)) == [(1, (2, 300))]


def test_onnx_wire_doctests() -> None:
    import doctest

    from prunec.runtime import onnx_wire

    assert doctest.testmod(onnx_wire).failed == 0
