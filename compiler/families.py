"""The model families prunec prunes and what each supports: the one support table.

``FAMILIES`` holds one ``Family`` per config ``model_type``. Everything that depends on the
family reads it here: ``compiler.shape.SUPPORTED`` (which ``model_type`` / GGUF architecture
a config may name, P0303), the probe check (``compiler.checks``: a family whose probe path
or prompt-mode graphs are not built is P0226, decided from config.json alone; so is a
sliding window narrower than the gated graph, ``window_problem``, and rotary scaling that
changes below its length, ``rope_problem``) and the
README's "Supported models" matrix, which is ``support_matrix()`` verbatim
(``tests/compiler/test_families.py``).

Columns: ``static`` (the search / one-shot methods), ``manual`` (``plan { ... }``),
``probe`` (per-batch gating, ``passes/probe/forward.py``: every family difference read from
the HF modules), ``prompt`` (``probe { mode = prompt }``: its graphs,
``passes/probe/prompt_graph.py``, run on the same gated blocks), ``fuse`` (onnxruntime
fused kernels, ``fuse = on``) and ``kv_cache`` (the cached export, ``prunec generate``,
onnxruntime-genai). A family is in
the table only when every static stage (capture, analysis, width and block passes, ONNX
export) is tested on a tiny model built from its own transformers config class
(``tests/passes/families/``; Llama in ``tests/runtime/test_export_*.py``); the probe
and prompt columns on tiny models of those families against transformers' own modules
(``tests/passes/probe/test_probe_families.py``, ``test_prompt_families.py``); a ``False``
column is rejected by
``prunec check`` (probe, prompt: P0226).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json ``model_type`` (and GGUF ``general.architecture``)
    label: str  # how the README names it
    static: bool = True
    manual: bool = True
    probe: bool = True
    prompt: bool = True
    fuse: bool = True
    kv_cache: bool = True
    note: str = ""


FAMILIES = (
    Family("llama", "Llama, SmolLM2"),
    Family("mistral", "Mistral"),
    Family("qwen2", "Qwen2 / Qwen2.5"),
    Family("qwen3", "Qwen3", note="per-head q_norm/k_norm stay with kept heads"),
    Family("phi3", "Phi-3, Phi-4-mini",
           note="fused qkv_proj / gate_up_proj split into separate MatMuls at capture and "
                "in the gated blocks; partial rotary; longrope (probe and prompt mode: "
                "max_len no longer than original_max_position_embeddings)"),
    Family("gemma2", "Gemma 2",
           note="GELU-tanh MLP, (1 + w) norms, post-block norms, soft-capping, sliding "
                "window (the cache keeps the whole past; probe and prompt mode: no narrower "
                "than max_len)"),
    Family("gemma3_text", "Gemma 3 (text)",
           note="as Gemma 2 with q_norm/k_norm instead of soft-capping, local and global "
                "rope"),
)
COLUMNS = ("static", "manual", "probe", "prompt", "fuse", "kv_cache")
HEADERS = ("static methods", "manual plan", "probe", "prompt mode", "fused export",
           "KV cache")


def family(model_type: str) -> Family:
    """The table's row for ``model_type`` (a name in ``SUPPORTED``)."""
    return next(f for f in FAMILIES if f.model_type == model_type)


def supported() -> tuple[str, ...]:
    """Every ``model_type`` prunec accepts, in table order."""
    return tuple(f.model_type for f in FAMILIES)


def window_problem(windows: Iterable[int | None], max_len: int) -> str | None:
    """Why probe gating cannot stand in for attention with these sliding ``windows`` (one per
    attending layer; None: the whole past), or None when it can: the gated forward attends
    causally over up to ``max_len`` positions, and a window of w tokens (the query's own
    included, as transformers applies it) sees all of them only when w >= ``max_len``.
    The one rule behind ``prunec check``'s P0226 and ``passes.probe.forward``'s guard, both
    on ``compiler.shape.layer_windows`` (of config.json; of the loaded model's config)."""
    narrowest = min((w for w in windows if w is not None), default=None)
    if narrowest is None or narrowest >= max_len:
        return None
    return (f"the model attends over a sliding window of {narrowest} tokens, shorter than "
            f"the gated graph's max_len {max_len}")


# rotary types whose tables transformers recomputes from each call's sequence length, and
# the config key of the length up to which they are the tables of a shorter call: longrope
# switches to its long factors beyond ``original_max_position_embeddings`` (Phi-3 names it
# "su" or "yarn" too), dynamic NTK rescales beyond ``max_position_embeddings``
LENGTH_ROPES = {"longrope": "original_max_position_embeddings",
                "dynamic": "max_position_embeddings"}
ROPE_ALIASES = {("phi3", "su"): "longrope", ("phi3", "yarn"): "longrope"}


def rope_fixed_len(model_type: str, config: Mapping[str, Any]) -> int | None:
    """The longest sequence whose rotary tables do not depend on its length (None: any), from
    a config.json or ``PretrainedConfig.to_dict()``: ``rope_scaling`` (older files; it wins
    when both are given, as transformers reads it) or ``rope_parameters`` (transformers 5),
    the length key in it or at the top level."""
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = str(params.get("rope_type", params.get("type")))
    key = LENGTH_ROPES.get(ROPE_ALIASES.get((model_type, kind), kind))
    if key is None:
        return None
    length = params.get(key, config.get(key))
    return None if length is None else int(length)


def rope_problem(fixed_len: int | None, max_len: int) -> str | None:
    """Why the gated graph's one rotary table (computed for ``max_len`` positions) is not the
    model's for shorter inputs (None: it is): its rotary scaling depends on the sequence
    length beyond ``fixed_len`` (``rope_fixed_len``). Like ``window_problem``, the one rule
    of ``prunec check`` (P0226) and ``passes.probe.forward``'s guard."""
    if fixed_len is None or max_len <= fixed_len:
        return None
    return (f"the model's rotary scaling changes beyond {fixed_len} tokens, shorter than the "
            f"gated graph's max_len {max_len}")


def support_matrix() -> str:
    """The README's "Supported models" table (markdown), rendered from ``FAMILIES``."""
    head = "| family | `model_type` | " + " | ".join(HEADERS) + " | notes |"
    rule = "|---" * (len(HEADERS) + 3) + "|"
    rows = [f"| {f.label} | `{f.model_type}` | "
            + " | ".join("yes" if getattr(f, c) else "no" for c in COLUMNS)
            + f" | {f.note} |" for f in FAMILIES]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    print(support_matrix())
