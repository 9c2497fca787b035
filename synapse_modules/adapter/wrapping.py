"""Replacing a method of a Synapse class once per process (media servlets, the login servlet,
the event-rules hook)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

WRAPPED = "_carematrix_wrapped"


def synapse_class(target: tuple[str, str]) -> type:
    """The class named by (module, class)."""
    module_name, class_name = target
    return getattr(importlib.import_module(module_name), class_name)


def wrap_once(target: tuple[str, str], method: str, wrap: Callable[[Any], Any]) -> None:
    """Replace ``method`` of a Synapse class (module, class) by ``wrap(original)``, once per
    process; the wrapper reads module-level state, so later installs need no new wrapper."""
    cls = synapse_class(target)
    original = getattr(cls, method)
    if getattr(original, WRAPPED, False):
        return
    wrapped = wrap(original)
    setattr(wrapped, WRAPPED, True)
    setattr(cls, method, wrapped)


def wrap_function_once(module_name: str, function: str, wrap: Callable[[Any], Any]) -> None:
    """Replace a module-level function of Synapse by ``wrap(original)``, once per process.
    Callers inside that module look the name up at call time, so they get the wrapper."""
    module = importlib.import_module(module_name)
    original = getattr(module, function)
    if getattr(original, WRAPPED, False):
        return
    wrapped = wrap(original)
    setattr(wrapped, WRAPPED, True)
    setattr(module, function, wrapped)
