"""Request body limits: one source of the limits and one rule (``api.body_limits``), with the
refusals each place gave before (code, message, the setting it names)."""

from __future__ import annotations

from api.body_limits import MAX_JSON_BYTES, json_turn_limit, request_limit, upload_limit
from shared.settings import MULTIPART_OVERHEAD_BYTES, Settings


def test_each_limit_comes_from_its_setting() -> None:
    settings = Settings(max_upload_bytes=1000, max_request_bytes=1000 + MULTIPART_OVERHEAD_BYTES)
    assert request_limit(settings).max_bytes == settings.request_bytes_limit
    assert upload_limit(settings).max_bytes == 1000
    assert json_turn_limit().max_bytes == MAX_JSON_BYTES


def test_a_declared_length_is_judged_with_its_framing() -> None:
    settings = Settings(max_upload_bytes=1000)
    upload = upload_limit(settings)
    assert not upload.declared_over(str(1000 + MULTIPART_OVERHEAD_BYTES))
    assert upload.declared_over(str(1001 + MULTIPART_OVERHEAD_BYTES))
    assert not upload.declared_over("") and not upload.declared_over("12a")
    assert upload.over(1001) and not upload.over(1000)
    json = json_turn_limit()
    assert json.declared_over(str(MAX_JSON_BYTES + 1))
    assert not json.declared_over(str(MAX_JSON_BYTES))


def test_refusals_keep_their_codes_and_messages() -> None:
    settings = Settings(max_upload_bytes=1000)
    upload = upload_limit(settings)
    err = upload.refuse(upload.declared_message("99999999"))
    assert (err.status_code, err.code) == (413, "upload_too_large")
    assert str(err) == "upload is 99999999 bytes; the limit is 1000 (max_upload_bytes)"
    json = json_turn_limit()
    err = json.refuse(json.declared_message("70000"))
    assert err.code == "payload_too_large"
    assert str(err) == f"request body is 70000 bytes; the limit is {MAX_JSON_BYTES}"
    request = request_limit(settings)
    assert request.code == "request_too_large"
    assert request.declared_message("5").endswith("(max_request_bytes)")
