"""The gated ONNX export (prunec.runtime.gated) against the eager Probe Pruning.

Batch after batch with H evolving (different batch sizes and sequence lengths), the
onnxruntime session must keep the same indices (debug outputs ``kept.*``), give the same
logits (``relative_error`` <= 1e-4: max abs diff over max abs eager logit) and carry the same
H (abs 1e-6 + rel 1e-5) as ``ProbeRunner``. On a plain tiny GQA model and on one pruned by a
static plan first (removed blocks, narrower layers), and once on SmolLM2 (slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from tinymodels import TinyConfig, random_plan, tiny_llama

from prunec.passes.probe import ProbeRunner, calibrate_history
from prunec.passes.reference import apply_plan_, relative_error, shape_of
from prunec.runtime.gated import GatedSession, check_static_gating, export_gated_onnx

TOL = 1e-4
BATCHES = ((4, 24), (2, 10), (5, 40), (1, 7))


def _artifact(tmp: Path, model, policy, calib, max_len=40, debug=True):  # type: ignore[no-untyped-def]
    shape = shape_of(model)
    hist = calibrate_history(model, shape, policy, calib, max_len=max_len)
    info = export_gated_onnx(model, shape, policy, hist, tmp / "gated.onnx", debug=debug)
    return info, ProbeRunner(model, shape, policy, hist)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    model = tiny_llama(2, TinyConfig(layers=3))
    return _artifact(tmp_path_factory.mktemp("plain"), model, make_policy(0.4), calib_ids)


@pytest.fixture(scope="module")
def composed(tmp_path_factory, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    model = tiny_llama(6, TinyConfig(layers=4))
    shape = shape_of(model)
    apply_plan_(model, random_plan(shape, seed=8, p_remove=0.3), shape)
    return _artifact(tmp_path_factory.mktemp("composed"), model, make_policy(0.5), calib_ids)


def _compare(info, runner, batches, vocab=160):  # type: ignore[no-untyped-def]
    session = GatedSession(Path(info.onnx_path).parent)
    for i, (b, t) in enumerate(batches):
        ids = torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(i))
        want = runner.run(ids)
        got = session.run(ids.numpy())
        assert relative_error(torch.from_numpy(got), want) <= TOL
        for name, kept in zip(runner.gated.history_names, runner.last_kept):
            onnx_kept = session.kept.get(name.replace("history.", "kept.", 1))
            if onnx_kept is not None:
                assert sorted(onnx_kept.tolist()) == sorted(kept.tolist()), (i, name)
        for (name, h), eager in zip(session.history().items(), runner.state):
            assert np.allclose(h, eager.numpy(), rtol=1e-5, atol=1e-6), (i, name)
    return session


@pytest.fixture(scope="module")
def compensated(tmp_path_factory, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    model = tiny_llama(4, TinyConfig(layers=3))
    return _artifact(tmp_path_factory.mktemp("compensated"), model,
                     make_policy(0.4, compensate=True), calib_ids)


@pytest.mark.parametrize("which", ["plain", "composed", "compensated"])
def test_onnx_matches_eager_batch_after_batch(which, request):  # type: ignore[no-untyped-def]
    info, runner = request.getfixturevalue(which)
    assert info.history_inputs and len(info.kept_outputs) == len(info.history_inputs)
    _compare(info, runner, BATCHES)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def test_graph_is_statically_gated(plain):  # type: ignore[no-untyped-def]
    info, _ = plain
    assert check_static_gating(info.onnx_path) == []
    model = onnx.load(info.onnx_path)
    consts = _constants(model)
    constant_k = sorted(int(consts[n.input[1]].reshape(-1)[0]) for n in model.graph.node
                        if n.op_type == "TopK" and n.input[1] in consts)
    for keep in info.keep.values():
        assert keep in constant_k
    assert [i.name for i in model.graph.input] == ["input_ids", *info.history_inputs]
    assert [o.name for o in model.graph.output] == ["logits", *info.history_outputs,
                                                     *info.kept_outputs]
    def dims_of(value):  # type: ignore[no-untyped-def]
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims_of(model.graph.input[0]) == ["batch", "seq"]
    assert dims_of(model.graph.output[0]) == ["batch", "seq", 160]
    dims = model.graph.input[1].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [6 * 16, 40]  # history.1.attn: [heads*d, max_len]


def test_session_reset_and_limits(plain):  # type: ignore[no-untyped-def]
    info, _ = plain
    session = GatedSession(info.onnx_path, providers=["CPUExecutionProvider"])
    assert session.provider == "CPUExecutionProvider"
    before = session.history()
    session.run(np.zeros((2, 8), dtype=np.int64))
    assert any(not np.array_equal(before[k], v) for k, v in session.history().items())
    session.reset()
    assert all(np.array_equal(before[k], v) for k, v in session.history().items())
    with pytest.raises(ValueError, match="sequence length"):
        session.run(np.zeros((1, 41), dtype=np.int64))


@pytest.mark.slow
def test_smollm2_gated_onnx_matches_eager(tmp_path, make_policy, smollm2):  # type: ignore[no-untyped-def]
    """All 30 layers of SmolLM2 at the example spec's 40%: 27 gated layers, KJV text."""
    loaded, text = smollm2, smollm2.text

    policy = make_policy(0.4, skip=(0, 1, 2), round_to=64)
    info, runner = _artifact(tmp_path, loaded.model, policy, text("kjv-calib.txt", 8, 64),
                             max_len=64)
    # layer ratio round(30/27 * 0.4, 2) = 0.44: 9 - int(3.96) = 6 heads, 64 * 13 = 832 channels
    want = {"attn": 6, "mlp": 832}
    assert info.keep == {f"history.{i}.{k}": n for i in range(3, 30) for k, n in want.items()}
    held = text("kjv-eval.txt", 9, 64)
    batches = [held[:4], held[4:6], held[6:9, :17], held[:2, :40]]
    session = GatedSession(Path(info.onnx_path).parent)
    for i, ids in enumerate(batches):
        want_logits = runner.run(ids)
        got = session.run(ids.numpy())
        assert relative_error(torch.from_numpy(got), want_logits) <= TOL, i
        for name, kept in zip(runner.gated.history_names, runner.last_kept):
            onnx_kept = session.kept[name.replace("history.", "kept.", 1)]
            assert sorted(onnx_kept.tolist()) == sorted(kept.tolist()), (i, name)
        for (name, h), eager in zip(session.history().items(), runner.state):
            assert np.allclose(h, eager.numpy(), rtol=1e-5, atol=1e-6), (i, name)


def test_prunec_run_command(plain, tmp_path, capsys):  # type: ignore[no-untyped-def]
    import argparse

    from prunec.runtime.commands.run import register

    info, _ = plain
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    data = tmp_path / "ids.npy"
    np.save(data, np.random.default_rng(0).integers(0, 160, (6, 12)))
    args = parser.parse_args(["run", str(Path(info.onnx_path).parent), "--data", str(data),
                              "--batch", "4"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "on 6 sequences x 12 tokens" in out
    assert "provider CPUExecutionProvider; H carried across 2 batches" in out


def test_history_updated_in_place_matches_copying(plain):  # type: ignore[no-untyped-def]
    """Every H of the exported graph is proven safe to update in place, the session keeps
    the same buffers from call to call, and the results equal a session that copies."""
    info, _ = plain
    assert info.history_inplace == info.history_inputs
    manifest = json.loads(Path(info.manifest_path).read_text())
    assert manifest["history_inplace"] == list(info.history_inputs)
    assert manifest["onnx_path"] == "gated.onnx"  # names only: artifacts are moved
    inplace, copying = GatedSession(info.onnx_path), GatedSession(info.onnx_path, inplace=False)
    assert inplace.inplace == set(info.history_inputs) and not copying.inplace
    pointers = [v.data_ptr() for v in inplace.state]
    for i, (b, t) in enumerate(BATCHES):
        ids = np.random.default_rng(i).integers(0, 160, (b, t))
        assert np.array_equal(inplace.run(ids), copying.run(ids))
        assert inplace.kept.keys() == copying.kept.keys()
        for k in inplace.kept:
            assert np.array_equal(inplace.kept[k], copying.kept[k])
        got, want = inplace.history(), copying.history()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert [v.data_ptr() for v in inplace.state] == pointers
    assert [v.data_ptr() for v in copying.state] != pointers


def _scatter_graph(extra_reader_after: bool, h_is_output: bool) -> onnx.ModelProto:
    """H [4, 3] -> Gather(rows) -> Mul 2 -> ScatterND back into H; optionally a reader of H
    that depends on the ScatterND's output (so it may run after the write), and H also
    exposed as a graph output."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Gather", ["h", "rows"], ["g"]),
             helper.make_node("Mul", ["g", "two"], ["upd"]),
             helper.make_node("Unsqueeze", ["rows", "one"], ["idx"]),
             helper.make_node("ScatterND", ["h", "idx", "upd"], ["h_out"])]
    outputs = [helper.make_tensor_value_info("h_out", f, [4, 3])]
    if extra_reader_after:
        nodes += [helper.make_node("Add", ["h_out", "h"], ["late"])]
        outputs.append(helper.make_tensor_value_info("late", f, [4, 3]))
    if h_is_output:
        nodes.append(helper.make_node("Identity", ["h"], ["h_copy"]))
        outputs.append(helper.make_tensor_value_info("h", f, [4, 3]))
    inits = [numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "rows"),
             numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h", f, [4, 3])],
                              outputs, inits)
    return helper.make_model(graph)


@pytest.mark.parametrize("late,exposed,safe", [(False, False, True), (True, False, False),
                                               (False, True, False)])
def test_inplace_proof(late, exposed, safe):  # type: ignore[no-untyped-def]
    from prunec.runtime.gated import inplace_histories

    model = _scatter_graph(late, exposed)
    assert inplace_histories(model, {"h": "h_out"}) == (("h",) if safe else ())
    assert inplace_histories(model, {"h": "missing"}) == ()

