"""Devices: ``model { device }`` / ``--device`` resolution, its diagnostics, report.json's
device, dtype and per-stage memory, and artifacts that do not depend on the build device.

The CUDA tests run where torch finds a GPU (they are skipped here, with the reason, on a
CPU-only machine): calibration statistics, probe histories, least-squares refits and
search scores on CUDA agree with the CPU's, and a CUDA build of a locked plan writes the
CPU build's ONNX file byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import buildkit
import pytest
import torch

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import (
    Device,
    DeviceKind,
    DType,
    Scope,
    StaticMethod,
    StaticPrune,
    Target,
)
from prunec.runtime.build import BuildOptions, build
from prunec.runtime.cli import main
from prunec.runtime.device import resolve

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA device here: the CUDA paths run on "
                               "a GPU machine (python -m pytest tests/runtime/test_device.py)")
no_gpu = pytest.mark.skipif(GPU, reason="checks the behaviour without a GPU")


AUTO = Device()


def _decl(tiny_dir: Path, device: Device = AUTO, dtype: DType = DType.FLOAT32) -> Any:
    spec = buildkit.make_spec(tiny_dir)
    return dataclasses.replace(spec.model, device=device, dtype=dtype)


@no_gpu
def test_auto_is_the_cpu_without_a_gpu_and_half_dtypes_load_float32(tiny_dir: Path) -> None:
    assert resolve(_decl(tiny_dir)).device == "cpu"
    placed = resolve(_decl(tiny_dir, dtype=DType.BFLOAT16))
    assert (placed.device, placed.dtype) == ("cpu", DType.FLOAT32)
    assert "bfloat16 needs a CUDA device" in placed.notes[0]


@no_gpu
def test_spec_device_cuda_without_a_gpu_is_p0408_on_its_line(tiny_dir: Path) -> None:
    span = dataclasses.replace(buildkit.span(3), col=12)
    with pytest.raises(CompileError) as exc:
        resolve(_decl(tiny_dir, Device(DeviceKind.CUDA, None, span)))
    (diag,) = exc.value.diagnostics
    assert (diag.code, diag.span) == ("P0408", span)
    assert "device cuda is not available: torch finds no CUDA device" in diag.message


SPEC = """\
name = "tiny"
model hf "model" {
  device = DEVICE
}
dataset heldout text "eval.txt" { samples = 2, seq_len = 16 }
plan { remove layers[1].attn }
evaluate = [heldout]
"""


@no_gpu
@pytest.mark.parametrize("device,flag", [("cuda", ()), ('"cuda:1"', ()),
                                         ("cpu", ("--device", "cuda"))])
def test_build_on_a_missing_gpu_exits_1_with_a_clear_message(
        tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str,
        flag: tuple[str, ...]) -> None:
    (tmp_path / "model").symlink_to(tiny_dir)
    (tmp_path / "eval.txt").symlink_to(buildkit.KJV_EVAL)
    spec = tmp_path / "tiny.prune"
    spec.write_text(SPEC.replace("DEVICE", device))
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "-q", *flag]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    if flag:
        assert "prunec: error: --device: device cuda is not available" in err
    else:
        name = device.strip('"')
        assert f"tiny.prune:3:12: error[P0408]: device {name} is not available" in err


def test_report_records_device_dtype_and_every_stage_peak(built: Any) -> None:
    report = built.report
    assert report["model"]["device"] == ("cuda" if GPU else "cpu")
    assert report["model"]["dtype"] == "float32"
    memory = report["memory"]
    assert memory["method"] in ("vmhwm", "ru_maxrss") and memory["unit"] == "MiB"
    stages = memory["stages_peak_rss_mb"]
    assert set(stages) == set(report["timings_s"]) - {"total"}
    assert {"load_model", "plan", "evaluate_dense", "compile", "evaluate_pruned",
            "write"} <= set(stages)
    assert all(v > 50 for v in stages.values())  # a Python with torch in it, at least
    assert memory["peak_rss_mb"] == max(stages.values())
    assert ("cuda_peak_mb" in memory) == GPU


def _wanda(tiny_dir: Path, device: Device) -> Any:
    static = StaticPrune(StaticMethod.WANDA_SP, Target(None, 0.25, 0.34, None, buildkit.span(8)),
                         None, None, "calib", (), True, Scope.PER_LAYER, buildkit.span(7))
    data = (buildkit.dataset("calib", buildkit.KJV_CALIB, samples=2, seq_len=16),
            buildkit.dataset("eval", buildkit.KJV_EVAL, samples=2, seq_len=16))
    spec = buildkit.make_spec(tiny_dir, datasets=data)
    return dataclasses.replace(spec, static=static,
                               model=dataclasses.replace(spec.model, device=device))


def _files(out: Path) -> tuple[bytes, bytes]:
    return (out / "model.onnx").read_bytes(), (out / "plan.lock.json").read_bytes()


def test_cpu_and_auto_builds_write_the_same_lock_and_onnx(tiny_dir: Path,
                                                          tmp_path: Path) -> None:
    """The artifact does not depend on the build device: on this machine auto is whatever it
    finds (CUDA on a GPU machine), the other build is pinned to the CPU by ``--device``."""
    auto = build(_wanda(tiny_dir, AUTO), Path.cwd(), BuildOptions(tmp_path / "a", quiet=True))
    cpu = build(_wanda(tiny_dir, AUTO), Path.cwd(),
                BuildOptions(tmp_path / "c", quiet=True, device=Device(DeviceKind.CPU)))
    assert cpu.report["model"]["device"] == "cpu"
    assert auto.report["model"]["device"] == ("cuda" if GPU else "cpu")
    assert _files(tmp_path / "a") == _files(tmp_path / "c")


# ------------------------------------------------------------------------------ CUDA


@pytest.fixture()
def pair() -> tuple[Any, Any]:
    from tinymodels import tiny_llama

    cpu = tiny_llama(5)
    return cpu, tiny_llama(5).to("cuda")


def _calib() -> torch.Tensor:
    return torch.randint(0, 150, (4, 24), generator=torch.Generator().manual_seed(0))


@needs_gpu
def test_cuda_calibration_statistics_agree_with_the_cpu(pair: tuple[Any, Any]) -> None:
    from prunec.passes.methods.importance import collect_stats

    cpu, gpu = (collect_stats(m, _calib(), 2) for m in pair)
    for a, b in zip(cpu, gpu, strict=True):
        assert b.mlp.mean.device.type == "cpu"  # statistics leave the pass on the CPU
        torch.testing.assert_close(b.mlp.sq_mean, a.mlp.sq_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.attn.mean, a.attn.mean, rtol=1e-4, atol=1e-6)


@needs_gpu
def test_cuda_probe_history_agrees_with_the_cpu(pair: tuple[Any, Any]) -> None:
    from prunec.passes.probe import calibrate_history
    from prunec.passes.reference import shape_of

    policy: Any = None  # unused by the calibration
    cpu, gpu = (calibrate_history(m, shape_of(m), policy, _calib(), 32) for m in pair)
    for a, b in zip(cpu.mlp, gpu.mlp, strict=True):
        assert a is not None and b is not None and b.sq.device.type == "cpu"
        torch.testing.assert_close(b.sq, a.sq, rtol=1e-4, atol=1e-6)


@needs_gpu
def test_cuda_least_squares_refits_agree_with_the_cpu(pair: tuple[Any, Any]) -> None:
    from tinymodels import every_rule_plan

    from prunec.compiler.ir import Reconstruct
    from prunec.passes.methods import MethodOptions
    from prunec.passes.methods.reconstruct import reconstruct
    from prunec.passes.reference import shape_of

    shape = shape_of(pair[0])
    plan = every_rule_plan(shape)
    cpu, gpu = (reconstruct(Reconstruct.LEAST_SQUARES, 0.1, m, shape, plan, _calib(),
                            MethodOptions(batch_size=2)) for m in pair)
    assert cpu.keys() == gpu.keys() and cpu
    for i in cpu:
        for field in ("mlp", "attn", "mlp_weight", "attn_weight"):
            a, b = getattr(cpu[i], field), getattr(gpu[i], field)
            assert (a is None) == (b is None)
            if a is not None:
                assert b.device.type == "cpu"
                torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@needs_gpu
def test_cuda_search_scores_agree_with_the_cpu(pair: tuple[Any, Any]) -> None:
    from prunec.compiler.plan import LayerPlan, Plan
    from prunec.passes.methods.evaluator import Driver, FastEngine
    from prunec.passes.reference import shape_of

    shape = shape_of(pair[0])
    scores = []
    for model in pair:
        engine = FastEngine(model, shape, Driver(model, _calib(), 2), Plan.dense(shape), 64)
        scores.append((engine.current(), engine.score(LayerPlan(1, attn_removed=True))))
    assert scores[1] == pytest.approx(scores[0], rel=1e-4)


@needs_gpu
def test_a_cuda_build_of_a_locked_plan_writes_the_cpu_onnx(tiny_dir: Path,
                                                           tmp_path: Path) -> None:
    cpu = build(_wanda(tiny_dir, Device(DeviceKind.CPU)), Path.cwd(),
                BuildOptions(tmp_path / "c", quiet=True))
    lock = tmp_path / "c" / "plan.lock.json"
    gpu = build(_wanda(tiny_dir, Device(DeviceKind.CUDA)), Path.cwd(),
                BuildOptions(tmp_path / "g", quiet=True, lock=lock))
    assert gpu.report["model"]["device"] == "cuda" and "cuda_peak_mb" in gpu.report["memory"]
    onnx_files = [(tmp_path / d / "model.onnx").read_bytes() for d in ("g", "c")]
    assert onnx_files[0] == onnx_files[1]
    assert json.loads(lock.read_text())["plan"] == json.loads(
        (tmp_path / "g" / "plan.lock.json").read_text())["plan"]
    dense = (r["perplexity"]["eval"]["dense"]["ppl"] for r in (cpu.report, gpu.report))
    assert next(dense) == pytest.approx(next(dense), rel=1e-4)


@needs_gpu
def test_a_bfloat16_cuda_build_exports_float32(tiny_dir: Path, tmp_path: Path) -> None:
    import onnx

    spec = _wanda(tiny_dir, Device(DeviceKind.CUDA))
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=DType.BFLOAT16))
    result = build(spec, Path.cwd(), BuildOptions(tmp_path / "b", quiet=True))
    assert result.report["model"]["dtype"] == "bfloat16"
    model = onnx.load(str(tmp_path / "b" / "model.onnx"))
    kinds = {init.data_type for init in model.graph.initializer if len(init.dims) == 2}
    assert kinds == {onnx.TensorProto.FLOAT}
