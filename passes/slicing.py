"""Physical weight slicing along coupled groups (shared by the width passes).

Rule: keeping indices ``I`` of a ``CoupledGroup`` replaces every member tensor ``W`` by
``W.index_select(m.dim, rows(I, m.unit))`` where ``rows`` expands index ``i`` to
``[i*unit, (i+1)*unit)``. The new tensor is a fresh contiguous copy registered under the
same attribute path (a ``Parameter`` stays a ``Parameter``), so the graph's ``get_attr``
nodes read the smaller weight and the original model's tensors are never written.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.fx import GraphModule

from prunec.passes.analysis import CoupledGroup, get_tensor


def rows(indices: Sequence[int], unit: int) -> torch.Tensor:
    """Indices ``i`` expanded to ``i*unit .. i*unit + unit - 1``, in order."""
    base = torch.tensor(list(indices), dtype=torch.long).unsqueeze(1) * unit
    return (base + torch.arange(unit).unsqueeze(0)).reshape(-1)


def replace_tensor(gm: GraphModule, target: str, value: torch.Tensor) -> None:
    """Register ``value`` at ``target`` (same kind of attribute as before)."""
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path)
    old = getattr(owner, name)
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(value, requires_grad=False))
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


def keep_group(gm: GraphModule, group: CoupledGroup, indices: Sequence[int]) -> int:
    """Slice every member of ``group`` to ``indices``; returns the elements removed."""
    removed = 0
    with torch.no_grad():
        for member in group.members:
            old = get_tensor(gm, member.target)
            new = old.index_select(member.dim, rows(indices, member.unit)).contiguous()
            replace_tensor(gm, member.target, new)
            removed += old.numel() - new.numel()
    return removed
