"""The import-time collector pause (pymc_mixvcov/_startup.py): it changes when cycles are
collected, never whether."""

import gc
import weakref

from pymc_mixvcov._startup import paused_gc


class _Node:
    def __init__(self):
        self.other = self


def test_state_is_restored():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a collector switched off by the caller stays off
    finally:
        gc.enable()


def test_objects_made_inside_go_to_the_oldest_generation_and_cycles_are_still_collected():
    with paused_gc():
        kept = _Node()
        dropped = _Node()
        probe = weakref.ref(dropped)
    assert any(o is kept for o in gc.get_objects(generation=2))
    del dropped
    assert probe() is not None  # a cycle: reference counting alone does not free it
    gc.collect()
    assert probe() is None


def test_without_promotion_objects_stay_young():
    gc.collect()
    with paused_gc(promote=False):
        young = _Node()
    assert not any(o is young for o in gc.get_objects(generation=2))
    assert any(o is young for o in gc.get_objects(generation=0))
