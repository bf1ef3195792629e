"""Every `slm ...` command the README shows (and every `torchrun ... -m selective_lm ...` one) parses as
written: run with --dry-run, it exits 0. Commands with a `...` placeholder are left out."""
import re
import shlex
from pathlib import Path

import pytest

from selective_lm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if "..." in line or line.startswith("#"):
                continue
            m = re.search(r"(?:^|&& )(?:\.venv/bin/)?slm ((?:prepare|train|score|eval|filter|study|corpora|export)\b.*)$",
                          line) or re.search(r"-m selective_lm ((?:prepare|train|score|eval)\b.*)$", line)
            if m:
                cmds.append(m.group(1))
    return cmds


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_parses(cmd, capsys):
    assert main(shlex.split(cmd) + ["--dry-run"]) == 0, capsys.readouterr().err
