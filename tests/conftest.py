import pytest

from vitlib import checks


@pytest.fixture(autouse=True)
def _forget_passed_checks():
    """Each test starts with no check recorded as passed (`checks.mine_or_reference` reads that record)."""
    checks.reset()
    yield
    checks.reset()
