"""Delete what removed blocks left behind: dead nodes, then weights no node reads.

Rules:
- ``eliminate_dead_code``: FX's DCE with random ops treated as pure (the graph is captured
  in eval mode: SDPA's dropout_p is 0, and FX would otherwise keep a removed block's
  attention alive), plus ``aten._assert_tensor_metadata`` checks (marked impure) whose
  tensor has no other user: such a check would keep a removed block's norm alive.
  Repeated until nothing changes.
- ``drop_unused_weights``: a parameter or buffer of the GraphModule that no ``get_attr``
  node reads any more is deleted, so that neither the re-export nor the ONNX file carries
  it. Counts: nodes erased; tensors and elements dropped.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from prunec.passes.infra import Counts, FunctionPass, PassContext

_CHECKS = (torch.ops.aten._assert_tensor_metadata.default,)


def _impure(node: Node) -> bool:
    return node.is_impure(impure_random=False)


def _orphan_checks(gm: GraphModule) -> list[Node]:
    out = []
    for node in gm.graph.nodes:
        if node.target in _CHECKS and not node.users:
            subject = node.args[0]
            if isinstance(subject, Node) and set(subject.users) == {node}:
                out.append(node)
    return out


def eliminate_dead_code(gm: GraphModule, ctx: PassContext) -> Counts:
    before = len(gm.graph.nodes)
    while True:
        gm.graph.eliminate_dead_code(is_impure_node=_impure)
        orphans = _orphan_checks(gm)
        if not orphans:
            break
        for node in orphans:
            gm.graph.erase_node(node)
    return {"nodes erased": before - len(gm.graph.nodes)}


def drop_unused_weights(gm: GraphModule, ctx: PassContext) -> Counts:
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [name for name, _ in gm.named_parameters(remove_duplicate=False)]
    names += [name for name, _ in gm.named_buffers(remove_duplicate=False)]
    counts = {"tensors dropped": 0, "elements dropped": 0}
    for name in names:
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path)
        tensor = getattr(owner, attr)
        delattr(owner, attr)
        counts["tensors dropped"] += 1
        counts["elements dropped"] += tensor.numel()
    return counts


ELIMINATE_DEAD_CODE = FunctionPass("eliminate_dead_code", eliminate_dead_code)
DROP_UNUSED_WEIGHTS = FunctionPass("drop_unused_weights", drop_unused_weights)
