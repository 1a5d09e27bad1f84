"""The device rule of the passes: work happens where the model's parameters are.

No pass takes a device argument: the build places the model (``runtime.device``), and a
pass moves its token tensors and accumulators to ``model_device(model)``. Results that
leave a pass for good (plans, scores, locks, refits) are plain numbers or CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s (first) parameter."""
    device: torch.device = next(model.parameters()).device
    return device


def on_model(model: Any, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``model``'s device (itself when it is there already)."""
    return tensor.to(model_device(model))
