"""What every test of a check needs: a stub, and the assertion that a failure teaches."""

from __future__ import annotations

import re

import pytest

from vitlib.checks import CheckFailed


def stub(*args, **kwargs):
    """What a student's untouched exercise does."""
    raise NotImplementedError("write this exercise, then run the check cell below")


def expect_failure(check, student, hint_pattern: str) -> str:
    """`check(student)` raises CheckFailed naming expected, got, and a hint matching `hint_pattern` (a regex)."""
    with pytest.raises(CheckFailed) as info:
        check(student)
    message = str(info.value)
    for part in ("expected:", "got:", "hint:"):
        assert part in message, message
    assert re.search(hint_pattern, message), message
    return message
