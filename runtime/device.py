"""The torch device and dtype a build loads its model in, from the spec and ``--device``.

``resolve(decl)`` turns ``ModelDecl.device`` (the spec's ``model { device }``, or the flag
put there by ``with_device``) into a torch device name and the model ``DType`` to load:
- ``auto`` is ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``;
- ``cuda`` / ``cuda:N`` without that GPU (``device_problem``) is P0408 on the spec's
  ``device`` value; ``prunec build --device`` checks the flag first and prints the same
  message as a plain error;
- a half dtype (float16, bfloat16) needs CUDA: ``device = cpu`` is P0229 at ``check`` time
  (``compiler.blocks.model_settings``); ``auto`` that finds no GPU loads float32 and says so
  in a note (report.json's ``notes``).
Passes never take a device argument: they use the device of the model's parameters
(``prunec.passes.device``) and move their token tensors there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import HALF_DTYPES, Device, DeviceKind, DType, ModelDecl


@dataclass(frozen=True)
class Placement:
    device: str  # as torch spells it: "cpu", "cuda", "cuda:1"
    dtype: DType  # what the weights are loaded in
    notes: tuple[str, ...] = ()


def with_device(decl: ModelDecl, override: Device | None) -> ModelDecl:
    """``decl`` with ``--device`` in place of the spec's device (unchanged without one)."""
    return decl if override is None else dataclasses.replace(decl, device=override)


def cuda_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve(decl: ModelDecl) -> Placement:
    """Where and in which dtype to load ``decl``'s model (see the module docstring)."""
    problem = device_problem(decl.device)
    if problem is not None:
        span = decl.device.span or Span.unknown(decl.span.file)
        raise CompileError((Diagnostic.error("P0408", problem, span, HINT),))
    device = decl.device
    if device.kind is DeviceKind.AUTO:
        device = Device(DeviceKind.CUDA if cuda_count() else DeviceKind.CPU)
    if device.kind is DeviceKind.CPU and decl.dtype in HALF_DTYPES:
        note = (f"dtype {decl.dtype.value} needs a CUDA device and device auto found none: "
                "the model was loaded in float32")
        return Placement("cpu", DType.FLOAT32, (note,))
    return Placement(device.name, decl.dtype)


HINT = "use device = auto or cpu (or --device cpu), or run on a machine with that GPU"


def device_problem(device: Device) -> str | None:
    """Why ``device`` cannot be had here (None when it can): a CUDA device torch lacks."""
    if device.kind is not DeviceKind.CUDA:
        return None
    gpus = cuda_count()
    if (device.index or 0) < gpus:
        return None
    found = "torch finds no CUDA device" if gpus == 0 else f"torch finds {gpus} CUDA device(s)"
    return f"device {device.name} is not available: {found}"
