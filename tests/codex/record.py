"""Re-record ``tests/codex/*.request.json``: the bodies the real Codex CLI sends the gateway.

Runs the pinned CLI once (``tests/test_codex.py``'s tool turn: a command run, then the
answer) against an in-process gateway over the ``codex_tool`` cassette, keeps every body the
Responses face decodes, and writes them with the run's temporary paths replaced by
``/home/user`` and the ids in ``client_metadata`` zeroed (no key is in a body: Codex sends it
as a header). Offline, about ten seconds: ``.venv/bin/python -m tests.codex.record``.
"""

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

from tornado.netutil import bind_sockets

from server.app import make_server
from server.faces.responses import api as responses_api
from server.services import make_services
from server.settings import load_settings
from tests.codex.cli import ensure_cli
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.test_codex import TOOL_PROMPT, run_codex

HERE = Path(__file__).resolve().parent
NAMES = ("tool_use", "tool_result")
ZERO = "00000000-0000-0000-0000-000000000000"


async def record() -> list[bytes]:
    bodies: list[bytes] = []
    decode = responses_api.decode_responses_request

    def keep(body: bytes):
        bodies.append(body)
        return decode(body)

    responses_api.decode_responses_request = keep
    fake = FakeUpstream("home", "guest_auth", "codex_tool")
    settings = load_settings(
        _env_file=None,
        auth_token=API_KEY,
        anonymous_mode=True,
        zai_base_url=await fake.start(),
        zai_fe_version="",
        guest_reserve=0,
    )
    services = make_services(settings)
    await services.start()
    sockets = bind_sockets(0, "127.0.0.1")
    server = make_server(services)
    server.add_sockets(sockets)
    home = Path(tempfile.mkdtemp(prefix="codex-record-"))
    try:
        url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        await run_codex(ensure_cli(), home, url, TOOL_PROMPT)
    finally:
        server.stop()
        await services.stop()
        await fake.close()
        shutil.rmtree(home, ignore_errors=True)
    return [body.replace(str(home).encode(), b"/home/user") for body in bodies]


def main() -> None:
    bodies = asyncio.run(record())
    assert len(bodies) == len(NAMES), f"expected {len(NAMES)} requests, got {len(bodies)}"
    for name, raw in zip(NAMES, bodies, strict=True):
        body = json.loads(raw)
        metadata = body.get("client_metadata", {})
        body["client_metadata"] = {
            key: ZERO if key.endswith("id") else value
            for key, value in metadata.items()
            if key != "x-codex-turn-metadata"  # a JSON copy of the ids and paths above
        }
        text = json.dumps(body, indent=1, ensure_ascii=False) + "\n"
        (HERE / f"{name}.request.json").write_text(text, encoding="utf-8")
        print(f"{name}.request.json: {len(raw)} bytes, {len(body['input'])} input items")


if __name__ == "__main__":
    main()
