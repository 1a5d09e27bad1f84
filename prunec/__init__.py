"""prunec: a declarative model-compression DSL and compiler.

The pipeline lives in four subpackages whose folders sit at the repository's top level:
``prunec.grammar`` (Lark grammar, parse) -> ``prunec.compiler`` (typed IR, checks, plans)
-> ``prunec.passes`` (torch.fx passes) -> ``prunec.runtime`` (ONNX export, onnxruntime,
build driver, CLI). Imports flow one way, down that list; nothing above ``passes``
imports torch.
"""

__version__ = "0.1.0"
