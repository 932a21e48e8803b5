"""The failure tables of ``server.zai.failures`` read directly: every HTTP status and in-band
code of PROTOCOL.md sections 4 and 6 maps to the error kind section 5 asks for, checked both on
the recorded error answers in ``cassettes/`` and on the table's own rows."""

import msgspec
import pytest

from server.core.errors import RULES
from server.zai.failures import (
    HTTP_KINDS,
    INBAND_KINDS,
    http_failure,
    inband_failure,
    is_content_filter,
)
from server.zai.frames import UpstreamError, decode_frame
from server.zai.sse import SSEReader
from tests.recorded import interactions


def _completion_answer(name: str) -> tuple[int, bytes]:
    for item in interactions(name):
        if "/chat/completions" in item["request"]["uri"]:
            response = item["response"]
            return response["status"]["code"], response["body"]["string"].encode()
    raise LookupError(name)


def _first_failure(body: bytes) -> UpstreamError:
    for payload in SSEReader().feed(body):
        frame = decode_frame(payload)
        if frame is not None and frame.failure is not None:
            return frame.failure
    raise LookupError("no in-band error in the stream")


@pytest.mark.parametrize(
    ("cassette", "kind"),
    [
        ("error_http_400_signature", "signature_rejected"),
        ("error_http_401", "token_rejected"),
        ("error_http_405_waf", "waf_blocked"),
        ("error_http_426", "version_outdated"),
        ("error_http_429", "rate_limited"),
        ("error_http_500", "unavailable"),
    ],
)
def test_each_recorded_http_error_is_its_protocol_kind(cassette: str, kind: str):
    status, body = _completion_answer(cassette)
    assert status != 200
    err = http_failure(status, body, model="glm-4.7")
    assert err.kind == kind
    assert err.model == "glm-4.7"
    assert str(status) in err.detail


@pytest.mark.parametrize(
    ("cassette", "kind"),
    [
        ("error_inband_426", "version_outdated"),
        ("error_inband_captcha", "captcha_required"),
        ("error_inband_concurrency", "rate_limited"),
        ("error_inband_model_403", "model_forbidden"),
    ],
)
def test_each_recorded_inband_error_is_its_protocol_kind(cassette: str, kind: str):
    status, body = _completion_answer(cassette)
    assert status == 200
    failure = _first_failure(body)
    assert not is_content_filter(failure)
    assert inband_failure(failure).kind == kind


def test_the_recorded_content_security_stop_is_a_filter_not_a_failure():
    _, body = _completion_answer("stream_content_filter")
    assert is_content_filter(_first_failure(body))


def test_every_kind_in_the_tables_is_a_row_of_the_rules():
    assert set(HTTP_KINDS.values()) | set(INBAND_KINDS.values()) <= set(RULES)


@pytest.mark.parametrize(("status", "kind"), sorted(HTTP_KINDS.items()))
def test_each_listed_http_status_maps_to_its_kind_for_a_json_body(status: int, kind: str):
    assert http_failure(status, b'{"detail": "nope"}').kind == kind


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_any_5xx_is_unavailable_and_so_retried(status: int):
    err = http_failure(status, b"")
    assert err.kind == "unavailable"
    assert err.rule.retry > 0


@pytest.mark.parametrize("status", [400, 404, 418, 422])
def test_an_unlisted_4xx_is_a_bad_response(status: int):
    assert http_failure(status, b'{"detail": "Not Found"}').kind == "bad_response"


def test_a_400_is_a_signature_rejection_only_when_the_body_says_so():
    plain = http_failure(400, b'{"detail": "missing field"}')
    assert plain.kind == "bad_response"
    signed = http_failure(400, b'{"detail":"403: Signature validation failed: x"}')
    assert signed.kind == "signature_rejected"
    assert "Signature validation failed" in signed.detail


@pytest.mark.parametrize(
    "mark", ["blocked as it may cause potential threats", "errors.aliyun.com", "您的访问被阻断"]
)
@pytest.mark.parametrize("status", [403, 405])
def test_an_html_page_with_any_waf_marker_is_a_waf_block(status: int, mark: str):
    page = f"<!doctype html><html><body>{mark}</body></html>".encode()
    err = http_failure(status, page)
    assert err.kind == "waf_blocked"
    assert "<" not in err.detail  # the page's HTML never reaches the client


def test_a_403_html_page_without_a_waf_marker_is_a_rejected_token():
    assert http_failure(403, b"<html>Forbidden</html>").kind == "token_rejected"


def test_a_405_json_answer_is_not_taken_for_the_waf():
    # The WAF probe of PROTOCOL.md 6.3: a lifted block answers JSON, not the page
    assert http_failure(405, b'{"detail": "blocked as it may cause potential threats"}').kind != (
        "waf_blocked"
    )


def test_an_html_body_is_never_echoed_into_the_detail():
    err = http_failure(502, b"<html><body>Bad gateway from nginx</body></html>")
    assert err.detail == "HTTP 502"


def test_a_json_detail_is_quoted_and_a_long_one_cut():
    err = http_failure(500, msgspec.json.encode({"detail": "x" * 1000}))
    assert err.detail.startswith("HTTP 500: xxx")
    assert len(err.detail) <= len("HTTP 500: ") + 300


def test_a_text_body_is_quoted_on_one_line():
    err = http_failure(502, b"upstream\n  connect\terror")
    assert err.detail == "HTTP 502: upstream connect error"


def test_an_undecodable_body_does_not_raise():
    assert http_failure(500, b"\xff\xfe\x00garbage").kind == "unavailable"


@pytest.mark.parametrize(("code", "kind"), sorted(INBAND_KINDS.items(), key=str))
def test_each_inband_code_maps_to_its_kind(code: int | str, kind: str):
    assert inband_failure(UpstreamError(code=code, detail="d")).kind == kind


def test_an_inband_error_code_is_read_when_code_is_missing():
    err = inband_failure(UpstreamError(error_code="F018", detail="stale"))
    assert err.kind == "captcha_required"


def test_an_unknown_inband_code_is_a_bad_response_naming_the_code():
    err = inband_failure(UpstreamError(code="INTERNAL_ERROR", detail="oops"))
    assert err.kind == "bad_response"
    assert "oops" in err.detail and "INTERNAL_ERROR" in err.detail


def test_an_inband_error_without_detail_names_its_code():
    err = inband_failure(UpstreamError(code="MODEL_CONCURRENCY_LIMIT"))
    assert "MODEL_CONCURRENCY_LIMIT" in err.detail
    assert inband_failure(UpstreamError()).detail == "unknown error"


def test_the_guest_model_refusal_names_the_model_to_the_client():
    err = inband_failure(UpstreamError(code=403, detail="Model not available"), model="glm-5")
    assert err.status == 403
    assert "glm-5" in err.message


def test_a_content_warning_detail_is_a_filter_even_with_a_code():
    assert is_content_filter(UpstreamError(code=400, detail="Content Security Warning: x"))


def test_content_without_code_is_a_filter_and_a_coded_error_is_not():
    assert is_content_filter(UpstreamError(content="withheld"))
    assert not is_content_filter(UpstreamError(code=426, detail="outdated", content="x"))
    assert not is_content_filter(UpstreamError(code=429, detail="busy"))
