"""Shared fixtures: the real sample data folder and a small synthetic scene."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(rel: str) -> Path:
    """Path below ../shared/data, or skip the test with the reason."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"real sample data not available: {p} (the ../shared/data folder is missing)")
    return p


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory) -> Path:
    """A 3 x 3 km synthetic county; returns the path of its config.yaml."""
    from forestcarbon_synth import make_scene

    return make_scene(tmp_path_factory.mktemp("scene"), seed=7, size_km=3)
