"""How a command meets its terminal: progress bars.

Progress bars are drawn on a terminal (or in a notebook) only. Under CI, nohup or a redirect to a
file a bar would write a refresh many times a second into the log, so there it is off and the
commands print their plain lines instead (training: one per log step).
"""
from __future__ import annotations

import sys


def interactive(stream=None) -> bool:
    """True when ``stream`` (default: stderr) is a terminal, or inside a notebook kernel."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def progress(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar, shown when ``enabled`` and on a terminal; disabled otherwise (``bar.disable`` says which).

    Every progress bar of the package comes from here.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)


__all__ = ["interactive", "progress"]
