"""The OpenAPI 3.1 document, assembled from one fragment per handler module.

``base.json`` holds the info and shared components; each ``paths/<module>.json`` holds
``{"paths": {...}, "components": {"schemas": {...}}}`` for that module's routes, so the
document of a route lives beside the others of its module. A unit test keeps the
assembled document and the app's routes identical.

Example
-------
>>> document()["openapi"]
'3.1.0'
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The whole document, assembled once per container."""
    result = json.loads((FOLDER / "base.json").read_text(encoding="utf-8"))
    for fragment_path in sorted((FOLDER / "paths").glob("*.json")):
        fragment = json.loads(fragment_path.read_text(encoding="utf-8"))
        for path, item in fragment.get("paths", {}).items():
            if path in result["paths"]:
                raise ValueError(f"{fragment_path.name}: path {path} is documented twice")
            result["paths"][path] = item
        for kind, entries in fragment.get("components", {}).items():
            target = result.setdefault("components", {}).setdefault(kind, {})
            for name, entry in entries.items():
                if name in target:
                    raise ValueError(f"{fragment_path.name}: component {kind}/{name} is defined twice")
                target[name] = entry
    result["paths"] = dict(sorted(result["paths"].items()))
    return result
