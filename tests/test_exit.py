"""Importing the package leaves the interpreter's exit alone; the command line's own process
skips the last collector passes (pymc_mixvcov._exit, installed by pymc_mixvcov.cli.main)."""

import os
import subprocess
import sys

import pytest

# an object with a finaliser inside a reference cycle that is still alive at exit: CPython's
# final collection runs the finaliser; the command line's exit hook freezes the cycle instead
CYCLE = """
class Node:
    def __del__(self):
        print("finalised", flush=True)

a, b = Node(), Node()
a.other, b.other = b, a
del a, b
"""


def _run(script: str, env_value: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYMC_MIXVCOV_FAST_EXIT"}
    if env_value is not None:
        env["PYMC_MIXVCOV_FAST_EXIT"] = env_value
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("value", [None, "1", "0"])
def test_importing_the_package_keeps_the_users_finalisers(value):
    script = "import pymc_mixvcov\n" + CYCLE + "print('end', flush=True)\n"
    assert _run(script, value) == ["end", "finalised", "finalised"]


def test_importing_the_package_registers_no_exit_hook():
    # the dependencies first (they may register their own hooks), then the package alone
    script = (
        "import atexit, gc\n"
        "import formulae, numpy, pandas, pymc, pytensor, scipy.optimize\n"
        "before = atexit._ncallbacks()\n"
        "import pymc_mixvcov\n"
        "print(before, atexit._ncallbacks())\n"
    )
    before, after = _run(script)
    assert before == after


# the command as its entry point runs it (argv from sys.argv; '--help' exits after the hook is in),
# then a garbage cycle with finalisers that is still uncollected at exit
COMMAND = (
    """
import sys
from pymc_mixvcov.cli import main
sys.argv = ["pymc-mixvcov", "--help"]
try:
    main()
except SystemExit:
    pass
"""
    + CYCLE
    + """
print("end", flush=True)
"""
)


@pytest.mark.parametrize("value", [None, "1"])
def test_the_command_skips_the_last_collection(value):
    assert _run(COMMAND, value)[-1] == "end"  # no finaliser after the end


@pytest.mark.parametrize("value", ["0", "off"])
def test_the_commands_exit_hook_can_be_turned_off(value):
    assert _run(COMMAND, value)[-3:] == ["end", "finalised", "finalised"]


def test_main_called_from_python_installs_nothing():
    script = (
        ("from pymc_mixvcov.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n")
        + CYCLE
        + "print('end', flush=True)\n"
    )
    assert _run(script)[-3:] == ["end", "finalised", "finalised"]
