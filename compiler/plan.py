"""A static pruning plan: which blocks go and which MLP channels / heads stay, per layer.

The plan is what every static method produces (manual plan, one-shot baselines, the
MultiPruner/BlockPruner search) and what the graph passes consume. It is model-agnostic
data (no torch). Invariants (``Plan.validate`` checks them against a ``ModelShape``):
- one ``LayerPlan`` per decoder layer, in order;
- ``kept_channels`` / ``kept_heads`` are sorted, unique and in range, or None (= all kept);
- a removed block has no kept widths (``kept_* is None``);
- under GQA, kept query heads are either the same number per KV group (k/v stay whole) or
  whole KV groups (then k/v rows of dropped groups go too); ``kv_groups_kept`` says which.
``decisions`` records, in order, why each change was made (method, score, spec span), so a
plan can be reviewed, diffed and locked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prunec.compiler.ir import ModelShape


@dataclass(frozen=True)
class LayerPlan:
    index: int
    attn_removed: bool = False
    mlp_removed: bool = False
    kept_heads: tuple[int, ...] | None = None  # query-head indices of the original layer
    kept_channels: tuple[int, ...] | None = None  # MLP intermediate channels

    def kv_groups_kept(self, shape: ModelShape) -> tuple[int, ...]:
        """KV heads whose k/v rows survive: those with at least one kept query head."""
        if self.kept_heads is None:
            return tuple(range(shape.n_kv_heads))
        g = shape.group_size
        return tuple(sorted({h // g for h in self.kept_heads}))


@dataclass(frozen=True)
class Decision:
    """One step of a method: what changed, the score that chose it, and the spec line behind it."""

    step: int
    stage: str  # "blocks" | "mlp" | "heads" | "manual" | "one-shot"
    layer: int
    action: str  # e.g. "remove attn", "mlp -128 channels", "keep heads 0,1,3"
    score: float | None  # calibration perplexity after the change (search methods)
    spec_line: int | None = None


@dataclass(frozen=True)
class Plan:
    layers: tuple[LayerPlan, ...]
    method: str = "dense"
    decisions: tuple[Decision, ...] = field(default_factory=tuple)
    reconstruct: str = "off"  # the reconstruction applied after it (``ir.Reconstruct`` value)
    damp: float | None = None  # its ridge, for least-squares

    @staticmethod
    def dense(shape: ModelShape, method: str = "dense") -> Plan:
        return Plan(tuple(LayerPlan(i) for i in range(shape.n_layers)), method)

    def with_layer(self, layer: LayerPlan) -> Plan:
        layers = list(self.layers)
        layers[layer.index] = layer
        return replace(self, layers=tuple(layers))

    def with_decision(self, decision: Decision) -> Plan:
        return replace(self, decisions=self.decisions + (decision,))

    def validate(self, shape: ModelShape) -> list[str]:
        """Problems with this plan for ``shape`` (empty when valid)."""
        problems: list[str] = []
        if len(self.layers) != shape.n_layers:
            problems.append(f"plan has {len(self.layers)} layers, model has {shape.n_layers}")
        for lp in self.layers:
            problems += _layer_problems(lp, shape)
        return problems

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "layers": [asdict(lp) for lp in self.layers],
            "decisions": [asdict(d) for d in self.decisions],
        }
        if self.reconstruct != "off":
            out["reconstruct"] = {"setting": self.reconstruct, "damp": self.damp}
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> Plan:
        layers = tuple(
            LayerPlan(
                index=int(d["index"]),
                attn_removed=bool(d["attn_removed"]),
                mlp_removed=bool(d["mlp_removed"]),
                kept_heads=None if d["kept_heads"] is None else tuple(d["kept_heads"]),
                kept_channels=None if d["kept_channels"] is None else tuple(d["kept_channels"]),
            )
            for d in data["layers"]
        )
        decisions = tuple(Decision(**d) for d in data.get("decisions", []))
        refit = data.get("reconstruct") or {"setting": "off", "damp": None}
        damp = None if refit.get("damp") is None else float(refit["damp"])
        return Plan(layers, str(data.get("method", "dense")), decisions,
                    str(refit["setting"]), damp)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)


def _layer_problems(lp: LayerPlan, shape: ModelShape) -> list[str]:
    out: list[str] = []
    where = f"layer {lp.index}"
    for name, kept, limit in (
        ("heads", lp.kept_heads, shape.n_heads),
        ("channels", lp.kept_channels, shape.intermediate),
    ):
        if kept is None:
            continue
        if list(kept) != sorted(set(kept)):
            out.append(f"{where}: kept {name} not sorted and unique")
        if kept and (kept[0] < 0 or kept[-1] >= limit):
            out.append(f"{where}: kept {name} out of range 0..{limit - 1}")
        if not kept:
            out.append(f"{where}: keeps no {name}; remove the block instead")
    if lp.attn_removed and lp.kept_heads is not None:
        out.append(f"{where}: attention removed but kept heads given")
    if lp.mlp_removed and lp.kept_channels is not None:
        out.append(f"{where}: MLP removed but kept channels given")
    if lp.kept_heads:
        out += _gqa_problems(lp, shape)
    return out


def _gqa_problems(lp: LayerPlan, shape: ModelShape) -> list[str]:
    assert lp.kept_heads is not None
    g = shape.group_size
    per_group = [sum(1 for h in lp.kept_heads if h // g == kv) for kv in range(shape.n_kv_heads)]
    live = [c for c in per_group if c]
    if len(set(live)) > 1:
        return [
            f"layer {lp.index}: kept heads per KV group {per_group} are unequal "
            + "(grouped-query attention needs the same number in every kept group)"
        ]
    return []


def param_count(shape: ModelShape, plan: Plan) -> int:
    """Parameters of the pruned model (embeddings, norms and lm_head included)."""
    h, d = shape.hidden, shape.head_dim
    total = shape.vocab * h * (1 if shape.tied_embeddings else 2) + h  # final norm
    for lp in plan.layers:
        if not lp.attn_removed:
            nq = shape.n_heads if lp.kept_heads is None else len(lp.kept_heads)
            nkv = len(lp.kv_groups_kept(shape))
            total += h + 2 * h * nq * d + 2 * h * nkv * d  # norm, q, o, k, v
            total += (nq + 2 * nkv) * d * shape.qkv_bias + h * shape.o_bias  # biases
        if not lp.mlp_removed:
            c = shape.intermediate if lp.kept_channels is None else len(lp.kept_channels)
            total += h + 3 * h * c
    return total


def flops_per_token(shape: ModelShape, plan: Plan, seq_len: int) -> int:
    """Multiply-accumulate FLOPs (2 per MAC) per token at ``seq_len`` context, lm_head included."""
    h, d = shape.hidden, shape.head_dim
    total = 2 * h * shape.vocab
    for lp in plan.layers:
        if not lp.attn_removed:
            nq = shape.n_heads if lp.kept_heads is None else len(lp.kept_heads)
            nkv = len(lp.kv_groups_kept(shape))
            total += 2 * (2 * h * nq * d + 2 * h * nkv * d)  # projections
            total += 2 * 2 * nq * d * seq_len // 2  # scores + weighted sum, causal average
        if not lp.mlp_removed:
            c = shape.intermediate if lp.kept_channels is None else len(lp.kept_channels)
            total += 2 * 3 * h * c
    return total
