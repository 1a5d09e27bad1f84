"""Shared helpers of the runtime tests (not a test module): a tiny HF model directory with a
matching tiny tokenizer, spec construction, and a reference compile backend.

The reference backend (module-level ``apply_plan_`` then ``torch.onnx.export``) is used ONLY
when the graph compiler (``prunec.runtime.export``) is not importable yet; otherwise the
tests run the real ``graph_compile``.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import torch

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    DataFormat,
    DatasetDecl,
    DType,
    Gate,
    ManualPlan,
    ModelDecl,
    ModelSource,
    OnnxExport,
    Provider,
    SliceRange,
    Spec,
)

ROOT = Path(__file__).resolve().parents[2]
KJV_CALIB = ROOT / "specs" / "data" / "kjv-calib.txt"
KJV_EVAL = ROOT / "specs" / "data" / "kjv-eval.txt"
SPAN = Span("test.prune", 1, 1, 1, 2)


def span(line: int) -> Span:
    return Span("test.prune", line, 1, line, 2)


def tiny_tokenizer(vocab: int = 160) -> Any:
    """A word-piece-free BPE tokenizer trained on the KJV calibration text (ids < vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["[UNK]", "</s>"],
                                  limit_alphabet=70, show_progress=False)
    tok.train([str(KJV_CALIB)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    from tinymodels import tiny_llama

    tiny_llama(seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


def dataset(name: str, path: Path | str, samples: int = 4, seq_len: int = 32, seed: int = 0,
            cut: tuple[float, float] | None = None, fmt: DataFormat = DataFormat.TEXT,
            field: str | None = None) -> DatasetDecl:
    sl = SliceRange(cut[0], cut[1], SPAN) if cut else None
    return DatasetDecl(name, fmt, (str(path),), field, samples, seq_len, seed, sl, SPAN)


def make_spec(model_dir: Path, *, plan: ManualPlan | None = None, gates: tuple[Gate, ...] = (),
              output: str | None = None, datasets: tuple[DatasetDecl, ...] | None = None,
              evaluate: tuple[str, ...] = ("eval",)) -> Spec:
    ds = datasets if datasets is not None else (dataset("eval", KJV_EVAL, cut=(0.0, 0.5)),)
    model = ModelDecl(ModelSource.HF_DIR, str(model_dir), DType.FLOAT32, span(2))
    export = OnnxExport("model.onnx", 18, False, (Provider.CPU,), span(20))
    return Spec("tiny", "test.prune", model, ds, None, plan, None, evaluate, gates, (export,),
                output, SPAN)


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits  # type: ignore


def reference_compile(job: Any) -> dict[str, Any]:
    """apply_plan_ on a copy of the module, then torch.onnx.export (dynamo)."""
    from prunec.passes.reference import apply_plan_

    model = apply_plan_(copy.deepcopy(job.model), job.plan, job.shape)
    ids = torch.zeros((2, 8), dtype=torch.long)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    torch.onnx.export(_Logits(model), (ids,), str(job.path), input_names=["input_ids"],
                      output_names=["logits"], opset_version=job.opset, dynamo=True,
                      dynamic_shapes={"input_ids": dims}, verbose=False,
                      optimize=False)
    return {"backend": "reference"}


def compile_fn() -> Any:
    """The real graph backend when it exists, else the reference one."""
    if importlib.util.find_spec("prunec.runtime.export") is not None:
        from prunec.runtime.backends import graph_compile

        return graph_compile
    return reference_compile


def manual_plan() -> ManualPlan:
    """A plan touching every action kind on the 4-layer tiny model."""
    from prunec.compiler.ir import (
        BlockKind,
        KeepChannels,
        KeepHeads,
        LayerSelector,
        RemoveBlock,
        SelectorKind,
    )

    def sel(kind: SelectorKind, a: int | None, b: int | None = None) -> LayerSelector:
        return LayerSelector(kind, a, b, SPAN)

    return ManualPlan((
        RemoveBlock(sel(SelectorKind.INDEX, 1), BlockKind.ATTN, span(10)),
        KeepChannels(sel(SelectorKind.RANGE, 0, 1), 64, None, span(11)),
        KeepHeads(sel(SelectorKind.INDEX, 2), 4, None, span(12)),
        KeepHeads(sel(SelectorKind.INDEX, 3), None, (0, 1, 2), span(13)),
        RemoveBlock(sel(SelectorKind.INDEX, -1), BlockKind.MLP, span(14)),
    ), span(9))


def copy_compile(source: Path) -> Any:
    """A backend that copies an ONNX file built earlier for the same plan (fast builds for
    the artifact, gate and kill tests; the real compile is tested once in test_build)."""
    import shutil

    stem = source.name.removesuffix(".onnx")

    def run(job: Any) -> dict[str, Any]:
        new = job.path.name.removesuffix(".onnx")
        for f in source.parent.iterdir():  # the file and its sidecars (.onnx.data, .kv.json)
            if f.name.startswith(stem + "."):
                shutil.copy(f, job.path.parent / (new + f.name[len(stem):]))
        return {"backend": "copy", "source": str(source)}

    return run


def main(argv: list[str]) -> int:
    """``python buildkit.py MODEL_DIR OUT ONNX_SRC [GATE]``: a build for the kill tests."""
    from prunec.compiler.ir import ParamsGate
    from prunec.runtime.build import BuildOptions, build
    from prunec.runtime.commands.common import with_signals

    model_dir, out, src = Path(argv[0]), Path(argv[1]), Path(argv[2])
    gates = (ParamsGate(1, span(30)),) if argv[3:] == ["fail"] else ()
    spec = make_spec(model_dir, plan=manual_plan(), gates=gates)
    options = BuildOptions(out, quiet=True)
    return int(with_signals(lambda: 0 if build(spec, Path.cwd(), options,
                                                {"static": copy_compile(src)}).passed else 1))


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))


def load_shape(model_dir: Path) -> Any:
    """The ModelShape of a saved model directory."""
    from prunec.runtime.models import load_model

    decl = ModelDecl(ModelSource.HF_DIR, str(model_dir), DType.FLOAT32, SPAN)
    return load_model(decl, Path("/")).shape
