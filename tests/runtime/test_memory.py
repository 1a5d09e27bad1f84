"""Memory: per-stage peak RSS (``runtime.stages``) and the streamed ONNX save
(``runtime.export.save_embedded``), which must write the very ModelProto ``ir.save`` does."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
import torch
from tinymodels import TinyConfig, every_rule_plan, tiny_llama, torch_threads

from prunec.passes.pipeline import prune_graph
from prunec.passes.reference import shape_of
from prunec.runtime import stages
from prunec.runtime.export import (
    ExportConfig,
    fuse_for_onnxruntime,
    save_embedded,
    to_onnx_program,
)
from prunec.runtime.onnx_wire import varint


def test_varint_matches_protobuf() -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    for n in (0, 1, 127, 128, 300, 2**31, 434206800):
        assert varint(n) == _VarintBytes(n)


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
def test_streamed_save_is_the_same_model_as_ir_save(tmp_path: Path, fuse: bool) -> None:
    with torch_threads(1):
        model = tiny_llama(3, TinyConfig(layers=3))
        shape = shape_of(model)
        program, _ = prune_graph(model, every_rule_plan(shape), shape)
        onnx_program = to_onnx_program(program, ExportConfig())
        if fuse:
            fuse_for_onnxruntime(onnx_program.model)
    ir.save(onnx_program.model, tmp_path / "plain.onnx")
    save_embedded(onnx_program.model, tmp_path / "streamed.onnx")
    plain, streamed = (onnx.load(str(tmp_path / f)) for f in ("plain.onnx", "streamed.onnx"))
    assert len(streamed.graph.initializer) == len(plain.graph.initializer) > 0
    for proto in (plain, streamed):  # the one difference: the order of value_info
        infos = sorted(proto.graph.value_info, key=lambda v: v.name)
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(infos)
    assert streamed == plain
    sizes = [(tmp_path / f).stat().st_size for f in ("plain.onnx", "streamed.onnx")]
    assert 0 < sizes[1] - sizes[0] <= 8 * len(plain.graph.initializer)  # each record's framing
    if not fuse:  # (the checker knows no onnxruntime kernel)
        onnx.checker.check_model(str(tmp_path / "streamed.onnx"))


def _touch(mb: int) -> bytearray:
    block = bytearray(mb * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # resident, not just reserved
    return block


@pytest.mark.skipif(not stages.reset_peak(), reason="no /proc/self/clear_refs peak reset here")
def test_each_stage_records_its_own_peak() -> None:
    timer = stages.Stages()
    assert timer.method == "vmhwm"
    with timer.stage("big"):
        block = _touch(300)
        del block
    with timer.stage("small"):
        small = _touch(10)
        del small
    assert timer.peak_mb["big"] >= timer.peak_mb["small"] + 250
    memory = timer.memory_json()
    assert memory["method"] == "vmhwm" and set(memory["stages_peak_rss_mb"]) == {"big", "small"}
    assert memory["peak_rss_mb"] == max(memory["stages_peak_rss_mb"].values())


def test_without_the_reset_every_stage_records_the_process_peak(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setattr(stages, "CLEAR_REFS", tmp_path / "absent" / "clear_refs")
    timer = stages.Stages()
    assert timer.method == "ru_maxrss"
    with timer.stage("one"):
        pass
    assert timer.peak_mb["one"] == pytest.approx(stages.max_rss_mb(), rel=0.05)
    assert torch.cuda.is_available() or "cuda_peak_mb" not in timer.memory_json()
