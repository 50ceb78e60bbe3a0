"""Request ids (``api.middleware.request_id``): an offered id that is not sane is replaced."""

from __future__ import annotations

import re

import pytest

from api.middleware.request_id import pick_request_id

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("offered", ["", " ", "a" * 129, "bad\u00e9", "two words"])
def test_an_insane_request_id_is_replaced(offered: str) -> None:
    assert HEX_ID.fullmatch(pick_request_id(offered))
    assert pick_request_id("a" * 128) == "a" * 128
