"""The dashboard (issue 17 item 3) in a real headless Chromium: log in with the admin token,
see the pool, see a token cool down after an upstream failure, disable a key and see its next
request refused. Screenshots go to ``test-artifacts/dashboard/`` (``ARTIFACTS_DIR``)."""

import json
import os
from pathlib import Path

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.accounts import ADMIN, TOKENS, admin, pool_gateway
from tests.processes import ROOT
from tests.test_browser import ARGS, CHROMIUM, chromium_or_skip

OK = "stream_glm5_plain_thinking"
HI = [{"role": "user", "content": "hi"}]
SHOTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "test-artifacts")) / "dashboard"


async def fetch(url: str, **options):
    return await AsyncHTTPClient().fetch(url, raise_error=False, follow_redirects=False, **options)


@pytest.mark.timeout(120)
async def test_log_in_watch_a_cooldown_and_disable_a_key(gateway):
    chromium_or_skip()
    from playwright.async_api import async_playwright, expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    gw = await pool_gateway(
        gateway,
        pool_cooldown_base=300,
        upstream_retries=0,
    )
    _, created = await admin(gw, "POST", "/v1/keys", {"name": "team-a", "rpm": 100})
    async with gw.openai(created["key"]) as client:
        await client.chat.completions.create(model="GLM-5.1", messages=HI)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await page.goto(gw.url + "/admin")
            await page.fill("input[name=token]", "wrong-token")
            await page.click("button[type=submit]")
            await expect(page.locator(".error")).to_contain_text("not the admin token")
            await page.fill("input[name=token]", ADMIN)
            await page.click("button[type=submit]")
            await expect(page.locator("#pool-summary")).to_have_text(
                "3 active, 0 cooling, 0 dead, 0 pending"
            )
            row = page.locator(f"#keys tr[data-key='{created['id']}']")
            await expect(row).to_contain_text("team-a")
            await expect(row.locator("td").nth(4)).to_have_text("1")  # today's request
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: not for scripts
            await page.screenshot(path=str(SHOTS / "1-logged-in.png"), full_page=True)

            # a rate-limited token cools down: the page shows it without a reload
            gw.fake.fail_tokens[TOKENS[0]] = 429
            async with gw.openai(created["key"]) as client:
                for _ in range(3):
                    try:
                        await client.chat.completions.create(model="GLM-5.1", messages=HI)
                    except openai.APIStatusError:
                        break
            await expect(page.locator("#pool-summary")).to_have_text(
                "2 active, 1 cooling, 0 dead, 0 pending"
            )
            await expect(page.locator("#pool .state-cooling")).to_have_count(1)
            await expect(page.locator("#chart-errors text")).to_contain_text("max 1,")
            await page.screenshot(path=str(SHOTS / "2-token-cooling.png"), full_page=True)

            # disable the key in the page: its next request is refused
            await row.get_by_role("button", name="Disable").click()
            await expect(row.locator(".state-disabled")).to_have_text("disabled")
            async with gw.openai(created["key"]) as client:
                with pytest.raises(openai.AuthenticationError, match="disabled"):
                    await client.chat.completions.create(model="GLM-4.5", messages=HI)
            await page.screenshot(path=str(SHOTS / "3-key-disabled.png"), full_page=True)
        finally:
            await browser.close()


async def test_data_and_changes_need_the_session_and_its_csrf_token(gateway):
    gw = await gateway("home", "guest_auth", OK, admin_token=ADMIN)
    assert (await fetch(gw.url + "/admin/data")).code == 401
    bad = await fetch(gw.url + "/admin/login", method="POST", body="token=nope")
    assert bad.code == 401
    good = await fetch(gw.url + "/admin/login", method="POST", body=f"token={ADMIN}")
    assert good.code == 303
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    page = await fetch(gw.url + "/admin", headers=session)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    csrf = page.body.decode().split('name=csrf content="')[1].split('"')[0]
    data = json.loads((await fetch(gw.url + "/admin/data", headers=session)).body)
    assert set(data) == {"now", "pool", "captcha", "instances", "keys", "series"}
    assert len(data["series"]["requests"]) == 60
    _, created = await admin(gw, "POST", "/v1/keys", {"name": "k"})
    path = f"{gw.url}/admin/keys/{created['id']}/disable"
    assert (await fetch(path, method="POST", body="", headers=session)).code == 403
    other = {**session, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert (await fetch(path, method="POST", body="", headers=other)).code == 403
    ok = await fetch(path, method="POST", body="", headers={**session, "X-CSRF-Token": csrf})
    assert ok.code == 200 and json.loads(ok.body)["disabled"] is True
    # a session signed by another admin token (or changed by hand) is no session
    value = cookie.split(";")[0].removeprefix("zai_admin=")
    forged = {"Cookie": f"zai_admin={value[:-1]}{'1' if value[-1] == '0' else '0'}"}
    assert (await fetch(gw.url + "/admin/data", headers=forged)).code == 401
    # without ADMIN_TOKEN there is no dashboard
    plain = await gateway("home", "guest_auth", OK)
    assert (await fetch(plain.url + "/admin")).code == 404
