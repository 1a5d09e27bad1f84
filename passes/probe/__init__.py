"""Probe Pruning (Le et al., ICLR 2025) in PyTorch: dynamic, batch-wise structured pruning.

Pipeline of this package: ``layout`` (which blocks are gated and how many units stay) ->
``history`` (H, initialised from calibration) -> ``model`` (the gated blocks: probe, fusion,
PPsp, TopK, gathered weights, EMA of H) -> ``forward`` (the whole gated forward of any
supported family, from the HF modules, and the eager runner) -> ``prompt`` (``mode =
prompt``: kept sets scored once per sequence from its prompt, fixed for its decode) ->
``prompt_graph`` (its prefill, gather and decode as exportable modules, on the same gated
blocks). ``maths`` holds the formulas; ``static`` the wanda-sp / flap baselines.
Entry points for the build driver: ``calibrate_history`` and (in prunec.runtime.gated)
``export_gated_onnx``.
"""

from prunec.passes.probe.forward import GatedModel, ProbeRunner, build_gated, initial_state
from prunec.passes.probe.history import BlockHistory, History, calibrate_history
from prunec.passes.probe.layout import BlockGate, GateKind, LayerGate, layer_gates
from prunec.passes.probe.prompt import PromptRunner, prompt_forward

__all__ = [
    "BlockGate", "BlockHistory", "GateKind", "GatedModel", "History", "LayerGate", "ProbeRunner",
    "PromptRunner", "build_gated", "calibrate_history", "initial_state", "layer_gates",
    "prompt_forward",
]
