"""The `Date` header formatter against the standard library's RFC 5322 one."""

from __future__ import annotations

import locale
from email.utils import formatdate

import pytest

from forkserve.response import http_date

MOMENTS = [0, 784111777, 951782400, 1_700_000_000.9, 2_000_000_000, 4_102_444_799]


@pytest.mark.parametrize("seconds", MOMENTS)
def test_matches_email_utils(seconds: float) -> None:
    assert http_date(seconds) == formatdate(seconds, usegmt=True)


def test_rfc_example() -> None:
    # RFC 9110 §5.6.7's own example.
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_ignores_the_process_locale() -> None:
    previous = locale.setlocale(locale.LC_TIME)
    for name in ("de_DE.UTF-8", "fr_FR.UTF-8", "C.UTF-8"):
        try:
            locale.setlocale(locale.LC_TIME, name)
        except locale.Error:
            continue
        try:
            assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
        finally:
            locale.setlocale(locale.LC_TIME, previous)
