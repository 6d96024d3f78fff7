from __future__ import annotations

from pathlib import Path

import pytest

from covidcxr.data.paths import resolve_data_root

FIXTURES = Path(__file__).parent / "fixtures"


def _data_available() -> bool:
    try:
        resolve_data_root()
    except FileNotFoundError:
        return False
    return True


DATA_AVAILABLE = _data_available()
NO_DATA = "needs the development data (../shared/data or $COVIDCXR_DATA); absent here"
DATA_FIXTURES = {"data_root", "records"}


def pytest_collection_modifyitems(config, items):
    """Tests that read the development data are marked ``data``; without the data they are skipped, with the reason."""
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
        if not DATA_AVAILABLE and item.get_closest_marker("data"):
            item.add_marker(pytest.mark.skip(reason=NO_DATA))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The development data (../shared/data or $COVIDCXR_DATA); tests that use it are marked ``data``."""
    return resolve_data_root()


@pytest.fixture(scope="session")
def records(data_root):
    from covidcxr.data import load_records

    return load_records(data_root)


@pytest.fixture()
def fixtures() -> Path:
    return FIXTURES
