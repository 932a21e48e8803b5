"""A real headless Chromium on a page of another origin streams a completion with fetch.

What a browser UI does (Open WebUI, LobeChat, the SDKs with ``dangerouslyAllowBrowser``): the
page on one loopback port, the gateway on another, so the browser sends a CORS preflight for
the SDK's headers and reads the SSE stream only if every answer allows its origin.
"""

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from server.captcha.browser import CHROMIUM_ARGS
from tests.conftest import API_KEY
from tests.recorded import expected

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = CHROMIUM_ARGS
NAME = "stream_glm5_plain_thinking"

STREAM_JS = """async ([url, key]) => {
  const answer = await fetch(url + "/v1/messages", {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-api-key": key,
      "anthropic-version": "2023-06-01",
      "anthropic-dangerous-direct-browser-access": "true",
      "x-stainless-lang": "js",
      "x-stainless-retry-count": "0",
    },
    body: JSON.stringify({model: "claude-sonnet-5-5", max_tokens: 256, stream: true,
                          messages: [{role: "user", content: "hi"}]}),
  });
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let raw = "";
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    raw += decoder.decode(value, {stream: true});
  }
  let text = "";
  for (const line of raw.split("\\n")) {
    if (!line.startsWith("data: ")) continue;
    const event = JSON.parse(line.slice(6));
    if (event.type === "content_block_delta" && event.delta.type === "text_delta")
      text += event.delta.text;
  }
  return {status: answer.status, text, stopped: raw.includes("message_stop"),
          requestId: answer.headers.get("x-request-id")};
}"""


class Page(RequestHandler):
    def get(self) -> None:
        self.finish("<!doctype html><title>another origin</title><p>ui</p>")


def chromium_or_skip() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing = "the playwright package"
    else:
        missing = "" if os.path.exists(CHROMIUM) else "chromium (apt install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} is required under CI")
        pytest.skip(f"{missing} is not installed")


def serve_page() -> tuple[str, HTTPServer]:
    """The page of "another origin": a tornado server on its own loopback port."""
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/", Page)]))
    server.add_sockets(sockets)
    return f"http://127.0.0.1:{sockets[0].getsockname()[1]}", server


@contextlib.asynccontextmanager
async def browser_at(url: str) -> AsyncIterator[Any]:
    """Debian's Chromium, headless, with a tab open on ``url``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(url + "/")
            yield page
        finally:
            await browser.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("origins", ["*", "page"])
async def test_a_page_of_another_origin_streams_a_completion(gateway, origins):
    chromium_or_skip()
    page_url, page_server = serve_page()
    gw = await gateway("home", "guest_auth", NAME, cors_origins="*" if origins == "*" else page_url)
    try:
        async with browser_at(page_url) as page:
            got = await page.evaluate(STREAM_JS, [gw.url, API_KEY])
    finally:
        page_server.stop()
    assert got["status"] == 200 and got["stopped"]
    assert got["text"] == expected(NAME)["content"]
    assert got["requestId"]  # an exposed header the page can read


@pytest.mark.timeout(90)
async def test_a_page_of_an_origin_not_listed_is_blocked(gateway):
    chromium_or_skip()
    page_url, page_server = serve_page()
    gw = await gateway("home", "guest_auth", NAME, cors_origins="https://ui.example")
    try:
        async with browser_at(page_url) as page:
            with pytest.raises(Exception, match="Failed to fetch"):
                await page.evaluate(STREAM_JS, [gw.url, API_KEY])
    finally:
        page_server.stop()
    assert gw.completions_seen() == []  # the preflight failed: the POST was never sent
