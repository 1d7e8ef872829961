import pytest


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """One cache of synthetic models for the whole test session (each is built once)."""
    return tmp_path_factory.mktemp("synthetic-models")


@pytest.fixture
def cpu_pool(tmp_path):
    """A private pool of 4 CPU slots (its own lock directory, so parallel test runs do not meet)."""
    from pytest_llmperf.pool import DevicePool, discover

    return DevicePool(discover("cpu", 4), tmp_path / "pool")
