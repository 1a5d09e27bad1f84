"""``prunec generate`` through ``prunec.runtime.cli.main``: streaming and ``--json`` agree,
the prompt sources, ``--chat``, and every bad input is a diagnostic (exit 1) or a usage
error (exit 2), never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.runtime.cli import main

PROMPT = "In the beginning God created"
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}<|assistant|>"


def copy_artifact(built: Any, to: Path, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(built.artifact, to, ignore=lambda d, names: [
        n for n in names if n in without])
    return to


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["generate", *args, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_stream_prints_the_prompt_and_the_json_text(built: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    art = str(built.artifact)
    assert main(["generate", art, PROMPT, "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr()
    got = run_json(capsys, art, PROMPT, "--max-new-tokens", "12")
    assert streamed.out == PROMPT + got["text"] + "\n"
    assert f"[{len(got['tokens'])} tokens" in streamed.err
    assert 0 < len(got["tokens"]) <= 12 and got["time_to_first_token_s"] > 0
    assert got["decode_tokens_per_s"] > 0 or len(got["tokens"]) == 1


def test_prompt_file_and_sampling_flags(built: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.txt").write_text(PROMPT + "\n")
    art = str(built.artifact)
    from_file = run_json(capsys, art, "--prompt-file", str(tmp_path / "p.txt"))
    assert from_file["tokens"] == run_json(capsys, art, PROMPT)["tokens"]
    warm = ("--temperature", "1.3", "--top-p", "0.9", "--seed", "11", "--max-new-tokens", "16")
    first, again = (run_json(capsys, art, PROMPT, *warm) for _ in range(2))
    assert (first["tokens"], first["text"]) == (again["tokens"], again["text"])
    assert first["tokens"] != from_file["tokens"][:16]


def test_chat_applies_the_template(built: Any, tmp_path: Path, tiny_tok: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from prunec.runtime.generate import Generator, SamplingConfig

    art = copy_artifact(built, tmp_path / "art")
    config = json.loads((art / "tokenizer_config.json").read_text())
    (art / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": TEMPLATE}))
    got = run_json(capsys, str(art), PROMPT, "--chat", "--max-new-tokens", "8")
    wrapped = f"<|user|> {PROMPT} <|assistant|>"
    ids = tiny_tok(wrapped, add_special_tokens=False)["input_ids"]
    expected = Generator(art / "model.onnx").generate([ids], SamplingConfig(8)).tokens[0]
    assert got["tokens"] == list(expected)


def _bad(tmp_path: Path, built: Any) -> dict[str, tuple[list[str], str, str]]:
    """name -> (argv after ``generate``, expected code, a phrase of the message or hint)."""
    art = str(built.artifact)
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text(buildkit.KJV_EVAL.read_text()[:6000])
    no_cache = copy_artifact(built, tmp_path / "no-cache", ("model.kv.json",))
    no_tok = copy_artifact(built, tmp_path / "no-tok", ("tokenizer.json", "tokenizer_config.json"))
    gated = copy_artifact(built, tmp_path / "gated")
    (gated / "model.gating.json").write_text("{}")
    return {
        "empty prompt": ([art, "  "], "P0407", "empty"),
        "too long": ([art, "--prompt-file", str(long_prompt)], "P0407", "context"),
        "no cache": ([str(no_cache), PROMPT], "P0404", "kv_cache = on"),
        "no tokenizer": ([str(no_tok), PROMPT], "P0404", "tokenizer"),
        "missing artifact": ([str(tmp_path / "nope"), PROMPT], "P0404", "does not exist"),
        "missing prompt file": ([art, "--prompt-file", str(tmp_path / "none.txt")], "P0302",
                                "prompt file"),
        "chat without template": ([art, PROMPT, "--chat"], "P0407", "chat template"),
        "gated artifact": ([str(gated), PROMPT], "P0404", "gated"),
    }


@pytest.mark.parametrize("name", ["empty prompt", "too long", "no cache", "no tokenizer",
                                  "missing artifact", "missing prompt file",
                                  "chat without template", "gated artifact"])
def test_bad_input_is_a_diagnostic(name: str, built: Any, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv, code, phrase = _bad(tmp_path, built)[name]
    assert main(["generate", *argv]) == 1
    printed = capsys.readouterr()
    assert f"error[{code}]" in printed.err and phrase in printed.err
    assert "Traceback" not in printed.err and "internal error" not in printed.err
    assert printed.out == ""


@pytest.mark.parametrize("flags", [
    ["--max-new-tokens", "0"], ["--max-new-tokens", "-3"], ["--top-p", "0"],
    ["--top-p", "1.5"], ["--top-p", "nan"], ["--temperature", "-1"], ["--max-new-tokens", "x"],
    ["--prompt-file", "p.txt"],  # and a PROMPT: one source only
])
def test_bad_numbers_are_usage_errors(flags: list[str], built: Any,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", str(built.artifact), PROMPT, *flags])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_no_prompt_is_a_usage_error(built: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", str(built.artifact)])
    assert info.value.code == 2
