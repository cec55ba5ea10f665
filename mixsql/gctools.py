"""Pausing Python's cyclic garbage collector around bulk construction of live objects."""
from __future__ import annotations

import contextlib
import functools
import gc


@contextlib.contextmanager
def gc_paused(active: bool = True):
    """Pause the cyclic collector while a large graph of objects that all stay alive is built (a
    long statement's tokens and nodes, a plan's thousands of groups, a split tree): its passes
    over the growing graph cost more than building it, and find nothing to free. Reference
    counting still frees everything it can. Nested (and concurrent) uses are harmless: only the
    outermost pause re-enables the collector."""
    if not active or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def without_gc(fn):
    """Decorator: ``fn`` runs inside :func:`gc_paused`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with gc_paused():
            return fn(*args, **kwargs)
    return wrapper


__all__ = ["gc_paused", "without_gc"]
