"""One spec per family of the support table (``tests/fixtures/families/<family>.prune``),
checked and built end to end through the CLI on a tiny random model of that family: a spec
``prunec check`` accepts builds (no false accepts), and check accepts the family's default
config (no false rejects) but rejects what the table says the family cannot do (probe).

The model directory is made by this file run as a script (no weights are committed)::

    python tests/runtime/test_family_specs.py qwen3 tests/fixtures/families/tiny-qwen3
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from prunec.compiler.driver import check_source
from prunec.compiler.families import FAMILIES, family
from prunec.runtime.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "families"
SPECS = sorted(p.stem for p in FIXTURES.glob("*.prune"))
KJV = Path(__file__).resolve().parents[2] / "specs" / "data" / "kjv-calib.txt"


def save_family_model(family_name: str, directory: Path) -> Path:
    """A tiny random model of ``family_name`` with the tiny BPE tokenizer, saved as an HF
    directory."""
    from buildkit import tiny_tokenizer
    from tinymodels import TinyConfig, tiny_model

    config = TinyConfig(layers=3, heads=8, kv_heads=4, head_dim=8)
    tiny_model(family_name, seed=1, config=config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


def test_every_table_family_but_the_original_three_has_a_spec() -> None:
    assert SPECS == sorted(f.model_type for f in FAMILIES[3:])


@pytest.mark.parametrize("name", SPECS)
def test_family_spec_checks_and_builds(name: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / f"{name}.prune"
    shutil.copy(FIXTURES / spec.name, spec)
    shutil.copy(KJV, tmp_path / KJV.name)
    save_family_model(name, tmp_path / f"tiny-{name}")
    assert main(["check", str(spec)]) == 0, capsys.readouterr().err
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] and report["params"]["pruned"] < report["params"]["dense"]
    assert (tmp_path / "out" / "genai_config.json").is_file() == family(name).kv_cache


PROBE_SPEC = ('model hf "m"\ndataset c text "t.txt" { samples = 2, seq_len = 32 }\n'
              "prune magnitude { target = 10%\n score = c }\nprobe { ratio = 20% }\n")


def _default_config(name: str) -> dict[str, object]:
    """The family's transformers default config, as ``save_pretrained`` writes it."""
    import transformers
    from tinymodels import FAMILY_CLASSES

    config_class, model_class = FAMILY_CLASSES[name]
    config = getattr(transformers, config_class)().to_dict()
    return {**config, "architectures": [model_class]}


@pytest.mark.parametrize("name", SPECS)
def test_check_follows_the_support_table(name: str, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(_default_config(name)))
    (tmp_path / "t.txt").write_text("in the beginning " * 100)
    static = PROBE_SPEC.replace("probe { ratio = 20% }\n", "")
    assert [d.code for d in check_source(static, str(tmp_path / "s.prune"))[1]] == []
    probe = [d.code for d in check_source(PROBE_SPEC, str(tmp_path / "s.prune"))[1]]
    assert probe == ([] if family(name).probe else ["P0226"])


if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
    save_family_model(sys.argv[1], Path(sys.argv[2]))
