"""The operator's dashboard: ``GET /admin``, behind the admin token, in a browser.

Owns the dashboard routes. ``/admin`` shows a login form until the browser holds a session:
``POST /admin/login`` with the ``ADMIN_TOKEN`` sets an HttpOnly, ``SameSite=Strict`` cookie
(``Secure`` over HTTPS) that is a signed expiry (HMAC with the admin token, so every replica
accepts it and changing the token ends every session; no session state in Redis). The page
is plain HTML with one script and one stylesheet served from ``/admin/static`` (no CDN, and
a ``Content-Security-Policy`` that allows nothing else); the script reads ``/admin/data``
every two seconds: the pool (each token's state, cooldown left, leases, uses), the captcha
stock, the live instances, the client keys with today's usage, and the last hour of
requests, errors and time to first byte per minute (all replicas: ``state.usage``), drawn as
SVG charts by the script itself. A change (``POST /admin/keys/<id>/disable|enable``) needs
the session's CSRF token in ``X-CSRF-Token`` and, when the browser sends one, an ``Origin``
of this host. Without ``ADMIN_TOKEN`` none of this exists (404).
"""

import dataclasses
import datetime as dt
import hashlib
import hmac
import html
import json
import secrets
import time
import urllib.parse
from pathlib import Path

from server.core.errors import GatewayError
from server.web.handler import ApiHandler, api

__all__ = ["DASHBOARD_STATIC", "DashboardData", "DashboardKey", "DashboardPage", "Login", "Logout"]

DASHBOARD_STATIC = str(Path(__file__).with_name("dashboard_static"))
COOKIE = "zai_admin"
SESSION_SECONDS = 8 * 3600
_CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"


def _sign(admin: str, text: str) -> str:
    return hmac.new(admin.encode(), text.encode(), hashlib.sha256).hexdigest()


def new_session(admin: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_SECONDS)
    body = f"{expires}.{secrets.token_hex(8)}"
    return f"{body}.{_sign(admin, 'session:' + body)}"


def session_ok(admin: str, value: str, now: float | None = None) -> bool:
    """Whether ``value`` is a session this admin token signed and that has not expired.

    >>> value = new_session("t", now=1000.0)
    >>> session_ok("t", value, now=1001.0), session_ok("other", value, now=1001.0)
    (True, False)
    >>> session_ok("t", value, now=1000.0 + SESSION_SECONDS + 1), session_ok("t", "x.y.z")
    (False, False)
    """
    expires, _, rest = value.partition(".")
    nonce, _, signature = rest.partition(".")
    # A cookie is whatever the client sent: compare_digest refuses non-ASCII str (a 500), and
    # isdigit() alone takes digits int() does not ("²").
    if not (expires.isascii() and expires.isdigit() and nonce and signature):
        return False
    expected = _sign(admin, f"session:{expires}.{nonce}")
    good = hmac.compare_digest(signature.encode(), expected.encode())
    return good and int(expires) > (now or time.time())


def csrf_token(admin: str, session: str) -> str:
    return _sign(admin, "csrf:" + session)


class DashboardHandler(ApiHandler):
    route = "admin"
    keyed = False  # the session cookie is checked by each route

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", _CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    @property
    def admin(self) -> str:
        admin = self.services.settings.admin_token
        if not admin:
            raise GatewayError("not_found", f"no route {self.request.method} {self.request.path}")
        return admin

    def session(self) -> str:
        value = self.get_cookie(COOKIE, "") or ""
        return value if session_ok(self.admin, value) else ""

    def require_session(self) -> str:
        value = self.session()
        if not value:
            raise GatewayError("invalid_api_key", "log in at /admin first")
        return value

    def require_same_origin(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.request.host:
            raise GatewayError("forbidden", "a change must come from this page's origin")

    def page(self, body: str, status: int = 200, meta: str = "") -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>zai-gateway</title>{meta}"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            '<link rel=stylesheet href="/admin/static/dashboard.css"></head>'
            f"<body>{body}</body></html>"
        )


_LOGIN = """<main class=login><h1>zai-gateway</h1>
<form method=post action="/admin/login"><label>Admin token
<input name=token type=password autocomplete=current-password autofocus required></label>
<button type=submit>Log in</button></form>{error}</main>"""

_DASHBOARD = """<header><h1>zai-gateway</h1><span id=updated></span>
<form method=post action="/admin/logout"><button type=submit>Log out</button></form></header>
<main>
<section><h2>Last hour</h2><div class=charts>
<figure><figcaption>requests / min</figcaption><svg id=chart-requests></svg></figure>
<figure><figcaption>errors / min</figcaption><svg id=chart-errors></svg></figure>
<figure><figcaption>time to first byte, ms</figcaption><svg id=chart-ttfb></svg></figure>
</div></section>
<section><h2>Pool</h2><p id=pool-summary></p><table id=pool><thead><tr><th>token</th>
<th>state</th><th>failures</th><th>cooldown left</th><th>leases</th><th>uses</th><th>reason</th>
</tr></thead><tbody></tbody></table><p>Captcha stock: <span id=captcha></span></p></section>
<section><h2>Keys</h2><table id=keys><thead><tr><th>id</th><th>name</th><th>limits</th>
<th>state</th><th>requests today</th><th>tokens today</th><th>errors today</th><th></th>
</tr></thead><tbody></tbody></table></section>
<section><h2>Instances</h2><table id=instances><thead><tr><th>host</th><th>pid</th>
<th>version</th><th>in flight</th></tr></thead><tbody></tbody></table></section>
</main><script src="/admin/static/dashboard.js"></script>"""


class DashboardPage(DashboardHandler):
    @api
    async def get(self) -> None:
        session = self.session() if self.admin else ""
        if not session:
            self.page(_LOGIN.format(error=""))
            return
        meta = f'<meta name=csrf content="{csrf_token(self.admin, session)}">'
        self.page(_DASHBOARD, meta=meta)


class Login(DashboardHandler):
    @api
    async def post(self) -> None:
        admin = self.admin
        self.require_same_origin()
        form = urllib.parse.parse_qs(self.request.body.decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), admin.encode()):
            error = "<p class=error role=alert>That is not the admin token.</p>"
            self.page(_LOGIN.format(error=error), status=401)
            return
        self.set_cookie(
            COOKIE,
            new_session(admin),
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
            max_age=SESSION_SECONDS,
        )
        self.redirect("/admin", status=303)


class Logout(DashboardHandler):
    @api
    async def post(self) -> None:
        self.admin  # noqa: B018 (404 without ADMIN_TOKEN)
        self.require_same_origin()
        self.clear_cookie(COOKIE, path="/admin")
        self.redirect("/admin", status=303)


class DashboardData(DashboardHandler):
    @api
    async def get(self) -> None:
        self.require_session()
        services = self.services
        rows = [dataclasses.asdict(row) for row in await services.pool.status()]
        summary = {state: 0 for state in ("active", "cooling", "dead", "pending")}
        for row in rows:
            summary[row["state"]] += 1
        captcha = services.captchas.pool
        today = dt.datetime.now(dt.UTC).date()
        usage = services.usage
        await usage.flush()
        used = {row["key"]: row for row in await usage.query(None, today, today, ("key",))}
        keys = [
            {
                **dataclasses.asdict(key),
                "today": used.get(key.id, {}),
            }
            for key in await services.client_keys.list()
        ]
        body = {
            "now": time.time(),
            "pool": {"tokens": rows, "summary": summary},
            "captcha": await captcha.depth() if captcha is not None else 0,
            "instances": await services.instances.live(),
            "keys": keys,
            "series": await usage.last_hour(),
        }
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class DashboardKey(DashboardHandler):
    @api
    async def post(self, kid: str, action: str) -> None:
        session = self.require_session()
        self.require_same_origin()
        given = self.request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(given.encode(), csrf_token(self.admin, session).encode()):
            raise GatewayError("forbidden", "the CSRF token is missing or wrong")
        key = await self.services.client_keys.update(kid, disabled=action == "disable")
        if key is None:
            raise GatewayError("not_found", f"no key {html.escape(kid)!r}")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"id": kid, "disabled": key.disabled}))
