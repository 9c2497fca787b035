"""Automatic collection pauses while a thread builds something large, and comes back as the
process had it, however the pauses overlap."""

from __future__ import annotations

import gc

from carematrix.gc_pause import automatic_gc_paused, without_automatic_gc


def test_overlapping_pauses_resume_collection_when_the_last_one_ends():
    assert gc.isenabled()
    first, second = automatic_gc_paused(), automatic_gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second build is still running
    second.__exit__(None, None, None)
    assert gc.isenabled()
    assert without_automatic_gc(gc.isenabled) is False and gc.isenabled()


def test_a_process_that_collects_on_its_own_keeps_automatic_collection_off():
    gc.disable()
    try:
        with automatic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
