"""Where experiments write their JSON: one helper shared by the scripts in this folder."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(result: dict, out: str | None, default_name: str) -> Path:
    """Write ``result`` as JSON to ``out`` (default ``experiments/results/<default_name>``),
    print it, and return the path."""
    path = Path(out) if out else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    path.write_text(text + "\n")
    print(text)
    return path
