"""What the upstream client costs per request: the same request three ways.

Owns ``python -m scripts.bench.transport_ab --port P --requests N`` (run pinned to the
gateway's core, with the gateway stopped), which prints one JSON line: for each way, the CPU
time per request of this process (``time.process_time``) and the completions per second.

- ``gateway``: ``server.transport.NativeTransport`` and ``Exchange`` exactly as the gateway
  uses them (``asyncio.Protocol``, connections kept alive in its pool).
- ``new_connection``: tornado's ``HTTP1Connection`` on a freshly connected ``IOStream``, then
  closed: the same work with the gateway's own wrapping taken out.
- ``kept_alive``: the same ``HTTP1Connection`` on an ``IOStream`` kept open between requests
  (one per concurrent caller): the cost that remains without connect/close.

The difference between the last two is the connection's own cost on the gateway's core
(connect, the socket's setup and teardown, tornado's stream and connection objects); the
first against the last is what replacing tornado's connection code saved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream
from tornado.tcpclient import TCPClient

from server.transport import NativeTransport, Timeouts

__all__ = ["main"]

_PARAMS = HTTP1ConnectionParameters(decompress=True)


class _Collect(httputil.HTTPMessageDelegate):
    def __init__(self) -> None:
        self.status = 0
        self.size = 0

    def headers_received(self, start_line, headers) -> None:  # type: ignore[no-untyped-def]
        self.status = start_line.code

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)


async def _exchange(stream: IOStream, target: str, head: dict[str, str], body: bytes) -> int:
    conn = HTTP1Connection(stream, True, _PARAMS)
    conn.write_headers(
        httputil.RequestStartLine("POST", target, "HTTP/1.1"), httputil.HTTPHeaders(head), body
    )
    conn.finish()
    collect = _Collect()
    await conn.read_response(collect)
    if collect.status != 200 or not collect.size:
        raise RuntimeError(f"upstream answered {collect.status} with {collect.size} bytes")
    return collect.size


async def _run(
    way: str,
    port: int,
    url: str,
    headers: dict[str, str],
    body: bytes,
    requests: int,
    concurrency: int,
) -> dict[str, float]:
    tcp = TCPClient()
    native = NativeTransport()
    target = url.split(f":{port}", 1)[1]
    head = {**headers, "Host": f"127.0.0.1:{port}", "Content-Length": str(len(body))}
    left = [requests]

    async def caller() -> None:
        stream: IOStream | None = None
        while left[0] > 0:
            left[0] -= 1
            if way == "gateway":
                exchange = await native.open_stream("POST", url, headers, body, Timeouts())
                try:
                    await exchange.read_all()
                finally:
                    exchange.close()
            elif way == "new_connection":
                stream = await tcp.connect("127.0.0.1", port)
                stream.set_nodelay(True)
                await _exchange(stream, target, {**head, "Connection": "close"}, body)
                stream.close()
            else:
                if stream is None or stream.closed():
                    stream = await tcp.connect("127.0.0.1", port)
                    stream.set_nodelay(True)
                await _exchange(stream, target, head, body)
        if stream is not None:
            stream.close()

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    await native.close()
    return {"cpu_us_per_request": cpu / requests * 1e6, "completions_per_s": requests / wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the fast fake upstream")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    from scripts.bench.payloads import upstream_request

    url, headers, body = upstream_request(f"http://127.0.0.1:{args.port}")

    async def run() -> dict[str, dict[str, float]]:
        out = {}
        for way in ("gateway", "new_connection", "kept_alive"):
            await _run(way, args.port, url, headers, body, min(300, args.requests), 20)  # warm
            out[way] = await _run(
                way, args.port, url, headers, body, args.requests, args.concurrency
            )
        return out

    print(json.dumps(asyncio.run(run())), flush=True)


if __name__ == "__main__":
    main()
