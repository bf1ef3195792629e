"""Run an `slm` command and SIGKILL it at a chosen point — what a power cut or an OOM kill does.

    python killer.py MODULE.ATTR N before|after [MODULE.ATTR=NUMBER ...] -- ARGS...

kills the process at the N-th call of MODULE.ATTR (before or after the call runs); the optional
assignments set module constants first (e.g. how often scoring flushes).

Nothing runs after the kill (no finally, no atexit), so the files are left exactly as a real kill leaves them.
"""
import importlib
import os
import signal
import sys


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1:]
    spec = sys.argv[1:sys.argv.index("--")]
    for assignment in spec[3:]:
        name, value = assignment.split("=")
        mod_name, attr = name.rsplit(".", 1)
        setattr(importlib.import_module(mod_name), attr, float(value))
    target, n, when = spec[0], int(spec[1]), spec[2]
    mod_name, attr = target.rsplit(".", 1)
    mod = importlib.import_module(mod_name)
    real, calls = getattr(mod, attr), [0]

    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*a, **k)
        if calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(mod, attr, wrapper)
    from selective_lm.cli import main as slm

    return slm(argv)


if __name__ == "__main__":
    sys.exit(main())
