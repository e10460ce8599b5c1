"""The collector pauses (pymc_mixvcov/_startup.py): they change when the collector runs during
the package's own work, nothing else; in particular no object changes generation."""

import gc
import json
import subprocess
import sys
import weakref

from pymc_mixvcov._startup import import_formulae, paused_gc


class _Node:
    def __init__(self):
        self.other = self


def _generation(obj) -> int | None:
    for g in range(3):
        if any(o is obj for o in gc.get_objects(generation=g)):
            return g
    return None


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


def test_objects_keep_their_generation_and_cycles_are_collected():
    gc.collect()
    frozen = gc.get_freeze_count()  # the interpreter may freeze its start-up objects: not ours
    mine = _Node()
    assert _generation(mine) == 0
    with paused_gc():
        made_inside = _Node()
        dropped = _Node()
        probe = weakref.ref(dropped)
    assert _generation(mine) == 0 and _generation(made_inside) == 0
    assert gc.get_freeze_count() == frozen
    del dropped
    assert probe() is not None  # a cycle: reference counting alone does not free it
    gc.collect(0)  # a young collection frees it
    assert probe() is None


def test_building_a_model_does_not_promote_the_callers_objects():
    import_formulae()  # imported once; every later call (each pmv.lmm) must leave the collector alone
    gc.collect()
    frozen = gc.get_freeze_count()
    mine = _Node()
    import_formulae()
    assert _generation(mine) == 0
    assert gc.get_freeze_count() == frozen


def test_importing_the_package_leaves_the_collector_as_it_was():
    # in a fresh interpreter: an object of the user's made before the import stays young, and the
    # collector's state (enabled, thresholds, nothing frozen) is what it was
    script = (
        "import gc, json\n"
        "gc.set_threshold(500, 7, 9)\n"
        "gc.collect()\n"
        "frozen = gc.get_freeze_count()\n"
        "class Node:\n"
        "    pass\n"
        "mine = Node()\n"
        "import pymc_mixvcov\n"
        "print(json.dumps({'in_oldest': any(o is mine for o in gc.get_objects(generation=2)),\n"
        "    'enabled': gc.isenabled(), 'threshold': gc.get_threshold(), 'frozen': gc.get_freeze_count() - frozen}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state == {"in_oldest": False, "enabled": True, "threshold": [500, 7, 9], "frozen": 0}


def test_importing_the_package_keeps_a_disabled_collector_disabled():
    script = "import gc\ngc.disable()\nimport pymc_mixvcov\nprint(gc.isenabled())\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-1] == "False"


def test_importing_the_package_leaves_heavy_optional_modules_unloaded():
    """``scipy.stats`` (about 0.4 s to import) and bambi are imported where they are used, not
    with the package: the import time is paid once per process by every user."""
    script = "import sys\nimport pymc_mixvcov\nprint(sorted(m for m in ('scipy.stats', 'bambi') if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "[]"
