import pytest


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """One cache of synthetic models for the whole test session (each is built once)."""
    return tmp_path_factory.mktemp("synthetic-models")
