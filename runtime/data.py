"""Datasets: text files, JSON lines or a ``datasets.save_to_disk`` directory -> token sequences.

``load_dataset(decl, spec_dir, tokenizer)`` returns a ``torch.LongTensor [samples, seq_len]``
or raises ``CompileError`` with a diagnostic on the dataset's declaration.

Sampling, precisely:
1. the documents are read in a fixed order (paths and glob matches sorted by name; JSONL
   records and arrow rows in file order) and joined with a blank line (``"\\n\\n"``);
2. the text is tokenised once, without special tokens, into one token stream of N tokens;
3. ``slice [a, b)`` keeps tokens ``floor(a*N) .. floor(b*N)-1`` (default: all); disjoint
   slices of the same files therefore share no token;
4. the kept stream is cut into ``n = len // seq_len`` contiguous, non-overlapping chunks (the
   tail shorter than ``seq_len`` is dropped); ``n < samples`` is a diagnostic;
5. ``samples`` distinct chunks are chosen by a permutation seeded with ``seed``
   (``numpy.random.default_rng(seed)``) and returned in stream order.
The result depends only on the files, the tokenizer, the slice, ``samples``, ``seq_len`` and
``seed``. Tokenisation is cached in memory per (sha256 of the text, tokenizer fingerprint).

The ``hf-disk`` format reads the ``*.arrow`` files listed in the directory's ``state.json``
with ``pyarrow`` (an optional dependency: without it, a diagnostic says to install it);
the ``datasets`` package itself is not needed.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from prunec.compiler.diagnostics import CompileError, Diagnostic
from prunec.compiler.ir import DataFormat, DatasetDecl

_TOKEN_CACHE: dict[tuple[str, str], np.ndarray] = {}
SEPARATOR = "\n\n"


def _fail(decl: DatasetDecl, code: str, message: str, hint: str | None = None) -> CompileError:
    return CompileError((Diagnostic.error(code, f"dataset {decl.name}: {message}", decl.span,
                                          hint),))


# ---------------------------------------------------------------------- reading


def resolve_paths(decl: DatasetDecl, spec_dir: Path) -> list[Path]:
    """Files (or, for hf-disk, directories) named by ``decl.paths``; globs expanded, sorted."""
    found: list[Path] = []
    for pattern in decl.paths:
        full = str(spec_dir / Path(pattern).expanduser())
        matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else (
            [full] if Path(full).exists() else [])
        if not matches:
            raise _fail(decl, "P0302", f"no file matches {pattern!r} (relative to {spec_dir})")
        found += [Path(m) for m in matches]
    return found


def read_documents(decl: DatasetDecl, spec_dir: Path) -> list[str]:
    """The dataset's documents in their fixed order (see the module docstring)."""
    paths = resolve_paths(decl, spec_dir)
    reader = {DataFormat.TEXT: _read_text, DataFormat.JSONL: _read_jsonl,
              DataFormat.HF_DISK: _read_hf_disk}[decl.format]
    docs: list[str] = []
    for path in paths:
        docs += reader(decl, path)
    return docs


def _read_text(decl: DatasetDecl, path: Path) -> list[str]:
    if path.is_dir():
        raise _fail(decl, "P0302", f"{path} is a directory, not a text file")
    try:
        return [path.read_text(encoding="utf-8")]
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(decl, "P0302", f"cannot read {path} as UTF-8 text: {exc}") from exc


def _read_jsonl(decl: DatasetDecl, path: Path) -> list[str]:
    field = decl.field or "text"
    docs = []
    for n, line in enumerate(_read_text(decl, path)[0].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise _fail(decl, "P0302", f"{path}:{n}: not valid JSON ({exc})") from exc
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise _fail(decl, "P0302", f"{path}:{n}: no string field {field!r}",
                        "name the text field with `field`")
        docs.append(value)
    return docs


def _read_hf_disk(decl: DatasetDecl, path: Path) -> list[str]:
    try:
        from pyarrow import ipc
    except ModuleNotFoundError as exc:
        raise _fail(decl, "P0401", "reading a `datasets` save_to_disk directory needs pyarrow",
                    "pip install pyarrow (or convert the data to JSONL)") from exc
    field = decl.field or "text"
    docs: list[str] = []
    for arrow in _arrow_files(decl, path):
        with ipc.open_stream(str(arrow)) as reader:
            table = reader.read_all()
        if field not in table.column_names:
            raise _fail(decl, "P0302", f"{arrow} has no column {field!r} "
                        f"(columns: {', '.join(table.column_names)})")
        docs += [str(v) for v in table.column(field).to_pylist() if v is not None]
    return docs


def _arrow_files(decl: DatasetDecl, path: Path) -> list[Path]:
    state = path / "state.json"
    try:
        files = [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(decl, "P0302", f"{path} is not a `datasets` save_to_disk directory "
                    "(no readable state.json)") from exc
    return files


# ------------------------------------------------------------------ tokenising


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{text}".encode()).hexdigest()


def token_stream(text: str, tokenizer: Any) -> np.ndarray:
    """The tokens of ``text`` (no special tokens), cached per (text hash, tokenizer)."""
    key = (hashlib.sha256(text.encode()).hexdigest(), tokenizer_fingerprint(tokenizer))
    if key not in _TOKEN_CACHE:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        _TOKEN_CACHE[key] = np.asarray(ids, dtype=np.int64)
    return _TOKEN_CACHE[key]


# ------------------------------------------------------------------- sampling


def sample_chunks(stream: np.ndarray, decl: DatasetDecl) -> np.ndarray:
    """``decl.samples`` seeded chunks of ``decl.seq_len`` tokens from the stream's slice."""
    n = len(stream)
    lo, hi = (0, n) if decl.slice is None else (int(decl.slice.start * n),
                                                int(decl.slice.end * n))
    kept = stream[lo:hi]
    available = len(kept) // decl.seq_len
    if available < decl.samples:
        raise _fail(decl, "P0402", f"{len(kept)} tokens give only {available} sequences of "
                    f"{decl.seq_len}, {decl.samples} requested",
                    "add text, widen the slice, or lower samples / seq_len")
    order = np.random.default_rng(decl.seed).permutation(available)[: decl.samples]
    chosen = np.sort(order)
    chunks = kept[: available * decl.seq_len].reshape(available, decl.seq_len)
    return np.ascontiguousarray(chunks[chosen])


def load_dataset(decl: DatasetDecl, spec_dir: Path, tokenizer: Any) -> Any:
    """The dataset as a ``torch.LongTensor [samples, seq_len]`` (see the module docstring)."""
    import torch

    docs = read_documents(decl, spec_dir)
    stream = token_stream(SEPARATOR.join(docs), tokenizer)
    return torch.from_numpy(sample_chunks(stream, decl))
