"""Benchmark: how long ``prunec check`` takes on a generated 300-line spec.

Measures (1) the whole CLI in a fresh process (``python -m prunec check``: interpreter
start, imports, parser load, check), (2) ``check_source`` in-process on first call (parser
built or loaded from Lark's cache) and (3) warm (median of repeated calls). Prints a table
and writes JSON to bench/results/check_speed.json. CPU seconds are reported next to wall
seconds because a shared machine's load inflates wall time. Not a test: timings are reported, never
asserted. Usage: ``.venv/bin/python bench/check_speed.py [--lines 300] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "specs" / "data"


def generate(lines: int) -> str:
    """A valid spec on the demo model of about ``lines`` lines (datasets, plan, gates)."""
    out = ["# generated for bench/check_speed.py", 'name = "bench"', "model demo", ""]
    for i in range(max(1, (lines - 85) // 7 + 1)):
        lo, hi = (i % 10) * 10, (i % 10) * 10 + 10
        out += [f'dataset d{i} text "{DATA / "kjv-eval.txt"}" {{', "  samples = 8",
                "  seq_len = 64", f"  seed = {i}", f"  slice = {lo}% .. {hi}%", "}", ""]
    names = [line.split()[1] for line in out if line.startswith("dataset ")]
    out += ["plan {"]
    for layer in range(30):
        out.append(f"  keep {768 if layer % 2 else 1024} channels in layers[{layer}]  # mlp")
        out.append(f"  keep {6 if layer % 2 else 3} heads in layers[{layer}]")
    out += ["}", "", f"evaluate = [{', '.join(names)}]", "", "gates {"]
    out += [f"  perplexity({n}) <= 3x dense" for n in names[:8]] + ["  params <= 130M", "}"]
    out += ["", 'export onnx "model.onnx" {', "  opset = 18", "  providers = [cuda, cpu]", "}"]
    return "\n".join(out[:lines] if len(out) > lines + 40 else out) + "\n"


def time_cli(path: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + sys) seconds of fresh ``prunec check`` processes."""
    wall, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "prunec", "check", str(path)],
                              capture_output=True, text=True, check=False)
        wall.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"check failed:\n{done.stderr[-2000:]}")
    return wall, cpu


def time_in_process(text: str, path: Path, repeat: int) -> tuple[float, list[float]]:
    t = time.perf_counter()
    from prunec.compiler.driver import check_source

    spec, diags = check_source(text, str(path))
    first = time.perf_counter() - t
    assert spec is not None, [d.headline() for d in diags]
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        check_source(text, str(path))
        warm.append(time.perf_counter() - t)
    return first, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    text = generate(args.lines)
    run_on = machine.start()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.prune"
        path.write_text(text)
        cli, cli_cpu = time_cli(path, max(3, args.repeat // 4))
        first, warm = time_in_process(text, path, args.repeat)
    rows: dict[str, float | int] = {
        "lines": text.count("\n"),
        "cli_fresh_process_s_median": statistics.median(cli),
        "cli_fresh_process_cpu_s_median": statistics.median(cli_cpu),
        "in_process_first_call_s": first,
        "in_process_warm_s_median": statistics.median(warm),
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else
              f"{key:<{width}}  {value}")
    out = ROOT / "bench" / "results" / "check_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": run_on.entry(), **rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
