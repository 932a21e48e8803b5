"""The route table's dict lookup (server/app.py): only literal paths no earlier rule takes."""

from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import RequestHandler

from server.app import ROUTES, Gateway, WithHeader, exact_routes


class A(RequestHandler):
    pass


class B(RequestHandler):
    pass


def test_a_literal_path_shadowed_by_an_earlier_rule_is_left_to_the_rules():
    routes = [
        (WithHeader("/m", "x-face"), A, {}),
        ("/m", B, {}),
        ("/a/(.+)", A, {}),
        ("/a/b", B, {}),  # the regex before it takes it
        ("/c", A, {"n": 1}),
        ("/c", B, {}),  # the first of two wins, as in tornado
        ("/d.json", B, {}),
    ]
    assert exact_routes(routes) == {"/c": (A, {"n": 1}), "/d.json": (B, {})}
    table = exact_routes([(path, handler, {}) for path, handler in ROUTES])
    assert {"/v1/chat/completions", "/v1/messages", "/v1/responses"} <= set(table)
    assert "/v1/models" not in table  # the Anthropic face's rule for it comes first


def test_the_lookup_finds_what_tornados_rules_find():
    routes = [(path, handler, {"services": None}) for path, handler in ROUTES]
    app = Gateway(routes)
    for path, headers in [
        ("/v1/chat/completions", {}),
        ("/v1/models", {}),
        ("/v1/models", {"anthropic-version": "2023-06-01"}),
        ("/v1/keys/0123456789ab", {}),
        ("/nowhere", {}),
    ]:
        line = RequestStartLine("GET", path, "HTTP/1.1")
        request = HTTPServerRequest(start_line=line, headers=HTTPHeaders({"Host": "x", **headers}))
        fast = app.find_handler(request)
        app.exact = {}
        slow = app.find_handler(request)
        app.exact = exact_routes(routes)
        assert fast.handler_class is slow.handler_class, path
        assert fast.path_args == slow.path_args
