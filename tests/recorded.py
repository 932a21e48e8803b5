"""Read the recorded upstream traffic in ``cassettes/`` and the expected client view of it.

Owns ``sse_body`` (the response body of a cassette's completion interaction) and ``expected``
(``tests/expected/<name>.json``: what an OpenAI client must finally see for that stream).
"""

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CASSETTES = ROOT / "cassettes"
EXPECTED = Path(__file__).resolve().parent / "expected"

STREAMS = sorted(p.stem for p in EXPECTED.glob("stream_*.json"))


def interactions(name: str) -> list[dict]:
    return yaml.safe_load((CASSETTES / f"{name}.yaml").read_text())["interactions"]


def sse_body(name: str) -> bytes:
    for item in interactions(name):
        if "/chat/completions" in item["request"]["uri"]:
            return item["response"]["body"]["string"].encode()
    raise LookupError(f"{name} has no completion interaction")


def expected(name: str) -> dict:
    return json.loads((EXPECTED / f"{name}.json").read_text())
