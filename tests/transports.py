"""Both upstream transports for the tests: ``UPSTREAM_TRANSPORT=native`` (server/transport.py)
and ``impersonate`` (server/impersonate.py, curl_cffi), which must behave alike.

Owns the ``transport`` fixture, parametrized over the two: ``transport.open_stream`` is that
transport's ``open_stream`` (the same signature), ``transport.name`` its setting value, and
``transport.trust(cafile)`` makes it trust a test CA for https. Impersonators are closed after
the test. Without curl_cffi the impersonate half skips, so it fails under ``CI=true``.
"""

import ssl

import pytest
from tornado.ioloop import IOLoop

from server.transport import NativeTransport

NAMES = ["native", "impersonate"]
TARGET = "chrome152"


class Transport:
    def __init__(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = name
        self._monkeypatch = monkeypatch
        self._made: list = []
        self.open_stream = self.trust("")

    def trust(self, cafile: str):
        """This transport's ``open_stream``, trusting ``cafile`` (a test CA) when given."""
        if self.name == "native":
            if cafile:
                context = ssl.create_default_context(cafile=cafile)
                self._monkeypatch.setattr("server.transport._ssl_context", context)
            native = NativeTransport()
            self._made.append(native)
            return native.open_stream
        try:
            from server.impersonate import Impersonator
        except ImportError as exc:
            pytest.skip(f"curl_cffi is not installed (the test extra pins it): {exc}")
        made = Impersonator(TARGET, cafile)
        self._made.append(made)
        return made.open_stream

    async def close(self) -> None:
        for made in self._made:
            await made.close()


@pytest.fixture(params=NAMES)
def transport(request, monkeypatch):
    made = Transport(request.param, monkeypatch)
    yield made
    # The loop the test ran on: the test's io_loop when it has one, else tornado's current
    # one (kept across tests, so servers a test left behind are not torn down mid-flight).
    loop = request.getfixturevalue("io_loop") if "io_loop" in request.fixturenames else None
    (loop or IOLoop.current()).run_sync(made.close)
