"""Structure analysis of a captured decoder graph: layers, blocks and coupled groups.

Every family of ``compiler.families`` reaches this module in Llama's layout: fused
projections (Phi-3) are split at capture (``passes.unfuse``); per-head q/k norms (Qwen3,
Gemma 3) act on head_dim, shared by all heads, so they couple nothing; a post-block norm
(Gemma) lies between a block's output projection and its residual add.

Input: the unlifted GraphModule from ``passes.capture``. Each ``call_function`` node's
``nn_module_stack`` metadata names its innermost module; its path tells the layer and role:
``...layers.<i>.self_attn.{q,k,v,o}_proj`` (attention projections, ``aten.linear``),
``...layers.<i>.mlp.{gate,up,down}_proj`` (MLP projections), ``...layers.<i>`` (the
residual adds), ``...layers.<i>.{input,post_attention}_layernorm`` (the norms). Weights are
the ``get_attr`` arguments of the linear nodes (their targets are parameter paths).

Structures found (all names are node names or get_attr targets, so they stay valid while
passes rewrite the graph around them):
- attention block = input norm + attention + the residual add ``x + o_proj(...)``
  (Gemma: ``x + post_attention_layernorm(o_proj(...))``);
- MLP block = post-attention norm + MLP + the residual add ``x + down_proj(...)``
  (Gemma: pre- and post-feed-forward norms around the MLP);
  removing a block routes the add's users to its skip argument ``x``;
- coupled groups, the units of width pruning (Torch-Pruning's dependency groups):
  MLP channel k = row k of gate/up (+ bias) and column k of down;
  query head h = rows [h*d, (h+1)*d) of q (+ bias) and the same columns of o;
  KV group g = rows [g*d, (g+1)*d) of k and v (+ biases), cut only when the whole group goes;
- repeat_kv sites: ``expand([b, n_kv, n_rep, s, d]) -> reshape([b, n_kv*n_rep, s, d])``, the
  only constants in the graph that encode head counts (views use -1 for the head axis).

A model that does not have this shape raises ``CompileError`` (codes P0501-P0505) whose
span is the spec's model line when the caller gives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import ModelShape

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
_PATH = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.(self_attn|mlp)\.(\w+)|\.(\w+))?$")
_HINT = "prunec supports the families of compiler/families.py (the README's supported models)"


@dataclass(frozen=True)
class LinearSite:
    node: str  # the aten.linear node
    weight: str  # get_attr target of its weight ([out, in])
    bias: str | None


@dataclass(frozen=True)
class Residual:
    add: str  # the aten.add node joining a block's output to the residual stream
    skip_arg: int  # which argument of the add is the stream x


@dataclass(frozen=True)
class RepeatKV:
    expand: str  # expand([b, n_kv, n_rep, s, d])
    reshape: str  # reshape/view([b, n_kv * n_rep, s, d])


@dataclass(frozen=True)
class AttentionBlock:
    layer: int
    q: LinearSite
    k: LinearSite
    v: LinearSite
    o: LinearSite
    residual: Residual
    repeat_kv: tuple[RepeatKV, ...]


@dataclass(frozen=True)
class MlpBlock:
    layer: int
    gate: LinearSite
    up: LinearSite
    down: LinearSite
    residual: Residual


@dataclass(frozen=True)
class Member:
    """One tensor of a coupled group: index ``i`` selects ``unit`` slices along ``dim``."""

    target: str
    dim: int
    unit: int = 1


@dataclass(frozen=True)
class CoupledGroup:
    kind: str  # "mlp-channel" | "query-head" | "kv-group"
    layer: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class DecoderLayer:
    index: int
    attention: AttentionBlock
    mlp: MlpBlock

    def channel_group(self) -> CoupledGroup:
        m = self.mlp
        rows = _rows(m.gate) + _rows(m.up)
        return CoupledGroup("mlp-channel", self.index, rows + (Member(m.down.weight, 1),))

    def head_group(self, head_dim: int) -> CoupledGroup:
        a = self.attention
        members = _rows(a.q, head_dim) + (Member(a.o.weight, 1, head_dim),)
        return CoupledGroup("query-head", self.index, members)

    def kv_group(self, head_dim: int) -> CoupledGroup:
        a = self.attention
        return CoupledGroup("kv-group", self.index, _rows(a.k, head_dim) + _rows(a.v, head_dim))


def _rows(site: LinearSite, unit: int = 1) -> tuple[Member, ...]:
    bias = () if site.bias is None else (Member(site.bias, 0, unit),)
    return (Member(site.weight, 0, unit),) + bias


@dataclass(frozen=True)
class GraphStructure:
    layers: tuple[DecoderLayer, ...]


# ----------------------------------------------------------------------------- helpers


def module_path(node: Node) -> str:
    """The innermost module path of a node ('' when it has no module stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path)


def role(node: Node) -> tuple[int, str] | None:
    """(layer, role) of a node: role is 'q_proj'..'down_proj', a norm name, or 'layer'."""
    match = _PATH.search(module_path(node))
    if match is None:
        return None
    layer = int(match.group(1))
    if match.group(2) is not None:
        return layer, match.group(3)
    return layer, match.group(4) or "layer"


def incompatible(message: str, span: Span | None, code: str = "P0501") -> CompileError:
    where = span if span is not None else Span.unknown("<model>")
    return CompileError((Diagnostic.error(code, message, where, _HINT),))


def _linear_site(node: Node) -> LinearSite:
    weight, bias = node.args[1], node.args[2] if len(node.args) > 2 else None
    if not isinstance(weight, Node) or weight.op != "get_attr":
        raise ValueError(f"{node.name}: weight is not a graph attribute")
    if bias is not None and (not isinstance(bias, Node) or bias.op != "get_attr"):
        raise ValueError(f"{node.name}: bias is not a graph attribute")
    return LinearSite(node.name, str(weight.target), None if bias is None else str(bias.target))


def find_linears(gm: GraphModule) -> dict[int, dict[str, LinearSite]]:
    """Per layer, the linear sites by projection name."""
    found: dict[int, dict[str, LinearSite]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        where = role(node)
        if where is not None and where[1] in ATTN_PROJ + MLP_PROJ:
            found.setdefault(where[0], {})[where[1]] = _linear_site(node)
    return found


def find_residual(gm: GraphModule, start: str, layer: int) -> Residual | None:
    """The residual add in layer ``layer``'s own scope that ``start``'s output reaches.

    The way there may pass a dropout (Phi-3) or a post-block norm (Gemma's
    ``post_attention_layernorm`` / ``post_feedforward_layernorm``): every node on it belongs
    to the layer but is not the layer's own code, and the first residual add reached is the
    only one; its other argument is the stream ``x``."""
    seen, frontier, adds = {start}, [_node(gm, start)], set()
    while frontier and len(seen) < 64:
        for user in frontier.pop().users:
            where = role(user)
            if where == (layer, "layer") and user.target is torch.ops.aten.add.Tensor:
                adds.add(user)
            elif where is not None and where[0] == layer and where[1] != "layer" and (
                    user.name not in seen):
                seen.add(user.name)
                frontier.append(user)
    if len(adds) != 1:
        return None
    add = adds.pop()
    inside = [isinstance(a, Node) and a.name in seen for a in add.args]
    if len(add.args) != 2 or inside.count(True) != 1:
        return None
    return Residual(add.name, inside.index(False))


def find_repeat_kv(gm: GraphModule, layer: int) -> tuple[RepeatKV, ...]:
    """expand(5-d) -> reshape/view(4-d) pairs inside layer ``layer``'s attention."""
    sites = []
    reshapes = (torch.ops.aten.reshape.default, torch.ops.aten.view.default)
    for node in gm.graph.nodes:
        if node.target is not torch.ops.aten.expand.default or len(node.args[1]) != 5:
            continue
        where = role(node)
        if where is None or where[0] != layer or where[1] != "self_attn":
            continue
        users = [u for u in node.users if u.target in reshapes and len(u.args[1]) == 4]
        if len(users) != 1 or len(node.users) != 1:
            raise ValueError(f"{node.name}: repeat_kv expand without a single 4-d reshape")
        sites.append(RepeatKV(node.name, users[0].name))
    return tuple(sites)


def _node(gm: GraphModule, name: str) -> Node:
    node: Node
    for node in gm.graph.nodes:
        if node.name == name:
            return node
    raise KeyError(name)


def node_map(gm: GraphModule) -> dict[str, Node]:
    return {node.name: node for node in gm.graph.nodes}


# ---------------------------------------------------------------------------- analysis


def analyze(gm: GraphModule, shape: ModelShape, span: Span | None = None) -> GraphStructure:
    """Find every decoder layer's blocks; CompileError if the graph is not Llama-like."""
    linears = find_linears(gm)
    if sorted(linears) != list(range(shape.n_layers)):
        raise incompatible(
            f"found decoder layers {sorted(linears)[:8]} in the graph, expected "
            f"{shape.n_layers} layers with q/k/v/o_proj and gate/up/down_proj", span)
    layers = tuple(_layer(gm, i, linears[i], span) for i in range(shape.n_layers))
    structure = GraphStructure(layers)
    _check_widths(gm, structure, shape, span)
    return structure


def _layer(gm: GraphModule, i: int, sites: dict[str, LinearSite], span: Span | None
           ) -> DecoderLayer:
    missing = [p for p in ATTN_PROJ + MLP_PROJ if p not in sites]
    if missing:
        raise incompatible(f"layer {i} has no {', '.join(missing)} linear layer", span, "P0502")
    attn_res = find_residual(gm, sites["o_proj"].node, i)
    mlp_res = find_residual(gm, sites["down_proj"].node, i)
    if attn_res is None or mlp_res is None:
        block = "attention" if attn_res is None else "MLP"
        raise incompatible(f"layer {i}: no residual add after the {block} block "
                           "(expected x + f(norm(x)))", span, "P0503")
    try:
        repeat = find_repeat_kv(gm, i)
    except ValueError as exc:
        raise incompatible(f"layer {i}: unsupported key/value head expansion ({exc})",
                           span, "P0504") from exc
    attention = AttentionBlock(i, sites["q_proj"], sites["k_proj"], sites["v_proj"],
                               sites["o_proj"], attn_res, repeat)
    mlp = MlpBlock(i, sites["gate_proj"], sites["up_proj"], sites["down_proj"], mlp_res)
    return DecoderLayer(i, attention, mlp)


def _check_widths(gm: GraphModule, structure: GraphStructure, shape: ModelShape,
                  span: Span | None) -> None:
    d, h = shape.head_dim, shape.hidden
    expected = {"q": (shape.n_heads * d, h), "k": (shape.n_kv_heads * d, h),
                "v": (shape.n_kv_heads * d, h), "o": (h, shape.n_heads * d),
                "gate": (shape.intermediate, h), "up": (shape.intermediate, h),
                "down": (h, shape.intermediate)}
    for layer in structure.layers:
        a, m = layer.attention, layer.mlp
        sites = {"q": a.q, "k": a.k, "v": a.v, "o": a.o, "gate": m.gate, "up": m.up,
                 "down": m.down}
        for name, site in sites.items():
            got = tuple(get_tensor(gm, site.weight).shape)
            if got != expected[name]:
                raise incompatible(f"layer {layer.index}: {name}_proj weight is {list(got)}, "
                                   f"the model config says {list(expected[name])}", span,
                                   "P0505")


def get_tensor(gm: GraphModule, target: str) -> torch.Tensor:
    """The parameter, buffer or tensor attribute a get_attr target names."""
    owner, _, name = target.rpartition(".")
    value = getattr(gm.get_submodule(owner), name)
    assert isinstance(value, torch.Tensor), target
    return value
