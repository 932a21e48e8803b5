"""Every route's body decoding and default error body (``server.web.errors``) called
directly: malformed JSON, a wrong type, a missing field, invalid UTF-8 and deep nesting are
each a 400 that names the problem (and the field where there is one), never echoing bytes."""

import json

import msgspec
import pytest

from server.core.errors import GatewayError
from server.faces.openai.wire import decode_chat_request
from server.ops.openapi_schema import ErrorBody
from server.web.errors import MAX_DEPTH, decode_json, error_body, json_depth


def _refused(body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        decode_chat_request(body)
    assert caught.value.status == 400
    return caught.value


def test_malformed_json_is_invalid_json_saying_where():
    err = _refused(b'{"model": "GLM-4.7", "messages": [}')
    assert err.kind == "invalid_json" and "JSON is malformed" not in err.detail


def test_a_wrong_type_names_the_field_by_its_path():
    err = _refused(b'{"model": "GLM-4.7", "messages": [{"role": "user", "content": 5}]}')
    assert err.kind == "invalid_request" and err.param == "messages[0].content"
    assert "invalid field 'messages[0].content'" in err.detail and "$" not in err.detail


def test_a_missing_required_field_is_named():
    err = _refused(b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert err.param == "model" and "model" in err.detail


def test_a_broken_constraint_names_the_field():
    err = _refused(b'{"model": "GLM-4.7", "messages": []}')
    assert err.param == "messages" and "length >= 1" in err.detail


def test_invalid_utf8_names_the_byte_and_its_place_but_not_the_text():
    err = _refused(b'{"model": "secret-\xff-text"}')
    # position 18 of the body, where the client can find it (not 7, inside the string)
    assert err.kind == "invalid_json" and "byte 0xff at position 18" in err.detail
    assert "secret" not in err.detail


def test_nesting_beyond_the_limit_is_refused_before_decoding():
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    err = _refused(b'{"model": "GLM-4.7", "messages": [], "metadata": ' + deep + b"}")
    assert err.kind == "invalid_json" and str(MAX_DEPTH) in err.detail


def test_brackets_inside_strings_do_not_count_as_depth():
    text = json.dumps({"s": "[" * 500 + "{" * 500}).encode()
    assert json_depth(text) == 1


def test_the_depth_is_the_deepest_nesting():
    body = b"[" * 70 + b"]" * 70 + b"[" * 80 + b"]" * 80
    assert json_depth(body) == 80


def test_a_recursion_error_in_the_decoder_is_a_400():
    def decoder(body: bytes) -> object:
        raise RecursionError

    with pytest.raises(GatewayError) as caught:
        decode_json(b"{}", decoder)
    assert caught.value.kind == "invalid_json"


def test_the_default_error_body_is_openai_shaped_with_kind_and_param():
    body = msgspec.json.decode(
        error_body(GatewayError("model_not_found", "no such model", param="model")),
        type=ErrorBody,
    )
    assert (body.error.code, body.error.type, body.error.param) == (
        "model_not_found",
        "invalid_request_error",
        "model",
    )
    assert body.error.message == "no such model"
