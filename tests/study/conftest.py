"""Shared fixtures of the study report tests: one synthetic v2 study (3 seeds, 10 checkpoints) per session."""
from __future__ import annotations

import pytest
from synthetic_study import build_study


@pytest.fixture(scope="session")
def v2_study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("v2"))
