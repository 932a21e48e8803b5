"""What the benchmark prints: the tables, the targets, the profile's hot spots; wrk glue.

Owns ``tables`` (the results as text, with each PERFORMANCE.md target and whether this run
met it), ``profile_summary`` (py-spy's collapsed stacks -> the hottest lines, functions,
files, and the project line each sample was spent under), ``wrk_script`` and ``parse_wrk``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

__all__ = ["TARGETS", "parse_wrk", "profile_summary", "tables", "wrk_script"]

# (what, target, source). The brief's TTFB targets are looser than PERFORMANCE.md's; both shown.
TARGETS = {
    "stream_rps": 470.0,
    "nonstream_rps": 700.0,
    "ttfb_added_p50_ms": 2.0,
    "ttfb_added_p99_ms": 10.0,
    "ttfb_added_p50_ms_strict": 0.5,
    "ttfb_added_p99_ms_strict": 2.0,
    # issue 18: added TTFB at c=1 and with 50 paced streams open, and while 1,000 streams open
    "ttfb_added_p50_ms_issue": 0.7,
    "ttfb_added_p99_ms_issue": 2.0,
    "ttfb_added_p99_ms_1000": 10.0,
    "streams": 1000,
    "rss_per_stream_kib": 64.0,
    "idle_rss_mib": 50.0,
    "redis_round_trips": 2.0,
    "limit_ratio": 0.6,  # issue 18: completions/s of each mode over the fair direct limit, c=50
}


def _f(value: object, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _failures(row: dict) -> str:
    return ",".join(f"{k}:{v}" for k, v in row.get("failures", {}).items()) or "0"


def _order(key: tuple[str, bool, int]) -> tuple[int, str, bool, int]:
    """Anonymous OpenAI rows first (the headline), then the other modes and faces."""
    mode, stream, c = key
    return (mode != "anonymous", mode, stream, c)


def _throughput(rows: list[dict], title: str) -> str:
    direct = {(r["stream"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    pairs: dict[tuple[str, bool, int], dict[str, dict]] = {}
    for row in rows:
        if row["target"] == "gateway":
            key = (row.get("mode", "anonymous"), row["stream"], row["concurrency"])
            pairs[key] = {"gateway": row, "direct": direct.get(key[1:], {})}
    header = [
        "mode",
        "answer",
        "c",
        "direct/s",
        "gateway/s",
        "gw/direct",
        "gw p50 ms",
        "gw p99 ms",
        "TTFB p50 d/gw",
        "gw/s by quarter",
        "CPU ms/req",
        "busy",
        "redis RT/req",
        "redis cmd/req",
        "upstream conn/req",
        "sign-ins/req",
        "inline",
        "errors",
        "gw warnings",
    ]
    lines = []
    for (mode, stream, c), pair in sorted(pairs.items(), key=lambda item: _order(item[0])):
        d, g = pair.get("direct", {}), pair.get("gateway", {})
        redis = g.get("redis", {})
        up = g.get("upstream_per_completion", {})
        ratio = (
            g.get("completions_per_s", 0) / d["completions_per_s"]
            if d.get("completions_per_s")
            else float("nan")
        )
        lines.append(
            [
                mode,
                "stream" if stream else "non-stream",
                str(c),
                _f(d.get("completions_per_s"), 0),
                _f(g.get("completions_per_s"), 0),
                _f(ratio, 3),
                _f(g.get("latency_ms_p50"), 2),
                _f(g.get("latency_ms_p99"), 2),
                f"{_f(d.get('ttfb_ms_p50'), 2)}/{_f(g.get('ttfb_ms_p50'), 2)}" if stream else "-",
                "/".join(f"{x:.0f}" for x in g.get("rate_by_quarter", [])) or "-",
                _f(g.get("cpu_ms_per_request"), 2),
                _f(g.get("cpu_busy"), 2),
                _f(redis.get("round_trips_per_request"), 2),
                _f(redis.get("commands_per_request"), 2),
                _f(up.get("connections"), 2),
                _f(up.get("auths"), 2),
                _f(g.get("inline_signins_per_guest"), 3),
                f"{_failures(d)}/{_failures(g)}",
                str(sum(g.get("gateway_warnings", {}).values())),
            ]
        )
    return f"{title}\n{_grid(header, lines)}" + _warnings(rows)


def _warnings(rows: list[dict]) -> str:
    """The gateway's WARNING/ERROR log lines during these rows, most frequent first."""
    notes: dict[str, int] = {}
    for row in rows:
        for message, count in row.get("gateway_warnings", {}).items():
            notes[message] = notes.get(message, 0) + count
    return "".join(
        f"\n  gateway log: {count} x {message}"
        for message, count in sorted(notes.items(), key=lambda item: -item[1])[:5]
    )


def _check(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _added_ttfb(results: dict, rows: dict) -> list[str]:
    """Issue 18's first-byte targets: what the gateway adds to the fake's own first byte, at
    c=1 (streamed), with 50 paced streams open, and while 1,000 paced streams are open (the
    full run only: the quick one does not hold them straight to the fake)."""
    p50_at_most, p99_at_most = (
        TARGETS["ttfb_added_p50_ms_issue"],
        TARGETS["ttfb_added_p99_ms_issue"],
    )
    ttfb, streams = results.get("ttfb") or {}, results.get("streams", {})
    cases = (  # (what, direct row, gateway row, p50 target or None, p99 target)
        ("c=1 (streamed)", rows.get(("direct", True, 1)), rows.get(("gateway", True, 1)),
         p50_at_most, p99_at_most),
        ("50 paced streams open", ttfb.get("direct"), ttfb.get("gateway"), p50_at_most,
         p99_at_most),
        ("1,000 paced streams open", streams.get("direct"), streams.get("gateway"), None,
         TARGETS["ttfb_added_p99_ms_1000"]),
    )  # fmt: skip
    out = []
    for name, direct, via, p50_target, p99_target in cases:
        if not direct or not via:
            continue
        p50 = via["ttfb_ms_p50"] - direct["ttfb_ms_p50"]
        p99 = via["ttfb_ms_p99"] - direct["ttfb_ms_p99"]
        ok = p99 <= p99_target and (p50_target is None or p50 <= p50_target)
        asked = f"p50 <= {p50_target:g}, " if p50_target is not None else ""
        out.append(
            f"  added TTFB, {name} (issue 18): p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({asked}p99 <= {p99_target:g}) -> {_check(ok)}"
        )
    return out


def _targets(results: dict) -> str:
    lines = ["targets (PERFORMANCE.md, per worker):"]
    throughput = results.get("throughput", [])
    rows = {
        (r["target"], r["stream"], r["concurrency"]): r
        for r in throughput
        if r.get("mode", "anonymous") in ("anonymous", "direct")
    }
    for stream, key, name in (
        (True, "stream_rps", "stream"),
        (False, "nonstream_rps", "non-stream"),
    ):
        best = max(
            (rows.get(("gateway", stream, c), {}).get("completions_per_s", 0) for c in (50, 200)),
            default=0,
        )
        if best:
            lines.append(
                f"  {name} completions/s >= {TARGETS[key]:g} (stretch): best of c=50/200 "
                f"{best:.0f} -> {_check(best >= TARGETS[key])}"
            )
    direct = {(r["stream"], r["concurrency"]): r for r in throughput if r["target"] == "direct"}
    for r in throughput:
        limit = direct.get((r["stream"], r["concurrency"]), {}).get("completions_per_s")
        if r["target"] != "gateway" or r["concurrency"] != 50 or not limit:
            continue
        ratio = r["completions_per_s"] / limit
        lines.append(
            f"  {r.get('mode', 'anonymous')} {'stream' if r['stream'] else 'non-stream'} c=50: "
            f"{ratio:.2f} of the fair limit (>= {TARGETS['limit_ratio']:g}) -> "
            f"{_check(ratio >= TARGETS['limit_ratio'])}"
        )
    for r in throughput:
        if r.get("mode") == "pooled" and r["concurrency"] == 200:
            errors, held = sum(r.get("failures", {}).values()), r.get("leases_held_after")
            lines.append(
                f"  pooled {'stream' if r['stream'] else 'non-stream'} c=200: {errors} errors, "
                f"{held} leases held after -> {_check(errors == 0 and not held)}"
            )
    inline = [
        r["inline_signins_per_guest"]
        for r in throughput
        if r["target"] == "gateway" and r["concurrency"] >= 50 and "inline_signins_per_guest" in r
    ]
    if inline:
        worst = max(inline)
        lines.append(
            f"  guests signed in on the request's path at c>=50 < 1 %: worst {worst:.1%} -> "
            f"{_check(worst < 0.01)}"
        )
    pooled_streams = results.get("streams", {}).get("pooled")
    if pooled_streams:
        errors = sum(pooled_streams["failures"].values())
        held = pooled_streams.get("leases_held_after")
        lines.append(
            f"  1,000 paced streams, pooled: {pooled_streams['completed']} completed, {errors} "
            f"errors, {held} leases held after -> "
            f"{_check(pooled_streams['all_completed'] and not errors and not held)}"
        )
    lines += _added_ttfb(results, rows)
    ttfb = results.get("ttfb")
    if ttfb:
        p50, p99 = ttfb["added_ms_p50"], ttfb["added_ms_p99"]
        lines.append(
            f"  added TTFB at c=50 (paced): p50 {p50:.2f} ms (<= 2 -> "
            f"{_check(p50 <= TARGETS['ttfb_added_p50_ms'])}; PERFORMANCE.md <= 0.5 -> "
            f"{_check(p50 <= TARGETS['ttfb_added_p50_ms_strict'])}), p99 {p99:.2f} ms (<= 10 -> "
            f"{_check(p99 <= TARGETS['ttfb_added_p99_ms'])}; PERFORMANCE.md <= 2 -> "
            f"{_check(p99 <= TARGETS['ttfb_added_p99_ms_strict'])})"
        )
    streams = results.get("streams", {}).get("gateway")
    if streams:
        held = streams["peak_open_client"] >= TARGETS["streams"]
        lines.append(
            f"  1,000 paced streams on one worker: {streams['completed']} completed, "
            f"{streams['peak_open_client']} open at once -> "
            f"{_check(streams['all_completed'] and held)}"
        )
        per = streams["rss_per_open_stream_kib"]
        lines.append(
            f"  RSS per open stream < 64 KiB: {per:.1f} KiB -> "
            f"{_check(per < TARGETS['rss_per_stream_kib'])}"
        )
    idle = results.get("gateways", {}).get("throughput", {}).get("idle_rss_kib")
    if idle:
        lines.append(
            f"  idle RSS <= 50 MB: {idle / 1024:.1f} MiB -> "
            f"{_check(idle / 1024 <= TARGETS['idle_rss_mib'])}"
        )
    trips = [
        r["redis"]["round_trips_per_request"]
        for r in results.get("throughput", [])
        if r["target"] == "gateway" and r.get("redis") and r["concurrency"] == 50
    ]
    if trips:
        worst = max(trips)
        lines.append(
            f"  Redis round trips per request <= 2 (c=50, background work included): "
            f"{worst:.2f} -> {_check(worst <= TARGETS['redis_round_trips'])}"
        )
    return "\n".join(lines)


def tables(results: dict) -> str:
    out = []
    meta = results.get("meta", {})
    out.append(
        f"zai-gateway benchmark ({meta.get('plan', {}).get('name', '?')} run, "
        f"{meta.get('seconds', '?')} s): {meta.get('layout', '')}"
    )
    out.append(
        f"upstream answer: {meta.get('upstream_answer', '?')}; "
        f"GUEST_RESERVE={meta.get('guest_reserve')}; gateway source {meta.get('source_sha256')}; "
        f"CPU 0 calibration (ms, start/end) {meta.get('calibration_ms_cpu0')}"
    )
    if results.get("throughput"):
        out.append(
            _throughput(
                results["throughput"],
                "\nthroughput, one worker (completions/s; errors direct/gateway)",
            )
        )
    for row in results.get("wrk", []):
        out.append(
            f"wrk non-stream c=50 {row['target']}: {_f(row.get('requests_per_s'), 0)}/s, "
            f"p50 {_f(row.get('latency_ms_p50'), 2)} ms, p99 "
            f"{_f(row.get('latency_ms_p99'), 2)} ms, non-2xx {row.get('non_2xx', 0)}, "
            f"socket errors {row.get('socket_errors', 0)}"
            + (
                f", {row['cpu_ms_per_request']:.2f} ms CPU/req"
                if "cpu_ms_per_request" in row
                else ""
            )
        )
    transport = results.get("transport")
    if transport:
        out.append(
            "\nupstream client cost (same request on CPU 0, c=50; CPU us/request, "
            "completions/s; gateway = server/transport.py, the others tornado's connection):"
        )
        for way, row in transport.items():
            out.append(
                f"  {way:15} {row['cpu_us_per_request']:8.0f} us  {row['completions_per_s']:8.0f}/s"
            )
        cost = (
            transport["new_connection"]["cpu_us_per_request"]
            - transport["kept_alive"]["cpu_us_per_request"]
        )
        out.append(f"  a new connection per request costs {cost:.0f} us of CPU per request")
    ttfb = results.get("ttfb")
    if ttfb:
        d, g = ttfb["direct"], ttfb["gateway"]
        out.append(
            f"\ntime to first byte, c=50, paced upstream ({ttfb['pace_s'] * 1000:g} ms "
            f"between events, {ttfb['stream_seconds']:.1f} s per stream):"
        )
        out.append(
            _grid(
                ["", "p50 ms", "p99 ms", "streams/s", "CPU ms/stream", "CPU us/event", "busy"],
                [
                    [
                        "direct",
                        _f(d["ttfb_ms_p50"], 2),
                        _f(d["ttfb_ms_p99"], 2),
                        _f(d["completions_per_s"], 1),
                        "-",
                        "-",
                        "-",
                    ],
                    [
                        "gateway",
                        _f(g["ttfb_ms_p50"], 2),
                        _f(g["ttfb_ms_p99"], 2),
                        _f(g["completions_per_s"], 1),
                        _f(g.get("cpu_ms_per_request"), 2),
                        _f(ttfb.get("gateway_cpu_us_per_event"), 0),
                        _f(g.get("cpu_busy"), 2),
                    ],
                    ["added", _f(ttfb["added_ms_p50"], 2), _f(ttfb["added_ms_p99"], 2)] + [""] * 4,
                ],
            )
        )
    if ttfb:
        out[-1] += _warnings([ttfb["gateway"]])
    split = (ttfb or {}).get("light_load_breakdown", {})
    if "ttfb_ms_p50" in split:
        out.append(
            f"one stream at a time (light load): TTFB p50 {split['ttfb_ms_p50']:.2f} ms = "
            f"{split['until_upstream_request_ms_p50']:.2f} ms until the completion request "
            f"reached the upstream + {split['upstream_request_to_first_byte_ms_p50']:.2f} ms "
            "from there to the client's first byte (p50s)"
        )
    streams = results.get("streams")
    if streams:
        out.append(
            f"\n1,000 paced streams opened over {streams['ramp_s']:g} s "
            f"({streams['pace_s'] * 1000:g} ms between events):"
        )
        rows = []
        for target in ("direct", "gateway", "pooled"):
            s = streams.get(target)
            if not s:
                continue
            rows.append(
                [
                    target,
                    f"{s['completed']}/{s['streams']}",
                    str(s["peak_open_client"]),
                    str(s["peak_open_upstream"]),
                    _f(s["ttfb_ms_p50"], 1),
                    _f(s["ttfb_ms_p99"], 1),
                    _f(s.get("rss_before_kib", float("nan")) / 1024, 1),
                    _f(s.get("rss_peak_kib", float("nan")) / 1024, 1),
                    _f(s.get("rss_per_open_stream_kib"), 1),
                    _f(s.get("cpu_ms_per_stream"), 2),
                ]
            )
        out.append(
            _grid(
                [
                    "",
                    "completed",
                    "peak open",
                    "upstream open",
                    "TTFB p50 ms",
                    "TTFB p99 ms",
                    "RSS before MiB",
                    "RSS peak MiB",
                    "KiB/stream",
                    "CPU ms/stream",
                ],
                rows,
            )
            + _warnings([streams["gateway"]] if "gateway" in streams else [])
        )
    if results.get("workers2"):
        out.append(
            _throughput(
                results["workers2"],
                "\nWORKERS=2, shared redis-server, nothing pinned (2 cores shared "
                "with the load generator and the fake)",
            )
        )
    long = results.get("long_answer")
    if long:
        w, d = long["others_without"], long["others_during"]
        took = (
            f"not finished ({long['alone_error']}), {_f(long['cpu_s_per_answer'], 2)} s of CPU"
            if long.get("alone_error")
            else f"{_f(long['cpu_s_per_answer'], 2)} s of gateway CPU, {_f(long['alone_s'], 2)} s"
        )
        out.append(
            f"\nlong answer: {long['chars']:,} characters ({long['stream_bytes'] / 1e6:.1f} MB "
            f"streamed to the client), alone: {took}; 10 other clients (non-stream) on the "
            "same worker:"
        )
        out.append(
            _grid(
                ["", "completions/s", "latency p50 ms", "latency p99 ms", "failures"],
                [
                    [
                        "without",
                        _f(w["completions_per_s"]),
                        _f(w["latency_ms_p50"]),
                        _f(w["latency_ms_p99"]),
                        _failures(w),
                    ],
                    [
                        f"while {long['long_answers_during']} long answers were read",
                        _f(d["completions_per_s"]),
                        _f(d["latency_ms_p50"]),
                        _f(d["latency_ms_p99"]),
                        _failures(d),
                    ],
                ],
            )
        )
    gateways = results.get("gateways", {})
    if gateways:
        out.append(
            "\nRSS per gateway run (MiB): "
            + ", ".join(
                f"{name} idle {g['idle_rss_kib'] / 1024:.1f} peak {g['peak_rss_kib'] / 1024:.1f}"
                for name, g in gateways.items()
            )
        )
    for which, profile in results.get("profile", {}).items():
        if "top_self" not in profile:
            continue
        out.append(
            f"\nprofile of the gateway (py-spy), 50 streams, {_PROFILED.get(which, which)} "
            f"({profile['samples']} busy samples, "
            f"{_f(profile.get('cpu_ms_per_request_while_sampled'), 2)} ms CPU/request): "
            "top lines by own time"
        )
        for entry in profile["top_self"][:10]:
            out.append(f"  {entry['percent']:5.1f}%  {entry['frame']}")
        out.append("  by the deepest line of server/ or state/ on the stack:")
        for entry in profile["top_project"][:10]:
            out.append(f"  {entry['percent']:5.1f}%  {entry['frame']}")
    out.append("\n" + _targets(results))
    if meta.get("error"):
        out.append(f"\nRUN INCOMPLETE: {meta['error']}")
    return "\n".join(out)


# py-spy


def _short(path: str, roots: list[Path]) -> str:
    for root in roots:
        if path.startswith(str(root) + "/"):
            return path[len(str(root)) + 1 :]
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest if marker == "site-packages/" else "stdlib/" + rest.split("/", 1)[1]
    return path


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?):(?P<line>\d+)\)$")


def _idle(frames: list[tuple[str, str, str]]) -> bool:
    """Waiting, not working, though py-spy counted it: a thread-pool worker waiting for work
    (tornado resolves host names in asyncio's default executor) or the event loop in
    ``epoll_wait`` when the gateway is not saturated."""
    func, file, _ = frames[-1]
    return (func == "_worker" and file.endswith("concurrent/futures/thread.py")) or (
        func == "EpollSelector.select" and file.endswith("selectors.py")
    )


_PROFILED = {
    "fast": "fast upstream",
    "paced": "paced upstream",
    "pooled": "fast upstream, pooled tokens",
}


def profile_summary(collapsed: str, roots: list[Path], top: int = 20) -> dict:
    """Summarise py-spy's ``--format raw`` output (one ``frame;frame;... count`` per line):
    the lines that were running (own time), the functions on the stack (inclusive), files,
    and the deepest line of the project's own code (``server/``, ``state/``) on the stack."""
    own, functions, files, project = Counter(), Counter(), Counter(), Counter()
    total = idle = threads = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw)
            if match:
                short = _short(match["file"], roots)
                frames.append((match["func"], short, match["line"]))
        if not frames:
            continue
        if _idle(frames):
            idle += n
            continue
        total += n
        if frames[0][1].endswith("threading.py"):
            threads += n
        func, file, line_no = frames[-1]
        own[f"{file}:{line_no} {func}"] += n
        files[file] += n
        for name in {f"{f} ({p})" for f, p, _ in frames}:
            functions[name] += n
        mine = [
            f
            for f in frames
            if f[1].startswith(("server/", "state/")) and f[1] != "server/__main__.py"
        ]
        if mine:
            func, file, line_no = mine[-1]
            project[f"{file}:{line_no} {func}"] += n
        else:
            project["(no request code on the stack: event loop, tornado I/O, threads)"] += n

    def ranked(counter: Counter) -> list[dict]:
        return [
            {"frame": k, "samples": v, "percent": 100 * v / total if total else 0.0}
            for k, v in counter.most_common(top)
        ]

    return {
        "samples": total,
        "idle_thread_samples_dropped": idle,
        "thread_pool_percent": 100 * threads / total if total else 0.0,
        "top_self": ranked(own),
        "top_project": ranked(project),
        "top_inclusive": ranked(functions),
        "top_files": ranked(files),
    }


# wrk


def wrk_script(raw: bytes) -> str:
    """A wrk Lua script that sends ``raw`` (an HTTP/1.1 request) as it is."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [f'wrk.method = "{head.split(b" ", 1)[0].decode()}"']
    for header in head.split(b"\r\n")[1:]:
        name, _, value = header.decode().partition(":")
        if name.lower() not in ("host", "content-length"):
            lines.append(f'wrk.headers["{name}"] = [==[{value.strip()}]==]')
    lines.append(f"wrk.body = [==[{body.decode()}]==]")
    return "\n".join(lines) + "\n"


def _to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(out: str) -> dict:
    row: dict = {"raw": out}
    if found := re.search(r"Requests/sec:\s+([\d.]+)", out):
        row["requests_per_s"] = float(found[1])
    if found := re.search(r"(\d+) requests in ([\d.]+)(\w+)", out):
        row["requests"] = int(found[1])
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        row["non_2xx"] = int(found[1])
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        row["socket_errors"] = sum(int(x) for x in found.groups())
    for pct in ("50", "99"):
        if found := re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M):
            row[f"latency_ms_p{pct}"] = _to_ms(found[1])
    return row
