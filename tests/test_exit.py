"""The exit hook (pymc_mixvcov._exit): what it changes at interpreter shutdown, and its switch."""

import os
import subprocess
import sys

import pytest

# an object with a finaliser inside a reference cycle that is still alive at exit: CPython's
# final collection runs the finaliser; with the library's exit hook the cycle is frozen instead
SCRIPT = """
import pymc_mixvcov

class Node:
    def __del__(self):
        print("finalised", flush=True)

a, b = Node(), Node()
a.other, b.other = b, a
del a, b
print("end", flush=True)
"""


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYMC_MIXVCOV_FAST_EXIT"}
    if env_value is not None:
        env["PYMC_MIXVCOV_FAST_EXIT"] = env_value
    cmd = [sys.executable, "-c", SCRIPT]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@pytest.mark.parametrize("value", [None, "1"])
def test_exit_hook_skips_the_last_collection(value):
    assert _run(value).split() == ["end"]


@pytest.mark.parametrize("value", ["0", "off"])
def test_exit_hook_can_be_turned_off(value):
    # CPython's default: the cycle is collected at shutdown and both finalisers run
    assert _run(value).split() == ["end", "finalised", "finalised"]
