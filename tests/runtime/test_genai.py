"""onnxruntime-genai runs prunec's artifacts (``prunec.runtime.genai`` writes its config).

Real builds of the tiny model. The manual plan of ``buildkit`` (float32, plain graph; one
layer's attention removed, KV heads 2/2/1 in the others): ``onnxruntime_genai.Model`` loads
the artifact directory and its greedy tokens equal greedy decoding of the module-level
pruned reference (``passes.reference.apply_plan_``, full recompute, no cache). An MLP-only
plan exported as float16 with fused kernels: genai's tokens equal prunec's own runtime's
(``runtime.generate``) on the same file.
Slow: a SmolLM2 MLP-only artifact built by ``prunec build`` (fused graph) generates the same
32 greedy tokens in onnxruntime-genai as in prunec's own runtime (``runtime.generate``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import buildkit
import onnxruntime_genai as og
import pytest
import torch

from prunec.compiler.ir import (
    BlockKind,
    ExportDType,
    KeepChannels,
    LayerSelector,
    ManualPlan,
    RemoveBlock,
)
from prunec.compiler.ir import SelectorKind as K
from prunec.compiler.names import GENAI_CONFIG

PROMPT = "In the beginning God created"
NEW_TOKENS = 32


def mlp_only_plan() -> ManualPlan:
    """Channels kept in layers 0..2, layer 3's MLP removed; every attention block whole."""
    sel = buildkit.SPAN
    return ManualPlan((
        KeepChannels(LayerSelector(K.RANGE, 0, 2, sel), 64, None, buildkit.span(10)),
        RemoveBlock(LayerSelector(K.INDEX, 3, None, sel), BlockKind.MLP, buildkit.span(11)),
    ), buildkit.span(9))


@pytest.fixture(scope="module")
def mlp_only(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from prunec.runtime.build import BuildOptions, build

    spec = buildkit.make_spec(tiny_dir, plan=mlp_only_plan())
    export = dataclasses.replace(spec.exports[0], fuse=True, dtype=ExportDType.FLOAT16)
    spec = dataclasses.replace(spec, exports=(export,))
    out = tmp_path_factory.mktemp("genai") / "artifact"
    return build(spec, Path.cwd(), BuildOptions(out, quiet=True),
                 {"static": buildkit.compile_fn()})


def genai_greedy(artifact: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens from onnxruntime-genai on the artifact directory as it is."""
    model = og.Model(str(artifact))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens([prompt])
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)][len(prompt):]


def reference_greedy(model_dir: Path, artifact: Path, prompt: list[int], new_tokens: int,
                     eos: list[int]) -> list[int]:
    """Greedy decoding of the module-level pruned model, recomputing the whole sequence."""
    from tinymodels import tiny_llama

    from prunec.compiler.plan import Plan
    from prunec.passes.reference import apply_plan_

    plan = Plan.from_json(json.loads((artifact / "plan.json").read_text()))
    model = apply_plan_(copy.deepcopy(tiny_llama(0)), plan, buildkit.load_shape(model_dir))
    ids, out = list(prompt), []
    with torch.no_grad():
        while len(out) < new_tokens and (not out or out[-1] not in eos):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            out.append(int(logits[0, -1].argmax()))
            ids.append(out[-1])
    return out


def check_generates(artifact: Path, model_dir: Path, tok: Any) -> list[int]:
    config = json.loads((artifact / GENAI_CONFIG).read_text())
    prompt = tok(PROMPT)["input_ids"]
    got = genai_greedy(artifact, prompt, NEW_TOKENS)
    eos = config["model"]["eos_token_id"]
    assert got == reference_greedy(model_dir, artifact, prompt, NEW_TOKENS, eos)
    assert len(got) == NEW_TOKENS or got[-1] in eos
    return got


def test_mlp_only_float16_artifact_runs_in_onnxruntime_genai(mlp_only: Any,
                                                             tiny_tok: Any) -> None:
    from prunec.runtime.generate import Generator, SamplingConfig

    assert mlp_only.report["genai"] == {"written": True, "file": GENAI_CONFIG,
                                        "layers_with_cache": [0, 1, 2, 3]}
    assert json.loads((mlp_only.artifact / "report.json").read_text())["genai"]["written"]
    prompt = tiny_tok(PROMPT)["input_ids"]
    ours = Generator(mlp_only.artifact / "model.onnx").generate([prompt],
                                                                SamplingConfig(NEW_TOKENS))
    tokens = genai_greedy(mlp_only.artifact, prompt, NEW_TOKENS)
    assert tokens == list(ours.tokens[0])
    assert len(set(tokens)) > 1, "a degenerate sequence would prove little"


def test_per_layer_kv_heads_and_removed_attention_run_in_genai(built: Any, tiny_dir: Path,
                                                               tiny_tok: Any) -> None:
    """buildkit's manual plan: layer 1 has no attention, layers 0/2/3 keep 2/2/1 KV heads."""
    kv = json.loads((built.artifact / "model.kv.json").read_text())
    assert (kv["layers"], kv["kv_heads"]) == ([0, 2, 3], [2, 2, 1])
    assert built.report["genai"]["layers_with_cache"] == [0, 2, 3]
    check_generates(built.artifact, tiny_dir, tiny_tok)


def test_config_follows_the_manifest(mlp_only: Any) -> None:
    config = json.loads((mlp_only.artifact / GENAI_CONFIG).read_text())
    kv = json.loads((mlp_only.artifact / "model.kv.json").read_text())
    decoder = config["model"]["decoder"]
    assert decoder["filename"] == "model.onnx"
    assert (decoder["head_size"], decoder["num_key_value_heads"]) == (kv["head_dim"], 2)
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert decoder["outputs"]["present_value_names"] == "present.%d.value"
    assert config["search"]["past_present_share_buffer"] is False
    assert config["model"]["context_length"] == config["search"]["max_length"] == 512


def test_no_cache_no_config(tmp_path: Path) -> None:
    """A graph without ``model.kv.json`` (kv_cache = off, gated) gets no config, and why."""
    from prunec.compiler.ir import SMOLLM2_135M
    from prunec.runtime.genai import write_genai_config

    (tmp_path / "model.onnx").write_bytes(b"")
    entry = write_genai_config(tmp_path / "model.onnx", SMOLLM2_135M, None)
    assert entry["written"] is False and "no KV cache" in entry["reason"]
    assert not (tmp_path / GENAI_CONFIG).exists()


SMOLLM2_SPEC = """\
name = "smollm2-mlp-only"
model demo

dataset heldout text "EVAL" {
  samples = 4
  seq_len = 64
}

plan {
  keep 1024 channels in layers[4..19]
  remove layers[27].mlp
}

evaluate = [heldout]
export onnx "model.onnx"
"""


@pytest.mark.slow
def test_smollm2_mlp_only_genai_equals_prunec_runtime(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from prunec.runtime.cli import main
    from prunec.runtime.generate import Generator, SamplingConfig

    spec = tmp_path / "mlp.prune"
    spec.write_text(SMOLLM2_SPEC.replace("EVAL", str(buildkit.KJV_EVAL)))
    out = tmp_path / "art"
    assert main(["build", str(spec), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["genai"]["layers_with_cache"] == list(range(30))
    prompt = AutoTokenizer.from_pretrained(str(out))(PROMPT)["input_ids"]
    # genai's own tokenizer reads the artifact's (the tiny models' test tokenizer, with its
    # Whitespace pre-tokenizer, is one it cannot read, hence only here)
    assert [int(t) for t in og.Tokenizer(og.Model(str(out))).encode(PROMPT)] == prompt
    ours = Generator(out / "model.onnx").generate([prompt], SamplingConfig(NEW_TOKENS))
    got = genai_greedy(out, prompt, NEW_TOKENS)
    assert got == list(ours.tokens[0]) and len(got) >= 8
