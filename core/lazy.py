"""Packages whose heavy submodules load on first use (PEP 562 module ``__getattr__``).

A classify run on OpenVINO or ONNX Runtime never imports torch or transformers (2-3 s of
start-up); the packages it goes through (``hardware``, ``backends``, ``tasks``) also hold the
torch code of the other runs. Their ``__init__`` imports the torch-free modules and names the
others here: ``from ..tasks import CaptionTask`` then imports ``tasks.caption`` (and torch) at
that moment, and a run that never asks never pays.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name of ``exports`` (``name → submodule``)
    is imported from that submodule on first access and kept on the package.

    Raises (from the returned function):
        AttributeError: a name the package does not have.
    """
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
