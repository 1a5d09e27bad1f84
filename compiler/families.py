"""The model families prunec prunes and what each supports: the one support table.

``FAMILIES`` holds one ``Family`` per config ``model_type``. Everything that depends on the
family reads it here: ``compiler.shape.SUPPORTED`` (which ``model_type`` / GGUF architecture
a config may name, P0303), the probe check (``compiler.checks``: a family whose probe path
or prompt-mode graphs are not built is P0226, decided from config.json alone) and the
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

from dataclasses import dataclass


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
    Family("phi3", "Phi-3, Phi-4-mini", probe=False, prompt=False,
           note="fused qkv_proj / gate_up_proj split into separate MatMuls at capture; "
                "partial rotary; probe: the gated path gathers rows of separate q and "
                "gate/up projections"),
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
