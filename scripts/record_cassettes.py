"""Re-record cassettes against the REAL upstream (needs internet; never run by the tests).

    .venv/bin/python scripts/record_cassettes.py --out cassettes/recorded --prompt "hi"
        [--model GLM-4.5-Thinking] [--token <user JWT>]

It uses the gateway's own dialect (``server.zai``): reads the home page, signs in a guest (or
uses ``--token``), builds and signs the completion request exactly as the gateway does, and
fetches each with tornado's buffered client under vcrpy, which records the SSE body with its
event boundaries (vcrpy cannot record a streaming fetch: see STACK.md). Credentials are
scrubbed before anything is written: Authorization/Cookie/Set-Cookie headers are dropped, and
every token (query string, JSON bodies) is replaced by a fake. Review the files, then move
the ones you want next to the others in ``cassettes/`` and regenerate ``tests/expected``.
"""

import argparse
import asyncio
import re
from pathlib import Path

import vcr
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from server.core.chat import Conversation, Turn
from server.core.models import find_model
from server.services import zai_client
from server.settings import load_settings
from server.zai.identity import credential_from_auth, user_id_of
from server.zai.request import build_completion

FAKE_TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.e30.fake-signature"
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def _scrub(text: str) -> str:
    return _JWT.sub(FAKE_TOKEN, text)


def _before_request(request):  # vcrpy hook: a cassette never holds a credential
    request.uri = _scrub(request.uri)
    if request.body:
        request.body = _scrub(request.body.decode()).encode()
    return request


def _before_response(response):
    body = response["body"].get("string")
    if isinstance(body, bytes):
        response["body"]["string"] = _scrub(body.decode("utf-8", "replace")).encode()
    elif isinstance(body, str):
        response["body"]["string"] = _scrub(body)
    if isinstance(response.get("url"), str):
        response["url"] = _scrub(response["url"])
    headers = response["headers"]
    pairs = headers.items() if isinstance(headers, dict) else headers
    kept = [[k, v] for k, v in pairs if k.lower() not in ("set-cookie", "cookie")]
    response["headers"] = dict(kept) if isinstance(headers, dict) else kept
    return response


async def record(out: Path, prompt: str, model_name: str, token: str | None) -> None:
    settings = load_settings(skip_auth_token=True)
    client = zai_client(settings)
    http = AsyncHTTPClient()
    recorder = vcr.VCR(
        filter_headers=["authorization", "cookie", "set-cookie"],
        before_record_request=_before_request,
        before_record_response=_before_response,
        record_mode="all",
    )
    base = settings.zai_base_url
    out.mkdir(parents=True, exist_ok=True)
    with recorder.use_cassette(str(out / "home.yaml")):
        home = await http.fetch(base + "/", headers={"User-Agent": settings.zai_user_agent})
    version = re.search(rb"prod-fe-\d+(?:\.\d+)+", home.body)
    fe_version = version[0].decode() if version else settings.zai_fe_version_fallback
    with recorder.use_cassette(str(out / "guest_auth.yaml")):
        auth = await http.fetch(
            base + "/api/v1/auths/",
            raise_error=False,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
    cred = credential_from_auth(auth.body)
    assert cred.user_id or user_id_of(cred.token)
    model = find_model(model_name)
    if model is None:
        raise SystemExit(f"unknown model {model_name}")
    conv = Conversation(model=model, turns=[Turn("user", prompt)])
    req = build_completion(client.dialect, cred, conv, fe_version)
    with recorder.use_cassette(str(out / "stream_recorded.yaml")):
        answer = await http.fetch(
            HTTPRequest(req.url, "POST", req.headers, req.body, request_timeout=300),
            raise_error=False,
        )
    print(f"recorded into {out}: completion answered HTTP {answer.code}, {len(answer.body)} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("cassettes/recorded"))
    parser.add_argument("--prompt", default="Reply with exactly: hi")
    parser.add_argument("--model", default="GLM-4.5-Thinking")
    parser.add_argument("--token", default=None, help="a Z.AI user token (default: a guest)")
    args = parser.parse_args()
    asyncio.run(record(args.out, args.prompt, args.model, args.token))


if __name__ == "__main__":
    main()
