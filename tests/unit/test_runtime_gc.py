"""The collector settings an open engine runs under (runtime._collector_tuned)."""

from __future__ import annotations

import gc

from llmbatch import runtime


def test_engine_runs_with_raised_thresholds_and_frozen_startup_objects_then_restores_them():
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with runtime._collector_tuned():
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert gc.get_freeze_count() > frozen_before  # what existed at the start is out of the collector's sight
        with runtime._collector_tuned():  # a second engine in the same process (tests, an embedding app)
            assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert gc.get_threshold() == runtime.GC_THRESHOLDS  # still one open engine
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_settings_come_back_when_the_engine_fails():
    before = gc.get_threshold()
    try:
        with runtime._collector_tuned():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
