"""JSON for the artifact's files: plain data from reports, and atomic writes.

``jsonable`` turns pass reports, export infos and method statistics into JSON data
(``to_json()`` when the object has one; dataclasses field by field; modules and other
non-data values become their type name, never their full repr). ``write_json`` replaces a
file atomically (a temporary file beside it, then a rename).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    """JSON data of a pass report / export info (see the module docstring)."""
    if hasattr(obj, "to_json"):
        return json.loads(json.dumps(obj.to_json(), default=str))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    return type(obj).__name__


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.prunec-tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
