from __future__ import annotations

from pathlib import Path

import pytest

from covidcxr.data.paths import resolve_data_root

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The development data (../shared/data or $COVIDCXR_DATA); tests that need it fail loudly without it."""
    return resolve_data_root()


@pytest.fixture(scope="session")
def records(data_root):
    from covidcxr.data import load_records

    return load_records(data_root)


@pytest.fixture()
def fixtures() -> Path:
    return FIXTURES
