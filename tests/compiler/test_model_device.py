"""``model { device, dtype }``: the device key's forms, and a half dtype on the CPU (P0229)."""

from __future__ import annotations

import pytest
from frontkit import ROOT

from prunec.compiler.driver import check_source
from prunec.compiler.ir import Device, DeviceKind, DType


def _model(body: str) -> tuple[object, list[tuple[str, int, int]]]:
    spec, diags = check_source(f"model demo {{\n{body}\n}}\n", str(ROOT / "specs" / "t.prune"))
    return spec, [(d.code, d.span.line, d.span.col) for d in diags if d.is_error]


@pytest.mark.parametrize("written,kind,index", [
    ("", DeviceKind.AUTO, None), ("device = auto", DeviceKind.AUTO, None),
    ("device = cpu", DeviceKind.CPU, None), ("device = cuda", DeviceKind.CUDA, None),
    ('device = "cuda:1"', DeviceKind.CUDA, 1), ('device = "cpu"', DeviceKind.CPU, None),
])
def test_device_forms(written: str, kind: DeviceKind, index: int | None) -> None:
    spec, errors = _model(written)
    assert not errors and spec is not None
    device = spec.model.device  # type: ignore[attr-defined]
    assert (device.kind, device.index) == (kind, index)
    assert (device.span is None) == (written == "")  # P0408 points at the written key


@pytest.mark.parametrize("written", ["device = gpu", 'device = "cuda:x"', 'device = "cpu:0"',
                                     "device = 1", "device = [cpu]"])
def test_bad_devices_are_p0103_on_the_value(written: str) -> None:
    spec, errors = _model(written)
    assert spec is None and errors == [("P0103", 2, written.index("=") + 3)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "bf16", "fp16"])
def test_half_dtype_on_cpu_is_p0229_on_the_dtype(dtype: str) -> None:
    spec, errors = _model(f"dtype = {dtype}\ndevice = cpu")
    assert spec is None and errors == [("P0229", 2, 9)]


@pytest.mark.parametrize("device", ["auto", "cuda", '"cuda:0"'])
def test_half_dtype_is_fine_where_cuda_may_be(device: str) -> None:
    spec, errors = _model(f"dtype = bfloat16\ndevice = {device}")
    assert not errors and spec is not None
    assert spec.model.dtype is DType.BFLOAT16  # type: ignore[attr-defined]


def test_parse_is_the_one_reader_of_device_names() -> None:
    assert Device.parse("cuda:12") == Device(DeviceKind.CUDA, 12)
    assert [Device.parse(t) for t in ("", "cuda:", "cuda:-1", "CUDA", "auto:0")] == [None] * 5
    assert Device.parse("cuda:3").name == "cuda:3" and Device().name == "auto"
