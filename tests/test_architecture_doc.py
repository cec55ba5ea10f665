"""ARCHITECTURE.md names only things that exist: every backticked ``mixsql.<module>[.<attr>...]``."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "ARCHITECTURE.md"
NAME = re.compile(r"`(mixsql(?:\.\w+)+)`")


def _resolve(dotted: str) -> None:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    raise ModuleNotFoundError(dotted)


def test_every_named_module_class_and_function_exists():
    names = sorted(set(NAME.findall(DOC.read_text())))
    assert len(names) > 30
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert not missing, f"ARCHITECTURE.md names things that do not exist: {missing}"
