"""Spec names that would write outside the artifact, and values a build cannot honour, are
``prunec check`` errors (exit 1, a diagnostic with a span), never a build-time failure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from prunec.compiler import names
from prunec.compiler.driver import check_source
from prunec.runtime.cli import main

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"
HEAD = 'model demo\ndataset c text "kjv.txt" { samples = 4, seq_len = 64 }\nevaluate = [c]\n'


def _spec(tmp_path: Path, body: str) -> Path:
    (tmp_path / "kjv.txt").write_text("in the beginning " * 400)
    path = tmp_path / "s.prune"
    path.write_text(HEAD + body, encoding="utf-8")
    return path


def _codes(text: str, tmp_path: Path) -> list[str]:
    (tmp_path / "kjv.txt").write_text("in the beginning " * 400)
    spec, diags = check_source(HEAD + text, str(tmp_path / "s.prune"))
    assert spec is None
    return [d.code for d in diags]


@pytest.mark.parametrize("body,code", [
    ("export onnx \"m.onnx\" { opset = 99999999999999999999 }\n", "P0214"),
    ("export onnx \"m.onnx\" { opset = 24 }\n", "P0214"),
    ('name = "a\\0b"\n', "P0223"),
    ('name = "\\ud800"\n', "P0009"),  # no string in the IR holds a lone surrogate
    ('name = "../../pwned"\n', "P0223"),
    ('name = "a..b"\n', "P0223"),
    ('export onnx "tokenizer.json"\n', "P0224"),
    ('export onnx "plan-report.png"\n', "P0224"),
    ('export onnx "../../x.onnx"\n', "P0224"),
    ('export onnx "/tmp/x.onnx"\n', "P0224"),
    ('export onnx "PLAN.JSON"\n', "P0224"),
    ('export hf "plan.json"\n', "P0224"),
    ('export hf "../x"\n', "P0224"),
    ('export hf ".."\n', "P0224"),
    ('export hf "a\\\\b"\n', "P0224"),
    ('export hf "a\\tb"\n', "P0224"),
    ('export hf ".prunec-artifact.json"\n', "P0224"),
    ('export hf "model.onnx.data"\n', "P0218"),  # the implicit export's sidecar
    ('export onnx "x.onnx"\nexport hf "x.onnx"\n', "P0218"),
    ("export onnx \"m.onnx\" { max_len = 99999999999999999999 }\n", "P0216"),
])
def test_check_rejects_with_exit_1_and_a_span(tmp_path: Path, body: str, code: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _spec(tmp_path, body)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr()
    assert f"error[{code}]" in out.out + out.err and "internal error" not in out.err
    assert main(["explain", str(path)]) == 1
    assert main(["check", "--format", "json", str(path)]) == 1
    found = json.loads(capsys.readouterr().out)
    assert code in json.dumps(found)


@pytest.mark.parametrize("item", ['output = "out/\\udfff"', 'dataset x text "\\ud800.txt"'])
def test_no_lone_surrogate_reaches_explain(tmp_path: Path, item: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = _spec(tmp_path, item + "\n")
    for argv in (["check", str(path)], ["explain", str(path)],
                 ["explain", "--format", "json", str(path)]):
        assert main(argv) == 1
        out = capsys.readouterr()
        assert "error[P0009]" in out.out + out.err or '"P0009"' in out.out, argv
        assert "internal error" not in out.err


def test_no_export_name_escapes_the_artifact() -> None:
    for bad in ("../x.onnx", "/abs.onnx", "a/b.onnx", "a\\b.onnx", "..", ".", "", "x\0.onnx",
                "report.json", "tokenizer_config.json", "special_tokens_map.json",
                "plan-report.html", "model.history.npz", "plan.lock.json", "\ud800.onnx"):
        assert names.export_problem(bad, onnx=True) is not None, bad
        assert names.export_problem(bad.removesuffix(".onnx"), onnx=False) is not None, bad
    assert names.export_problem("pruned.onnx", onnx=True) is None
    assert names.export_problem("hf-checkpoint", onnx=False) is None


def test_plain_names_pass(tmp_path: Path) -> None:
    spec, diags = check_source(HEAD.replace("kjv.txt", str(DATA / "tiny.txt"))
                               + 'name = "smollm2-probe_v1.2"\nexport onnx "pruned.onnx"\n'
                               'export hf "hf"\n', str(tmp_path / "s.prune"))
    assert spec is not None, [d.headline() for d in diags]
    assert spec.name == "smollm2-probe_v1.2"


def _gated(tmp_path: Path, history_len: int, eval_len: int, export: str = "") -> list[str]:
    (tmp_path / "kjv.txt").write_text("in the beginning " * 400)
    (tmp_path / "h.txt").write_text("and the earth " * 400)
    text = (HEAD.replace("seq_len = 64", f"seq_len = {eval_len}")
            + f'dataset h text "h.txt" {{ samples = 4, seq_len = {history_len} }}\n'
            + "probe { ratio = 20%, history = h }\n" + export)
    spec, diags = check_source(text, str(tmp_path / "s.prune"))
    assert (spec is None) == any(d.is_error for d in diags)
    return [d.code for d in diags if d.is_error]


def test_gated_max_len_bounds_the_evaluated_and_history_data(tmp_path: Path) -> None:
    assert _gated(tmp_path, 64, 64) == []
    assert _gated(tmp_path, 513, 64) == ["P0225"]  # the default max_len is 512
    assert _gated(tmp_path, 64, 600) == ["P0225"]
    assert _gated(tmp_path, 600, 600, 'export onnx "m.onnx" { max_len = 600 }\n') == []
    assert _gated(tmp_path, 600, 600, 'export onnx "m.onnx" { gating = off }\n') == []


def test_ten_thousand_datasets_check_in_linear_time(tmp_path: Path) -> None:
    (tmp_path / "kjv.txt").write_text("in the beginning " * 400)
    n = 10_000
    text = "model demo\n" + "".join(f'dataset d{i} text "kjv.txt"\n' for i in range(n))
    text += "evaluate = [" + ", ".join(f"d{i}" for i in range(n)) + "]\n"
    start = time.process_time()  # CPU time: a bound that other processes' load cannot break
    spec, diags = check_source(text, str(tmp_path / "s.prune"))
    assert time.process_time() - start < 2.0  # a bound, not a benchmark: minutes if quadratic
    assert spec is not None and len(spec.datasets) == n, [d.headline() for d in diags[:3]]
    dup, diags = check_source(text + 'dataset d5 text "kjv.txt"\n', str(tmp_path / "s.prune"))
    assert dup is None and [d.code for d in diags] == ["P0108"]
