"""Analysis: layers, blocks, coupled groups and repeat_kv sites; clear errors otherwise."""

from __future__ import annotations

import pytest
import torch
from graphkit import Captured
from torch import nn

from prunec.compiler.diagnostics import CompileError, Span
from prunec.compiler.ir import ModelShape
from prunec.passes.analysis import analyze, get_tensor
from prunec.passes.capture import capture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_layer_has_both_blocks(captured: Captured) -> None:
    gm = captured.graph()
    structure = analyze(gm, captured.shape)
    assert [layer.index for layer in structure.layers] == list(range(captured.shape.n_layers))
    names = {n.name: n for n in gm.graph.nodes}
    for layer in structure.layers:
        for residual in (layer.attention.residual, layer.mlp.residual):
            add = names[residual.add]
            assert add.target is torch.ops.aten.add.Tensor
        attn_in = names[layer.attention.residual.add].args[1 - layer.attention.residual.skip_arg]
        assert attn_in is names[layer.attention.o.node]


def test_coupled_groups_have_matching_widths(captured: Captured) -> None:
    gm, shape = captured.graph(), captured.shape
    layer = analyze(gm, shape).layers[0]
    for group, count in ((layer.channel_group(), shape.intermediate),
                         (layer.head_group(shape.head_dim), shape.n_heads),
                         (layer.kv_group(shape.head_dim), shape.n_kv_heads)):
        for m in group.members:
            assert get_tensor(gm, m.target).shape[m.dim] == count * m.unit, (group.kind, m)
    biased = captured.model.config.attention_bias
    assert len(layer.head_group(shape.head_dim).members) == (3 if biased else 2)


def test_repeat_kv_sites_found_per_layer(captured: Captured) -> None:
    structure = analyze(captured.graph(), captured.shape)
    assert all(len(layer.attention.repeat_kv) == 2 for layer in structure.layers)


class NotALlama(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.head = nn.Linear(16, 32)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))


def test_incompatible_model_is_a_compile_error_at_the_model_line() -> None:
    gm = capture_plain(NotALlama())
    shape = ModelShape("gpt", 2, 16, 64, 2, 2, 8, 32, False)
    span = Span("spec.prune", 3, 1, 3, 20)
    with pytest.raises(CompileError) as info:
        analyze(gm, shape, span)
    (diag,) = info.value.diagnostics
    assert diag.code == "P0501" and diag.span == span and "layers" in diag.message


def test_wrong_config_widths_are_reported(captured: Captured) -> None:
    s = captured.shape
    wrong = ModelShape(s.architecture, s.n_layers, s.hidden, s.intermediate + 8, s.n_heads,
                       s.n_kv_heads, s.head_dim, s.vocab, s.tied_embeddings)
    with pytest.raises(CompileError) as info:
        analyze(captured.graph(), wrong)
    assert info.value.diagnostics[0].code == "P0505"


def capture_plain(module: nn.Module) -> torch.fx.GraphModule:
    from prunec.passes.capture import export_logits

    gm = export_logits(module.eval()).module()
    assert isinstance(gm, torch.fx.GraphModule)
    return gm


def test_capture_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval"):
        capture(NotALlama().train())
