"""runtime.data: every format, slices, seeds, and the diagnostics for bad data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import buildkit
import numpy as np
import pytest

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import DataFormat
from prunec.runtime.data import load_dataset, sample_chunks, token_stream


def code(exc: pytest.ExceptionInfo[CompileError]) -> str:
    return exc.value.diagnostics[0].code


def test_text_shape_dtype_and_determinism(tiny_tok: Any) -> None:
    decl = buildkit.dataset("d", buildkit.KJV_EVAL, samples=6, seq_len=20, seed=3)
    a = load_dataset(decl, Path("/"), tiny_tok)
    b = load_dataset(decl, Path("/"), tiny_tok)
    assert a.shape == (6, 20) and str(a.dtype) == "torch.int64"
    assert bool((a == b).all())
    assert int(a.max()) < 160


def test_sequences_are_contiguous_chunks_of_the_stream(tiny_tok: Any) -> None:
    text = buildkit.KJV_EVAL.read_text()
    stream = token_stream(text, tiny_tok)
    decl = buildkit.dataset("d", buildkit.KJV_EVAL, samples=5, seq_len=16, seed=1)
    data = load_dataset(decl, Path("/"), tiny_tok).numpy()
    starts = []
    for row in data:
        hits = [i for i in range(0, len(stream) - 15, 16) if (stream[i:i + 16] == row).all()]
        assert hits, "every sequence is an aligned chunk of the token stream"
        starts.append(hits[0])
    assert starts == sorted(starts) and len(set(starts)) == 5


def test_seed_changes_choice() -> None:
    stream = np.arange(10_000)
    a = sample_chunks(stream, buildkit.dataset("d", "x", samples=8, seq_len=10, seed=0))
    b = sample_chunks(stream, buildkit.dataset("d", "x", samples=8, seq_len=10, seed=1))
    assert not np.array_equal(a, b)


def test_disjoint_slices_share_no_token() -> None:
    stream = np.arange(10_000)  # every token unique, so overlap would show
    a = sample_chunks(stream, buildkit.dataset("d", "x", 50, 100, cut=(0.0, 0.5)))
    b = sample_chunks(stream, buildkit.dataset("d", "x", 50, 100, cut=(0.5, 1.0)))
    assert a.max() < 5000 <= b.min()
    assert set(a.ravel()).isdisjoint(b.ravel())


def test_too_little_text() -> None:
    with pytest.raises(CompileError) as exc:
        sample_chunks(np.arange(1000), buildkit.dataset("d", "x", samples=11, seq_len=100))
    assert code(exc) == "P0402"
    assert "10 sequences" in exc.value.diagnostics[0].message


def test_glob_is_sorted_and_concatenated(tmp_path: Path, tiny_tok: Any) -> None:
    words = buildkit.KJV_EVAL.read_text().split()
    (tmp_path / "b.txt").write_text(" ".join(words[:400]))
    (tmp_path / "a.txt").write_text(" ".join(words[400:800]))
    decl = buildkit.dataset("d", "*.txt", samples=1, seq_len=8)
    joined = token_stream(" ".join(words[400:800]) + "\n\n" + " ".join(words[:400]), tiny_tok)
    got = load_dataset(decl, tmp_path, tiny_tok).numpy()[0]
    n = len(joined) // 8
    assert any((joined[i * 8:(i + 1) * 8] == got).all() for i in range(n))
    first = load_dataset(buildkit.dataset("d", "*.txt", samples=n, seq_len=8), tmp_path,
                         tiny_tok).numpy()
    assert (first.ravel() == joined[: n * 8]).all(), "a.txt first, then b.txt"


def test_jsonl_field(tmp_path: Path, tiny_tok: Any) -> None:
    lines = buildkit.KJV_EVAL.read_text().splitlines()[:300]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "n": i}) for i, t in enumerate(lines)))
    decl = buildkit.dataset("d", "d.jsonl", 4, 16, fmt=DataFormat.JSONL, field="body")
    assert load_dataset(decl, tmp_path, tiny_tok).shape == (4, 16)
    bad = buildkit.dataset("d", "d.jsonl", 4, 16, fmt=DataFormat.JSONL, field="text")
    with pytest.raises(CompileError) as exc:
        load_dataset(bad, tmp_path, tiny_tok)
    assert code(exc) == "P0302" and "'text'" in exc.value.diagnostics[0].message


def test_missing_file(tmp_path: Path, tiny_tok: Any) -> None:
    with pytest.raises(CompileError) as exc:
        load_dataset(buildkit.dataset("d", "nope*.txt"), tmp_path, tiny_tok)
    assert code(exc) == "P0302"


def test_hf_disk_without_pyarrow_is_a_diagnostic(tmp_path: Path, tiny_tok: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    decl = buildkit.dataset("d", ".", fmt=DataFormat.HF_DISK)
    with pytest.raises(CompileError) as exc:
        load_dataset(decl, tmp_path, tiny_tok)
    assert code(exc) == "P0401" and "pyarrow" in (exc.value.diagnostics[0].hint or "")


def test_hf_disk_with_pyarrow(tmp_path: Path, tiny_tok: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    lines = buildkit.KJV_EVAL.read_text().splitlines()[:300]
    table = pa.table({"text": lines})
    with pa.ipc.new_stream(str(tmp_path / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)
    (tmp_path / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    decl = buildkit.dataset("d", ".", 4, 16, fmt=DataFormat.HF_DISK)
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in lines))
    same = buildkit.dataset("d", "same.jsonl", 4, 16, fmt=DataFormat.JSONL)
    assert bool((load_dataset(decl, tmp_path, tiny_tok) ==
                 load_dataset(same, tmp_path, tiny_tok)).all())
