"""A model over protobuf's 2 GB limit: build, load and generate, with the build's peak RSS.

The model: a random-weight Llama (seed 0, ``initializer_range`` 0.02) of about 630M
parameters — hidden 1536, MLP 4096, 22 layers, 12 heads over 4 KV heads (head_dim 128),
vocab 49152 (SmolLM2's tokenizer, copied from the demo model's cache), tied embeddings:
2.5 GB in float32 — saved as a Hugging Face directory in the work directory. The spec
(``model hf``) keeps 3072 of the 4096 MLP channels in layers 4..17 (a manual MLP-only
plan; still over 2 GB) and exports ``export onnx`` at its defaults (KV cache, fused,
float32), evaluating perplexity on 2 x 64 tokens of ``specs/data/kjv-eval.txt``.

``prunec build`` runs as a child process; its peak resident set is the largest per-stage
peak of its ``report.json`` (``memory``, ``runtime.stages``; the build resets the kernel's
high-water mark per stage, which lowers the child's ``ru_maxrss`` too), or, for a prunec
without per-stage memory (an older checkout run with ``PYTHONPATH``),
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits; ``peak_rss_source`` says
which, and ``ratio`` is that peak over the model's float32 weight bytes (tied embeddings
counted once). Then this process opens the artifact in onnxruntime
(``runtime.generate.Generator``, CPU) and generates ``--new-tokens`` greedy tokens from a
KJV prompt. ``bench/results/large_model.json`` records the model, the build's wall time and
peak RSS, the report's stage timings and parameter counts, every ONNX file with its size
(``model.onnx.data`` holds the weights: external data), the session's load time and the
generation's tokens and timings, with the machine (``bench/machine.py``).

Run: ``python bench/large_model.py [--new-tokens 16] [--workdir DIR] [--out FILE]``
(needs ~12 GB of memory and ~8 GB of disk in the work directory); ``--tiny`` runs the same
pipeline on a 4-layer model of the same vocab (a smoke test; write it elsewhere with --out).

``--smollm2 LABEL`` instead builds ``specs/smollm2-magnitude.prune`` (the demo model, a
static plan) once and records its peak RSS per stage under ``runs[LABEL]`` of
``bench/results/memory_smollm2.json`` (other labels in that file are kept: ``before`` was
measured on the previous commit with ``PYTHONPATH=<its checkout>``, ``after`` on this one).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "specs" / "data" / "kjv-eval.txt"
RESULTS = Path(__file__).parent / "results" / "large_model.json"
SMOLLM2_RESULTS = Path(__file__).parent / "results" / "memory_smollm2.json"
SMOLLM2_SPEC = ROOT / "specs" / "smollm2-magnitude.prune"
PROMPT = "And Jesus answered and said unto them,"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class Size:
    """The Llama config, and the manual plan's MLP cut (keep ``kept`` in ``cut_layers``)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    kept: int
    cut_layers: tuple[int, int]  # inclusive, as ``layers[a..b]``


FULL = Size(1536, 4096, 22, 12, 4, 3072, (4, 17))
TINY = Size(64, 256, 4, 4, 2, 192, (1, 2))


def llama_config(size: Size) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=size.hidden, intermediate_size=size.intermediate,
                       num_hidden_layers=size.layers, num_attention_heads=size.heads,
                       num_key_value_heads=size.kv_heads, vocab_size=49152,
                       max_position_embeddings=2048, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2, rms_norm_eps=1e-5,
                       initializer_range=0.02)


def demo_tokenizer_dir() -> Path:
    from prunec.compiler.diagnostics import Span
    from prunec.compiler.ir import DType, ModelDecl, ModelSource
    from prunec.runtime.models import resolve_directory

    decl = ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span.unknown("large_model"))
    return resolve_directory(decl, ROOT)[0]


def save_model(size: Size, directory: Path) -> dict[str, Any]:
    """The random-weight model and SmolLM2's tokenizer, saved as a HF directory."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    start = time.perf_counter()
    model = LlamaForCausalLM(llama_config(size))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    del model
    gc.collect()
    for name in TOKENIZER_FILES:
        if (demo_tokenizer_dir() / name).is_file():
            shutil.copy(demo_tokenizer_dir() / name, directory / name)
    weights = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    return {"params": params, "float32_bytes": params * 4, "safetensors_bytes": weights,
            "save_s": time.perf_counter() - start, **asdict(size), "vocab": 49152}


def spec_text(size: Size, model_dir: Path) -> str:
    a, b = size.cut_layers
    return (f'name = "large-random"\nmodel hf "{model_dir}"\n'
            f'dataset heldout text "{EVAL}" {{ samples = 2, seq_len = 64 }}\n'
            f"plan {{\n  keep {size.kept} channels in layers[{a}..{b}]\n}}\n"
            f'evaluate = [heldout]\nexport onnx "model.onnx"\n')


def build(spec: Path, out: Path, weight_bytes: int) -> dict[str, Any]:
    """``prunec build`` in a child process: wall seconds, peak RSS (GiB; per stage when the
    report has it) and its ratio to ``weight_bytes``."""
    prunec = Path(sys.executable).parent / "prunec"
    start = time.perf_counter()
    done = subprocess.run([str(prunec), "build", str(spec), "-o", str(out), "-q"], check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"prunec build exited {done.returncode}")
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    memory = json.loads((out / "report.json").read_text()).get("memory")
    peak_mib = memory["peak_rss_mb"] if memory else child_kib / 1024
    return {"wall_s": wall, "peak_rss_gib": peak_mib / 1024, "peak_rss_mib": peak_mib,
            "peak_rss_kib": round(peak_mib * 1024),
            "peak_rss_source": f"report.json memory ({memory['method']})" if memory
            else "ru_maxrss of the child", "child_ru_maxrss_kib": child_kib,
            "stages_peak_rss_mib": memory["stages_peak_rss_mb"] if memory else None,
            "float32_weight_bytes": weight_bytes,
            "ratio": round(peak_mib * 2**20 / weight_bytes, 2)}


def artifact_facts(out: Path) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()}
    return {"files": files, "external_data": "model.onnx.data" in files,
            "onnx_bytes": sum(v for k, v in files.items() if k.startswith("model.onnx")),
            "params": report["params"], "timings_s": report["timings_s"],
            "perplexity": report["perplexity"], "genai": report.get("genai")}


def generate(out: Path, new_tokens: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from prunec.runtime.generate import Generator, SamplingConfig

    start = time.perf_counter()
    gen = Generator(out / "model.onnx")
    load_s = time.perf_counter() - start
    prompt = list(AutoTokenizer.from_pretrained(str(out))(PROMPT)["input_ids"])
    result = gen.generate([prompt], SamplingConfig(max_new_tokens=new_tokens))
    return {"session_load_s": load_s, "prompt_tokens": len(prompt),
            "tokens": list(result.tokens[0]), "time_to_first_token_s":
            result.time_to_first_token_s, "decode_tokens_per_s": result.decode_tokens_per_s,
            "self_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(size: Size, workdir: Path, new_tokens: int) -> dict[str, Any]:
    run_on = machine.start()
    model_dir, out = workdir / "model", workdir / "artifact"
    model_dir.mkdir(parents=True, exist_ok=True)
    model = save_model(size, model_dir)
    spec = workdir / "large.prune"
    spec.write_text(spec_text(size, model_dir))
    result = {"benchmark": "large_model", "model": model, "spec": spec.read_text(),
              "build": build(spec, out, model["float32_bytes"])}
    result |= {"artifact": artifact_facts(out), "generate": generate(out, new_tokens)}
    return result | {"machine": run_on.entry()}


def smollm2_weight_bytes() -> int:
    """Float32 bytes of the demo model's tensors (its safetensors header; tied embeddings
    are stored, and counted, once)."""
    import struct

    path = demo_tokenizer_dir() / "model.safetensors"
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    sizes = (v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
             if k != "__metadata__")
    return sum(sizes)


def run_smollm2(label: str, workdir: Path, out: Path) -> None:
    """Build the demo's static spec once; record its peak RSS under ``runs[label]``."""
    run_on = machine.start()
    facts = build(SMOLLM2_SPEC, workdir / "artifact", smollm2_weight_bytes())
    report = json.loads((workdir / "artifact" / "report.json").read_text())
    facts |= {"spec": str(SMOLLM2_SPEC.relative_to(ROOT)), "timings_s": report["timings_s"],
              "machine": run_on.entry()}
    old = json.loads(out.read_text()) if out.is_file() else {}
    runs = old.get("runs", {}) | {label: facts}
    out.write_text(json.dumps({"benchmark": "memory_smollm2", "runs": runs}, indent=1) + "\n")
    print(f"{label}: peak RSS {facts['peak_rss_mib']:.0f} MiB = {facts['ratio']:.2f}x the "
          f"float32 weights ({facts['float32_weight_bytes'] / 2**20:.0f} MiB); per stage "
          f"{facts['stages_peak_rss_mib']}")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 4-layer model (smoke test)")
    parser.add_argument("--smollm2", metavar="LABEL",
                        help="build the demo's static spec; record its RSS under LABEL")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    if args.smollm2:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            run_smollm2(args.smollm2, Path(tmp), SMOLLM2_RESULTS if args.out == RESULTS
                        else args.out)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        result = run(TINY if args.tiny else FULL, Path(tmp), args.new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    b, a, g = result["build"], result["artifact"], result["generate"]
    print(f"params {result['model']['params']:,}; build {b['wall_s']:.0f} s, peak RSS "
          f"{b['peak_rss_gib']:.2f} GiB ({b['ratio']:.2f}x weights); ONNX {a['onnx_bytes'] / 2**30:.2f} GiB, external "
          f"data {a['external_data']}; {len(g['tokens'])} tokens, first after "
          f"{g['time_to_first_token_s']:.2f} s, {g['decode_tokens_per_s']:.2f} tokens/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
