"""Runs every family-parametrised baseline test on a tiny ViT and a tiny Swin-V2."""

from __future__ import annotations

import pytest
from baseline_helpers import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param
