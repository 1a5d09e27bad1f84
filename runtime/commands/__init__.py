"""The ``prunec`` commands, one module each: check, fmt, explain, build, eval, plan, run,
generate; ``common`` holds what several share (spec loading, signals, artifact lookup, the
``--data`` options).

Each command module exposes ``register(subparsers)``, which adds its parser with
``set_defaults(handler=fn)``, ``fn(args) -> int`` being the exit status; ``prunec.runtime.cli``
registers them from one tuple. No module here imports torch at import time (``prunec check``
and ``--help`` stay fast); handlers import what they need.
"""
