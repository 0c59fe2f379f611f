"""Fixtures for integration tests: a registry on each database backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.registry import RunningRegistry, database, registry_settings, running_registry


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with database(backend, tmp_path) as url:
        yield url


@pytest.fixture
async def registry(db_url: str, tmp_path: Path) -> AsyncIterator[RunningRegistry]:
    async with running_registry(registry_settings(db_url, tmp_path)) as running:
        yield running
