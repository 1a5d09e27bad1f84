"""``prunec eval --prompt-len P``: continuation perplexity (tokens P.. given 0..P-1) for every
artifact kind (static with and without the KV cache, gated), and its bad inputs."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import buildkit
import pytest
import torch
from test_build_probe import gated_build  # noqa: F401  (module fixture: one gated build)
from tinymodels import tiny_llama

from prunec.compiler.plan import Plan
from prunec.passes.reference import apply_plan_, shape_of
from prunec.runtime.cli import main
from prunec.runtime.data import DataArgs, load_data_args
from prunec.runtime.evaluate import perplexity, torch_logits

SAMPLES, SEQ, PROMPT = 4, 24, 10


def test_prompt_len_scores_only_the_continuation() -> None:
    table = torch.eye(5) * 3.0  # logits at t: a lookup of token t
    data = torch.tensor([[1, 2, 2, 3, 3], [4, 4, 0, 1, 1]])
    got = perplexity(lambda b: table[b], data, batch_size=1, prompt_len=3)
    logp = torch.log_softmax(table, -1)
    nll = [-(logp[r[2], r[3]] + logp[r[3], r[4]]).item() / 2 for r in data.tolist()]
    assert got.ppl == pytest.approx(math.exp(sum(nll) / 2), rel=1e-6)
    assert got.tokens == 2 * 2
    whole = perplexity(lambda b: table[b], data, batch_size=1)
    assert perplexity(lambda b: table[b], data, 1, prompt_len=1).ppl == whole.ppl
    assert whole.tokens == 2 * 4


@pytest.mark.parametrize("p", [-1, 5, 9])
def test_prompt_len_outside_the_sequence_is_an_error(p: int) -> None:
    with pytest.raises(ValueError, match="prompt_len"):
        perplexity(lambda b: torch.zeros(*b.shape, 3), torch.zeros(2, 5, dtype=torch.long),
                   prompt_len=p)


Capsys = pytest.CaptureFixture[str]


def eval_json(capsys: Capsys, artifact: Path, *extra: str) -> dict[str, Any]:
    args = ["eval", str(artifact), "--data", str(buildkit.KJV_EVAL), "--samples", str(SAMPLES),
            "--seq-len", str(SEQ), "--json", "-q", *extra]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def tokens(tok: Any) -> torch.Tensor:
    return load_data_args(DataArgs((str(buildkit.KJV_EVAL),), "text", None, SAMPLES, SEQ, 0,
                                   None), lambda: tok)


def test_static_artifacts_with_and_without_cache(built: Any, tiny_dir: Path, tiny_tok: Any,
                                                 tmp_path: Path, capsys: Capsys) -> None:
    """Both static graphs give the pruned PyTorch model's continuation perplexity."""
    plan = Plan.from_json(json.loads((built.artifact / "plan.json").read_text()))
    dense = tiny_llama(0)
    pruned = apply_plan_(copy.deepcopy(dense), plan, shape_of(dense))
    want = perplexity(torch_logits(pruned), tokens(tiny_tok), prompt_len=PROMPT)
    assert (built.artifact / "model.kv.json").is_file()  # the session build has the cache
    nocache = no_cache_build(tiny_dir, tmp_path)
    for artifact in (built.artifact, nocache):
        got = eval_json(capsys, artifact, "--prompt-len", str(PROMPT))
        assert got["prompt_len"] == PROMPT
        ppl = got["perplexity"]["data"]["pruned"]
        assert ppl["tokens"] == SAMPLES * (SEQ - PROMPT)
        assert ppl["ppl"] == pytest.approx(want.ppl, rel=1e-4)
    whole = eval_json(capsys, built.artifact)["perplexity"]["data"]["pruned"]
    assert whole["ppl"] != pytest.approx(want.ppl, rel=1e-3)


def no_cache_build(tiny_dir: Path, tmp_path: Path) -> Path:
    from prunec.runtime.build import BuildOptions, build

    spec = buildkit.make_spec(tiny_dir, plan=buildkit.manual_plan())
    export = dataclasses.replace(spec.exports[0], kv_cache=False)
    out = tmp_path / "nocache"
    build(dataclasses.replace(spec, exports=(export,)), Path.cwd(),
          BuildOptions(out, quiet=True), {"static": buildkit.compile_fn()})
    assert not (out / "model.kv.json").is_file()
    return out


def test_gated_artifact_scores_the_same_continuation(gated_build: Any,  # noqa: F811
                                                     capsys: Capsys) -> None:
    """A per-batch gated artifact runs whole sequences from its initial H; --prompt-len
    scores the continuation positions of those very logits."""
    _, out, _ = gated_build
    whole = eval_json(capsys, out)["perplexity"]["data"]["pruned"]
    cont = eval_json(capsys, out, "--prompt-len", str(PROMPT))["perplexity"]["data"]["pruned"]
    assert cont["tokens"] == SAMPLES * (SEQ - PROMPT)
    assert whole["tokens"] == SAMPLES * (SEQ - 1)
    assert cont["ppl"] != pytest.approx(whole["ppl"], rel=1e-3)


@pytest.mark.parametrize("p", ["0", "-3", str(SEQ), str(SEQ + 5)])
def test_bad_prompt_len_is_a_diagnostic(built: Any, p: str, capsys: Capsys) -> None:
    args = ["eval", str(built.artifact), "--data", str(buildkit.KJV_EVAL), "--samples", "2",
            "--seq-len", str(SEQ), "--prompt-len", p, "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "P0403" in err and "--prompt-len" in err and "Traceback" not in err


def test_a_prompt_mode_artifact_needs_a_probe_of_two_tokens() -> None:
    from prunec.compiler.ir import MIN_SEQ
    from prunec.runtime.gated import min_prompt_len

    assert min_prompt_len(None) == 1
    assert min_prompt_len({"policy": {"mode": "probe"}}) == 1
    assert min_prompt_len({"policy": {"mode": "prompt"}}) == MIN_SEQ == 2
