"""The check / fmt / explain commands through the real CLI: exit codes, hostile input,
JSON output, and no torch on the check path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunec.runtime.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPECS = [str(p) for p in sorted((ROOT / "specs").glob("*.prune"))]


def test_check_all_specs_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *SPECS]) == 0
    assert "error" not in capsys.readouterr().err


def test_fmt_check_all_specs_clean() -> None:
    assert main(["fmt", "--check", *SPECS]) == 0


def test_explain_a_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", SPECS[0]]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["explain", "--format", "json", SPECS[0]]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] and {"section", "setting", "value"} <= set(data["rows"][0])


def _explained_output(spec: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["explain", "--format", "json", spec]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    return str(next(r["value"] for r in rows if r["section"] == "output"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: Path(s).stem)
def test_explain_names_the_directory_build_writes(spec: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """One rule (``compiler.outputs.output_dir``): explain shows where build writes."""
    from prunec.compiler.driver import load_spec
    from prunec.compiler.outputs import output_dir

    loaded, _ = load_spec(Path(spec))
    assert loaded is not None
    assert _explained_output(spec, capsys) == str(output_dir(loaded, Path(spec).parent))


def test_default_output_is_build_name(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "specs" / "smollm2-manual.prune").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.startswith("output")]
    spec = tmp_path / "noout.prune"
    spec.write_text("\n".join(lines).replace('"data/', f'"{ROOT}/specs/data/') + "\n")
    name = next(ln.split('"')[1] for ln in lines if ln.startswith("name"))
    assert _explained_output(str(spec), capsys) == f"build/{name}"


def _hostile(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[bytes | None, str]] = {
        "empty": (b"", "P0110"),
        "binary": (bytes(range(256)) * 4, "P0002"),
        "invalid-utf8": (b"model demo\nname = \"\xff\xfe\"\n", "P0002"),
        "nul": (b"model demo\x00\n", "P0002"),
        "megabyte-line": (b"model demo\nname = " + b"x" * 1_000_000 + b"\n", "P0103"),
        "megabyte-string": (b'model demo\nname = "' + b"y" * 1_000_000, "P0008"),
        "nested-brackets": (b"model demo\nevaluate = " + b"[" * 10_000 + b"]" * 10_000, "P0016"),
        "nested-braces": (b"model demo\nprobe " + b"{" * 10_000 + b"}" * 10_000, "P0018"),
        "many-items": (b"model demo\n" + b'name = "a"\n' * 3_000, "P0102"),
        "directory": (None, "P0001"),
    }
    out = {}
    for name, (data, code) in cases.items():
        path = tmp_path / f"{name}.prune"
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        out[name] = (path, code)
    out["missing"] = (tmp_path / "missing.prune", "P0001")
    return out


@pytest.mark.parametrize("command", ["check", "fmt", "explain"])
def test_hostile_inputs_give_diagnostics_not_tracebacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    for name, (path, code) in _hostile(tmp_path).items():
        if command == "fmt" and name in ("empty", "megabyte-line", "many-items"):
            continue  # these parse: fmt formats them
        argv = [command, str(path)] if command != "check" else [command, "--format", "json",
                                                               str(path)]
        assert main(argv) == 1, name
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "internal error" not in captured.err
        shown = captured.out if command == "check" else captured.err
        assert code in shown, (name, shown[-500:])


def test_check_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.prune"
    bad.write_text("model demo\nprobe { ratio = 140% }\n")
    assert main(["check", "--format", "json", SPECS[0], str(bad)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [f["errors"] for f in data["files"]] == [0, 1]
    diag = data["files"][1]["diagnostics"][0]
    assert diag["code"] == "P0202" and diag["span"]["line"] == 2


def test_fmt_rewrites_then_is_clean(tmp_path: Path) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text("model demo   # m\nname=\"x\"\n")
    assert main(["fmt", "--check", str(spec)]) == 1
    assert main(["fmt", str(spec)]) == 0
    assert spec.read_text() == "model demo  # m\n\nname = \"x\"\n"
    assert main(["fmt", "--check", str(spec)]) == 0


def test_text_diagnostics_have_caret_and_hint(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text("model demo\nprune multiprunr { target = 20% }\n")
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:2:7: error[P0104]: unknown method 'multiprunr'" in err
    assert "   2 | prune multiprunr { target = 20% }\n     |       ^^^^^^^^^^" in err
    assert "= hint: did you mean 'multipruner'?" in err


@pytest.mark.parametrize("argv", [["check"], ["fmt"], ["explain"], ["check", "--format",
                                                                       "xml", "a"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["check", "fmt", "explain"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "SPEC" in capsys.readouterr().out


def test_check_path_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import prunec.runtime.cli, prunec.compiler.driver\n"
        f"rc = prunec.runtime.cli.main(['check', {SPECS[0]!r}])\n"
        "assert rc == 0, rc\n"
        "import importlib, pkgutil, prunec.compiler, prunec.grammar\n"
        "for pkg in (prunec.compiler, prunec.grammar):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        "print('no-torch')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0 and "no-torch" in out.stdout, out.stderr[-2000:]
