"""prunec.runtime: model loading, capture, ONNX export, onnxruntime sessions, evaluation,
the build driver and the CLI.

The CLI modules must stay importable without torch (``prunec check`` never imports it);
torch-heavy modules are imported lazily by command handlers.
"""
