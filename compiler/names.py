"""The names a spec gives to things on disk: the spec's ``name`` and its export names.

The one home of the artifact's own file names (``ARTIFACT_FILES``; the runtime writes them)
and of the rules a spec's names must follow, so that a build writes only inside its artifact
(``prunec check`` reports a violation, with a span, before anything is built):
- ``name`` (the default output directory is ``build/<name>``) matches ``NAME_PATTERN``:
  letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 128
  characters, without ``..`` (P0223);
- an export's file or directory name is one plain name inside the artifact: not empty, no
  ``/`` or ``\\``, not ``.`` or ``..``, no NUL or other control character, not absolute, not
  one of ``ARTIFACT_FILES`` (nor a case variant); ``export onnx`` names end in ``.onnx``
  (P0224); two exports may not write the same entry, the ONNX file's sidecars included
  (P0218).
"""

from __future__ import annotations

import re

DEFAULT_ONNX_FILE = "model.onnx"
DEFAULT_HF_DIR = "hf"
MARKER = ".prunec-artifact.json"  # written last by the runtime: this directory is prunec's
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's config (runtime.genai); one per artifact
ARTIFACT_FILES = frozenset({
    "plan.json", "plan.lock.json", "report.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "plan-report.png", "plan-report.html", "model.gating.json",
    "model.history.npz", "model.kv.json", GENAI_CONFIG, MARKER,
})
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def onnx_sidecars(file: str) -> tuple[str, ...]:
    """What the exporters write beside ``file``: external data, for a gated graph its
    initial history and manifest (``model.onnx.data``, ``model.history.npz``, ...), for a
    static one its KV-cache manifest (``model.kv.json``), for a prompt-mode one its other
    graphs (``prompt_graph_files``)."""
    stem = file.removesuffix(".onnx")
    graphs = tuple(g for g in prompt_graph_files(file).values() if g != file)
    return (file + ".data", stem + ".history.npz", stem + ".gating.json", kv_manifest_file(file),
            *graphs, *(g + ".data" for g in graphs))


def prompt_graph_files(file: str) -> dict[str, str]:
    """A ``probe { mode = prompt }`` artifact's graphs (``runtime.prompt_mode``): the prefill
    is ``file`` itself, then ``model.gather.onnx`` and ``model.decode.onnx`` beside it."""
    stem = file.removesuffix(".onnx")
    return {"prefill": file, "gather": stem + ".gather.onnx", "decode": stem + ".decode.onnx"}


def kv_manifest_file(file: str) -> str:
    """The KV-cache manifest's name beside the ONNX ``file`` (``model.kv.json``)."""
    return file.removesuffix(".onnx") + ".kv.json"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a spec (None when it can).

    >>> name_problem("smollm2-probe_v1.2"), name_problem("../../pwned")
    (None, "'../../pwned' is not a plain name")
    """
    if NAME_PATTERN.fullmatch(name) is None or ".." in name:
        return f"{name!r} is not a plain name"
    return None


def export_problem(name: str, onnx: bool) -> str | None:
    """Why ``name`` cannot be an export's file (``onnx``) or directory name (None if fine).

    >>> export_problem("model.onnx", True), export_problem("model.json", True)
    (None, "'model.json' is not an .onnx file name")
    >>> export_problem("../x", False)
    "'../x' is not a plain name inside the artifact"
    """
    shown = repr(name)  # escapes control characters and lone surrogates
    if not name or name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        return f"{shown} is not a plain name inside the artifact"
    if name.lower() in ARTIFACT_FILES:
        return f"{shown} is one of the artifact's own files"
    if onnx and not name.endswith(".onnx"):
        return f"{shown} is not an .onnx file name"
    return None


def written(name: str, onnx: bool) -> tuple[str, ...]:
    """The artifact entries an export named ``name`` writes (the ONNX file and its sidecar)."""
    return (name, *onnx_sidecars(name)) if onnx else (name,)
