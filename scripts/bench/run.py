"""The benchmark's plan, run top to bottom: ``python -m scripts.bench [--quick]``.

Owns ``main`` and ``Bench``. Layout (2 cores): the gateway is pinned to CPU 0; the load
generator (this process), the fake upstream and redis-server to CPU 1. Phases, in order:

1. throughput: non-stream and stream, concurrency 1/50/200, each straight to the fast fake
   upstream and then through one gateway worker (real Redis, anonymous mode, guest reserve);
   CPU time, Redis commands/round trips and upstream connections per completion; ``wrk``
   for non-stream at c=50 when it is installed; a py-spy profile of the stream c=50 load.
2. transport: the gateway stopped, the same upstream request three ways on CPU 0
   (``transport_ab``): what a new connection per request costs.
3. time to first byte: a paced upstream (each event ``--pace`` apart), 50 streams open,
   straight and through the gateway; the difference is what the gateway adds.
4. 1,000 slow streams opened together on one worker: how many complete, RSS per open stream.
5. WORKERS=2 on the shared Redis, nothing pinned (both workers and the load share 2 cores).
6. a long answer (``long_chars``, 2 MB, token-sized deltas written at once by the upstream):
   CPU to read one alone, then ten other clients' latency without and with long answers
   being read by the same worker.

Every phase is bounded; the whole run has a time budget, after which it stops, writes
what it has and ends every child it started (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from scripts.bench import report
from scripts.bench.client import Check, Connection, Phase, closed_loop, open_streams, percentile
from scripts.bench.fake import LONG_MARKER, ROOT, load_answers
from scripts.bench.payloads import (
    API_KEY,
    chat_request,
    direct_builder,
    direct_request,
    is_completion,
    is_message,
    is_message_stop,
    is_sse_done,
    is_upstream_done,
    messages_request,
)
from scripts.bench.procs import (
    Processes,
    RedisCounters,
    RedisProbe,
    calibrate,
    cpu0_steal,
    cpu_seconds,
    descendants,
    free_port,
    http_get,
    redis_argv,
    rss_kib,
    source_digest,
    wait_until,
)
from state.keys import Keys, token_id

__all__ = ["FULL", "QUICK", "Bench", "Plan", "main"]

GATEWAY_CPUS = {0}
LOAD_CPUS = {1}
STREAM_CASSETTE = "stream_glm5_plain_thinking"
# What a client of each face sends, and what says its answer came back whole (non-stream,
# stream).
FACES: dict[str, tuple[Callable[[int, bool], bytes], tuple[Check, Check]]] = {
    "openai": (chat_request, (is_completion, is_sse_done)),
    "anthropic": (messages_request, (is_message, is_message_stop)),
}
POOLED_TOKENS = 8  # pooled mode: user tokens in ZAI_TOKENS (the fake takes any token)


@dataclass(frozen=True)
class Plan:
    """How long each phase runs (seconds) and at what load."""

    name: str
    concurrency: tuple[int, ...]
    direct: tuple[float, float]  # warm-up, measuring window
    gateway: tuple[float, float]
    mode_concurrency: tuple[int, ...]  # pooled mode and the Anthropic face
    ttfb_pace: float  # seconds between events of the paced upstream
    ttfb_window: float
    streams: int
    streams_pace: float
    streams_ramp: float
    streams_direct: bool  # also hold them straight to the fake, for reference
    workers2: tuple[int, ...]
    workers2_window: tuple[float, float]
    transport_requests: int
    wrk_seconds: float  # 0: no wrk
    profile_seconds: float  # 0: no profile
    long_chars: int  # the long answer's size
    long_window: tuple[float, float]  # the other clients' warm-up and window, each run
    long_timeout: float  # seconds one long answer may take
    budget: float  # the whole run, seconds


FULL = Plan(
    name="full",
    concurrency=(1, 50, 200),
    direct=(1.0, 4.0),
    gateway=(2.0, 8.0),
    mode_concurrency=(50, 200),
    ttfb_pace=0.05,
    ttfb_window=20.0,
    streams=1000,
    streams_pace=0.2,
    streams_ramp=2.0,
    streams_direct=True,
    workers2=(50, 200),
    workers2_window=(1.0, 5.0),
    transport_requests=3000,
    wrk_seconds=5.0,
    profile_seconds=15.0,
    long_chars=2_000_000,
    long_window=(0.5, 8.0),
    long_timeout=120.0,
    budget=570.0,
)
QUICK = Plan(
    name="quick",
    concurrency=(1, 50, 200),
    direct=(0.3, 1.0),
    gateway=(0.7, 2.5),
    mode_concurrency=(50, 200),
    ttfb_pace=0.03,
    ttfb_window=3.0,
    streams=1000,
    streams_pace=0.2,
    streams_ramp=1.0,
    streams_direct=False,
    workers2=(50,),
    workers2_window=(0.5, 2.0),
    transport_requests=1000,
    wrk_seconds=0.0,
    profile_seconds=0.0,
    long_chars=2_000_000,
    long_window=(0.3, 3.0),
    long_timeout=60.0,
    budget=240.0,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Gateway:
    name: str
    proc: subprocess.Popen
    port: int
    prefix: str
    workers: int
    mode: str = "anonymous"  # how it gets upstream tokens: guests, or a pool ("pooled")
    idle_rss_kib: int = 0

    @property
    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    @property
    def worker_pids(self) -> list[int]:
        pids = self.pids
        return pids if self.workers == 1 else [p for p in pids if p != self.proc.pid]


@dataclass
class Snapshot:
    at: float
    steal: tuple[int, int]  # CPU 0: (steal ticks, all ticks), from /proc/stat
    cpu: dict[int, float]
    fake_cpu: float
    redis: RedisCounters | None
    fake: dict[str, int]


class Bench:
    """One run: the children it started, what it measured, and the plan."""

    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="zai-bench-"))
        self.procs = Processes(self.workdir)
        self.redis: RedisProbe | None = None
        self.redis_port = 0
        self.fake: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.problems: list[str] = []  # failed requests: the logs are kept for them
        self.events = len(load_answers(STREAM_CASSETTE).events)
        # The gateway runs from a copy of server/ and state/ taken now, so that one run
        # measures one version of the code even while someone edits the tree.
        source = self.workdir / "source"
        for package in ("server", "state"):
            shutil.copytree(
                ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        self.pythonpath = os.pathsep.join([str(source), str(ROOT)])
        self.results: dict = {
            "meta": {
                "plan": asdict(plan),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "layout": "gateway pinned to CPU 0; load generator, fake upstream and "
                "redis-server pinned to CPU 1 (WORKERS=2: nothing pinned)",
                "upstream_answer": f"cassettes/{STREAM_CASSETTE}.yaml, {self.events} SSE events",
                "guest_reserve": args.guest_reserve,
            }
        }

    def __repr__(self) -> str:
        return f"<Bench {self.plan.name} {self.procs!r}>"

    # Processes

    def start_infra(self) -> None:
        self.redis_port = free_port()
        proc = self.procs.start("redis", redis_argv(self.redis_port, self.workdir), LOAD_CPUS)
        wait_until(
            "redis-server", lambda: RedisProbe(self.redis_port).command("PING") == b"PONG", 10, proc
        )
        self.redis = RedisProbe(self.redis_port)
        paces = [0.0, self.plan.ttfb_pace, self.plan.streams_pace]
        argv = [sys.executable, "-m", "scripts.bench.fake", "--stream", STREAM_CASSETTE]
        argv += ["--long", str(self.plan.long_chars)]
        for pace in paces:
            argv += ["--pace", str(pace)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.fake = self.procs.start("fake", argv, LOAD_CPUS, env, ROOT, stdout=-1)
        line = self.fake.stdout.readline().decode()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            raise RuntimeError(f"the fake upstream did not start:\n{self.procs.log_tail('fake')}")
        fast, ttfb, slow = json.loads(line.split(" ", 1)[1])
        self.ports = {"fast": fast, "ttfb": ttfb, "slow": slow}
        log(f"redis-server on :{self.redis_port}, fake upstream on {self.ports}")

    def gateway_env(
        self, upstream: int, port: int, prefix: str, workers: int, mode: str = "anonymous"
    ) -> dict[str, str]:
        from server.settings import Settings

        names = {name.upper() for name in Settings.model_fields}
        env = {k: v for k, v in os.environ.items() if k not in names}
        env.update(
            AUTH_TOKEN=API_KEY,
            ZAI_BASE_URL=f"http://127.0.0.1:{upstream}",
            GUEST_RESERVE=str(self.args.guest_reserve),
            PACING_MIN_GAP_MS="0",  # the fake has no WAF: measure the gateway, not the floor
            PACING_JITTER_MS="0",
            SINGLE_INSTANCE="off",
            LISTEN_HOST="127.0.0.1",
            LISTEN_PORT=str(port),
            WORKERS=str(workers),
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0" if self.args.redis else "",
            REDIS_PREFIX=prefix,
            PYTHONPATH=self.pythonpath,
        )
        if mode == "pooled":  # user tokens only, no guests, no per-token cap
            tokens = ",".join(pooled_tokens())
            env.update(ZAI_TOKENS=tokens, ANONYMOUS_MODE="false", POOL_MAX_CONCURRENCY="0")
        return env

    def start_gateway(
        self,
        name: str,
        upstream: str,
        workers: int = 1,
        cpus: set[int] | None = GATEWAY_CPUS,
        mode: str = "anonymous",
    ) -> Gateway:
        port, prefix = free_port(), f"bench-{name}:"
        env = self.gateway_env(self.ports[upstream], port, prefix, workers, mode)
        # cwd: a directory without a .env, so only these settings apply.
        proc = self.procs.start(
            f"gateway-{name}", [sys.executable, "-m", "server"], cpus, env, self.workdir
        )
        wait_until(f"gateway {name}", lambda: http_get(port, "/healthz", 1)[0] == 200, 30, proc)
        if workers > 1:
            wait_until(
                f"gateway {name} workers", lambda: len(descendants(proc.pid)) > workers, 30, proc
            )
        gw = Gateway(name, proc, port, prefix, workers, mode)
        if (
            mode == "anonymous"
            and self.redis is not None
            and self.args.redis
            and self.args.guest_reserve
        ):
            key = Keys(prefix).guests
            wait_until(
                f"gateway {name} guest reserve",
                lambda: self.redis.command("LLEN", key) >= self.args.guest_reserve,  # type: ignore[union-attr, operator]
                30,
                proc,
            )
        time.sleep(0.3)
        gw.idle_rss_kib = rss_kib(gw.worker_pids)
        log(f"gateway {name}: {workers} worker(s) on :{port}, idle RSS {gw.idle_rss_kib} KiB")
        return gw

    def held_leases(self, gw: Gateway) -> int | None:
        """Leases of the pooled tokens still within their deadline (None without Redis)."""
        if self.redis is None or gw.mode != "pooled":
            return None
        keys, now = Keys(gw.prefix), str(int(time.time() * 1000))
        names = [keys.leases(token_id(token)) for token in pooled_tokens()]
        return sum(int(self.redis.command("ZCOUNT", name, now, "+inf")) for name in names)

    def stop_gateway(self, gw: Gateway) -> dict:
        peak = rss_kib(gw.worker_pids, "VmHWM")
        code = self.procs.stop(gw.proc)
        return {"peak_rss_kib": peak, "idle_rss_kib": gw.idle_rss_kib, "exit_code": code}

    def fake_stats(self, which: str, reset: bool = False) -> dict[str, int]:
        _, body = http_get(self.ports[which], "/__stats" + ("?reset" if reset else ""))
        return json.loads(body)

    # Measuring

    def snapshot(self, pids: list[int], which: str) -> Snapshot:
        return Snapshot(
            time.monotonic(),
            cpu0_steal(),
            {pid: cpu_seconds([pid]) for pid in pids},
            cpu_seconds([self.fake.pid]),  # type: ignore[union-attr]
            self.redis.counters() if self.redis is not None else None,
            self.fake_stats(which),
        )

    async def measure(
        self,
        target: str,
        which: str,
        gw: Gateway | None,
        stream: bool,
        concurrency: int,
        timing: tuple[float, float],
        stagger: float = 0.0,
        face: str = "openai",
    ) -> dict:
        """One closed-loop run, straight to the fake (``gw`` None) or through ``gw``."""
        port = gw.port if gw else self.ports[which]
        if gw:
            build, checks = FACES[face]
            raw, check = build(port, stream), checks[stream]
        else:
            raw, check = direct_builder(port), is_upstream_done
        pids = gw.pids if gw else []
        guests = guest_sources(gw.port) if gw else {}
        edges: dict[str, Snapshot] = {}
        phase = await closed_loop(
            "127.0.0.1",
            port,
            raw,
            check,
            concurrency,
            timing[0] + stagger,
            timing[1],
            lambda edge: edges.__setitem__(edge, self.snapshot(pids, which)),
            stagger=stagger,
        )
        row = summarize(phase, edges, gw is not None)
        if gw is not None and guests:  # warm-up included: how guests were got during the run
            after = guest_sources(gw.port)
            inline = after.get("inline", 0) - guests.get("inline", 0)
            total = inline + after.get("reserve", 0) - guests.get("reserve", 0)
            row["inline_signins_per_guest"] = inline / total if total else 0.0
        mode = "direct" if gw is None else gw.mode if face == "openai" else f"{gw.mode}, {face}"
        row.update(target=target, stream=stream, concurrency=concurrency, mode=mode)
        if gw is not None:
            row["gateway_warnings"] = self.procs.new_warnings(f"gateway-{gw.name}")
        if phase.failures:
            name = f"gateway-{gw.name}" if gw else "fake"
            self.problems.append(f"{target} c={concurrency} {phase.failures}")
            row["log_tail"] = self.procs.log_tail(name, 30)
            if gw is not None:
                row["gateway_alive"] = {pid: Path(f"/proc/{pid}").exists() for pid in gw.pids}
        return row

    # Phases

    async def throughput(self) -> None:
        plan = self.plan
        gw = self.start_gateway("throughput", "fast")
        rows = []
        try:
            for stream in (False, True):
                for c in plan.concurrency:
                    direct = await self.measure("direct", "fast", None, stream, c, plan.direct)
                    via = await self.measure("gateway", "fast", gw, stream, c, plan.gateway)
                    rows += [direct, via]
                    log(
                        f"{'stream' if stream else 'non-stream'} c={c}: direct "
                        f"{direct['completions_per_s']:.0f}/s, gateway "
                        f"{via['completions_per_s']:.0f}/s, "
                        f"{via.get('cpu_ms_per_request', 0):.2f} ms CPU/req"
                    )
            for c in plan.mode_concurrency:  # the same gateway through the Anthropic face
                for stream in (False, True):
                    rows.append(
                        await self.measure(
                            "gateway", "fast", gw, stream, c, plan.gateway, 0, "anthropic"
                        )
                    )
            self.results["throughput"] = rows
            if plan.wrk_seconds and shutil.which("wrk"):
                self.results["wrk"] = await self.wrk(gw)
            if self.py_spy():
                self.results.setdefault("profile", {})["fast"] = await self.profile(gw, "fast")
        finally:
            self.results.setdefault("gateways", {})["throughput"] = self.stop_gateway(gw)

    async def pooled(self) -> None:
        """Throughput with user tokens from the pool (leases in Redis) instead of guests."""
        plan = self.plan
        gw = self.start_gateway("pooled", "fast", mode="pooled")
        try:
            for c in plan.mode_concurrency:
                for stream in (False, True):
                    row = await self.measure("gateway", "fast", gw, stream, c, plan.gateway)
                    row["leases_held_after"] = await self.leases_after(gw)
                    self.results["throughput"].append(row)
                    log(
                        f"pooled {'stream' if stream else 'non-stream'} c={c}: "
                        f"{row['completions_per_s']:.0f}/s, {sum(row['failures'].values())} errors"
                        f", {row['leases_held_after']} leases held after"
                    )
            if self.py_spy():
                profiles = self.results.setdefault("profile", {})
                profiles["pooled"] = await self.profile(gw, "fast", name="pooled")
        finally:
            self.results.setdefault("gateways", {})["pooled"] = self.stop_gateway(gw)

    async def leases_after(self, gw: Gateway, wait: float = 2.0) -> int | None:
        """Leases still held once a load is over (its releases go off the path: given a moment
        to land); a live process must leave none."""
        until = time.monotonic() + wait
        while (held := self.held_leases(gw)) and time.monotonic() < until:
            await asyncio.sleep(0.05)
        return held

    async def wrk(self, gw: Gateway) -> list[dict]:
        rows = []
        for target in ("direct", "gateway"):
            port = gw.port if target == "gateway" else self.ports["fast"]
            raw = chat_request(port, False) if target == "gateway" else direct_request(port)
            script = self.workdir / f"wrk-{target}.lua"
            script.write_text(report.wrk_script(raw))
            path = raw.split(b" ", 2)[1].decode()
            before = cpu_seconds(gw.pids) if target == "gateway" else 0.0
            out = await run_pinned(
                [
                    "wrk",
                    "-t1",
                    "-c50",
                    f"-d{self.plan.wrk_seconds:g}s",
                    "--latency",
                    "-s",
                    str(script),
                    f"http://127.0.0.1:{port}{path}",
                ],
                LOAD_CPUS,
                timeout=self.plan.wrk_seconds + 30,
            )
            row = report.parse_wrk(out)
            row.update(target=target, stream=False, concurrency=50)
            if target == "gateway" and row.get("requests"):
                row["cpu_ms_per_request"] = (cpu_seconds(gw.pids) - before) * 1000 / row["requests"]
            rows.append(row)
            log(f"wrk non-stream c=50 {target}: {row.get('requests_per_s', 0):.0f}/s")
        return rows

    def py_spy(self) -> str | None:
        if self.args.no_profile or not (self.plan.profile_seconds or self.args.profile):
            return None
        spy = (
            self.args.py_spy
            or shutil.which("py-spy")
            or str(ROOT / ".venv-tools" / "bench" / "bin" / "py-spy")
        )
        return spy if Path(spy).is_file() or shutil.which(spy) else None

    async def profile(
        self, gw: Gateway, which: str, stagger: float = 0.0, name: str | None = None
    ) -> dict:
        """py-spy on the gateway (from CPU 1) while 50 streams from the ``which`` upstream run
        through it; ``name`` (default ``which``) names the file and the row."""
        name = name or which
        spy = self.py_spy()
        if spy is None:
            log("py-spy not found: no profile (pip install py-spy, or --py-spy PATH)")
            return {"skipped": "py-spy not found"}
        out = Path(self.args.out).with_name(f"bench-profile-{name}.txt")
        seconds = self.plan.profile_seconds or 10.0
        argv = [spy, "record", "--pid", str(gw.proc.pid), "--rate", "200", "--format", "raw"]
        argv += ["--full-filenames", "--duration", str(math.ceil(stagger + seconds))]
        argv += ["--output", str(out)]
        proc = self.procs.start(f"py-spy-{name}", argv, LOAD_CPUS)
        await asyncio.sleep(0.5)
        row = await self.measure("gateway", which, gw, True, 50, (0.0, seconds), stagger)
        await asyncio.to_thread(proc.wait, 60)
        self.procs.stop(proc)
        if not out.is_file():
            return {"skipped": f"py-spy wrote nothing:\n{self.procs.log_tail('py-spy-' + name)}"}
        summary = report.profile_summary(out.read_text(), [self.workdir / "source", ROOT])
        summary.update(
            file=str(out),
            upstream=which,
            completions_per_s_while_sampled=row["completions_per_s"],
            cpu_ms_per_request_while_sampled=row.get("cpu_ms_per_request"),
        )
        log(f"profile ({name}): {summary['samples']} busy samples in {out}")
        return summary

    async def transport(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "scripts.bench.transport_ab",
            "--port",
            str(self.ports["fast"]),
            "--requests",
            str(self.plan.transport_requests),
        ]
        out = await run_pinned(
            argv,
            GATEWAY_CPUS,
            timeout=120,
            env={**os.environ, "PYTHONPATH": self.pythonpath},
            cwd=self.workdir / "source",
        )
        self.results["transport"] = json.loads(out.strip().splitlines()[-1])
        log(f"transport: {self.results['transport']}")

    async def ttfb(self) -> None:
        plan = self.plan
        stagger = (self.events - 1) * plan.ttfb_pace
        timing = (0.5, plan.ttfb_window)
        direct = await self.measure("direct", "ttfb", None, True, 50, timing, stagger)
        gw = self.start_gateway("ttfb", "ttfb")
        try:
            via = await self.measure("gateway", "ttfb", gw, True, 50, timing, stagger)
            breakdown = await self.ttfb_breakdown(gw)
            if self.py_spy():
                self.results.setdefault("profile", {})["paced"] = await self.profile(
                    gw, "ttfb", stagger
                )
        finally:
            self.results.setdefault("gateways", {})["ttfb"] = self.stop_gateway(gw)
        self.results["ttfb"] = {
            "pace_s": plan.ttfb_pace,
            "stream_seconds": stagger,
            "direct": direct,
            "gateway": via,
            "added_ms_p50": via["ttfb_ms_p50"] - direct["ttfb_ms_p50"],
            "added_ms_p99": via["ttfb_ms_p99"] - direct["ttfb_ms_p99"],
            "gateway_cpu_us_per_event": via.get("cpu_ms_per_request", 0) * 1000 / self.events,
            "light_load_breakdown": breakdown,
        }
        log(
            f"ttfb c=50 paced: direct p50 {direct['ttfb_ms_p50']:.2f} ms / p99 "
            f"{direct['ttfb_ms_p99']:.2f} ms; gateway p50 {via['ttfb_ms_p50']:.2f} / p99 "
            f"{via['ttfb_ms_p99']:.2f} ms"
        )

    async def ttfb_breakdown(self, gw: Gateway, count: int = 20) -> dict:
        """Streams one at a time (a quarter second apart, paced upstream): the time to first
        byte split at the moment the completion request reached the upstream."""
        raw = chat_request(gw.port, True)
        timeout = (self.events - 1) * self.plan.ttfb_pace + 30
        phase = await open_streams(
            "127.0.0.1", gw.port, raw, is_sse_done, count, count * 0.25, lambda _: None, timeout
        )
        arrivals = self.fake_stats("ttfb")["arrivals"][-count:]
        sent = sorted(phase.ok, key=lambda r: r.sent)
        if len(sent) != count or len(arrivals) != count:
            return {"skipped": f"{len(sent)} streams, {len(arrivals)} upstream arrivals"}
        before = [a - r.sent for r, a in zip(sent, arrivals, strict=True)]
        after = [r.first_byte - a for r, a in zip(sent, arrivals, strict=True)]
        return {
            "streams": count,
            "ttfb_ms_p50": ms(percentile([r.ttfb for r in sent], 50)),
            "until_upstream_request_ms_p50": ms(percentile(before, 50)),
            "until_upstream_request_ms_max": ms(max(before)),
            "upstream_request_to_first_byte_ms_p50": ms(percentile(after, 50)),
            "upstream_request_to_first_byte_ms_max": ms(max(after)),
        }

    async def hold_streams(self, gw: Gateway | None) -> dict:
        plan = self.plan
        port = gw.port if gw else self.ports["slow"]
        raw = chat_request(port, True) if gw else direct_request(port)
        check = is_sse_done if gw else is_upstream_done
        duration = (self.events - 1) * plan.streams_pace
        peak_rss, peak_leases = [0], [0]
        pids = gw.worker_pids if gw else []

        def sample(_open_now: int) -> None:
            if gw:
                peak_rss[0] = max(peak_rss[0], rss_kib(pids))
                peak_leases[0] = max(peak_leases[0], self.held_leases(gw) or 0)

        self.fake_stats("slow", reset=True)
        before_rss = rss_kib(pids) if gw else 0
        before_cpu = cpu_seconds(pids) if gw else 0.0
        phase = await open_streams(
            "127.0.0.1",
            port,
            raw,
            check,
            plan.streams,
            plan.streams_ramp,
            sample,
            timeout=duration + plan.streams_ramp + 60,
        )
        upstream = self.fake_stats("slow")
        warnings = self.procs.new_warnings(f"gateway-{gw.name}") if gw else {}
        row = {
            "streams": plan.streams,
            "completed": len(phase.ok),
            "all_completed": len(phase.ok) == plan.streams,
            "failures": phase.failures,
            "peak_open_client": phase.peak_open,
            "peak_open_upstream": upstream["max_open"],
            "seconds": phase.window,
            "stream_seconds": duration,
            "gateway_warnings": warnings,
            "ttfb_ms_p50": ms(percentile([r.ttfb for r in phase.ok], 50)),
            "ttfb_ms_p99": ms(percentile([r.ttfb for r in phase.ok], 99)),
        }
        if gw:
            held = max(1, phase.peak_open)
            row.update(
                rss_before_kib=before_rss,
                rss_peak_kib=peak_rss[0],
                rss_after_kib=rss_kib(pids),
                rss_per_open_stream_kib=(peak_rss[0] - before_rss) / held,
                cpu_ms_per_stream=(cpu_seconds(pids) - before_cpu) * 1000 / max(1, len(phase.ok)),
                peak_leases_held=peak_leases[0],  # pooled: what the count after is measured by
            )
            row["cpu_us_per_event"] = row["cpu_ms_per_stream"] * 1000 / self.events
        return row

    async def streams(self) -> None:
        plan = self.plan
        out: dict = {"pace_s": plan.streams_pace, "ramp_s": plan.streams_ramp}
        if plan.streams_direct:
            out["direct"] = await self.hold_streams(None)
            log(f"{plan.streams} streams direct: {out['direct']['completed']} completed")
        gw = self.start_gateway("streams", "slow")
        try:
            # Warm up (first requests, lazily built objects), then take the baseline.
            warm = await open_streams(
                "127.0.0.1",
                gw.port,
                chat_request(gw.port, True),
                is_sse_done,
                20,
                0.2,
                lambda _: None,
                timeout=(self.events - 1) * plan.streams_pace + 30,
            )
            out["warmup_completed"] = len(warm.ok)
            out["gateway"] = await self.hold_streams(gw)
        finally:
            self.results.setdefault("gateways", {})["streams"] = self.stop_gateway(gw)
        self.results["streams"] = out
        g = out["gateway"]
        log(
            f"{plan.streams} streams via gateway: {g['completed']} completed, peak open "
            f"{g['peak_open_client']}, {g['rss_per_open_stream_kib']:.1f} KiB RSS per stream"
        )
        if self.args.redis:  # the same through a pooled gateway: errors and leases left held
            gw = self.start_gateway("streams-pooled", "slow", mode="pooled")
            try:
                pooled = await self.hold_streams(gw)
                pooled["leases_held_after"] = await self.leases_after(gw)
            finally:
                self.results["gateways"]["streams-pooled"] = self.stop_gateway(gw)
            out["pooled"] = pooled
            log(
                f"{plan.streams} streams via a pooled gateway: {pooled['completed']} completed, "
                f"{sum(pooled['failures'].values())} errors, {pooled['peak_leases_held']} leases "
                f"held at the peak, {pooled['leases_held_after']} after"
            )

    async def workers2(self) -> None:
        plan = self.plan
        everything = set(range(os.cpu_count() or 2))
        pinned = [0, self.fake.pid, self.procs_pid("redis")]  # type: ignore[union-attr]
        for pid in pinned:
            os.sched_setaffinity(pid, everything)
        gw = self.start_gateway("workers2", "fast", workers=2, cpus=None)
        rows = []
        try:
            for stream in (False, True):
                for c in plan.workers2:
                    direct = await self.measure(
                        "direct", "fast", None, stream, c, plan.workers2_window
                    )
                    via = await self.measure("gateway", "fast", gw, stream, c, plan.workers2_window)
                    rows += [direct, via]
                    log(
                        f"WORKERS=2 {'stream' if stream else 'non-stream'} c={c}: direct "
                        f"{direct['completions_per_s']:.0f}/s, gateway "
                        f"{via['completions_per_s']:.0f}/s"
                    )
        finally:
            self.results.setdefault("gateways", {})["workers2"] = self.stop_gateway(gw)
            for pid in pinned:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(pid, LOAD_CPUS)
        self.results["workers2"] = rows

    async def long_answer(self) -> None:
        """Other clients' latency while one worker reads 2 MB answers (issue 13 D1)."""
        plan = self.plan
        gw = self.start_gateway("long", "fast")
        long_raw = chat_request(gw.port, True, LONG_MARKER.decode())

        async def one_long() -> tuple[object, float]:
            conn = await Connection.open("127.0.0.1", gw.port)
            before = cpu_seconds(gw.pids)
            try:
                result = await conn.request(long_raw, plan.long_timeout)
            finally:
                conn.close()
            if not (result.status == 200 and is_sse_done(result)):
                self.problems.append(f"long answer: {result.error or result.status}")
            return result, cpu_seconds(gw.pids) - before

        try:
            alone, cpu = await one_long()
            without = await self.measure("gateway", "fast", gw, False, 10, plan.long_window)
            stop = asyncio.Event()
            longs: list[float] = []

            async def reader() -> None:
                while not stop.is_set():
                    result, _ = await one_long()
                    if not is_sse_done(result):
                        return
                    longs.append(result.latency)

            task = asyncio.ensure_future(reader())
            await asyncio.sleep(0.2)
            during = await self.measure("gateway", "fast", gw, False, 10, plan.long_window)
            stop.set()
            await asyncio.wait_for(task, plan.long_timeout)
        finally:
            self.results.setdefault("gateways", {})["long"] = self.stop_gateway(gw)
        self.results["long_answer"] = {
            "chars": plan.long_chars,
            "stream_bytes": alone.size,
            "alone_s": alone.latency,
            "alone_error": alone.error,
            "cpu_s_per_answer": cpu,
            "long_answers_during": len(longs),
            "others_without": without,
            "others_during": during,
        }
        log(
            f"long answer {plan.long_chars:,} chars: {cpu:.2f} s CPU, {alone.latency:.2f} s alone;"
            f" 10 other clients p50/p99 {without['latency_ms_p50']:.1f}/"
            f"{without['latency_ms_p99']:.1f} ms without, {during['latency_ms_p50']:.1f}/"
            f"{during['latency_ms_p99']:.1f} ms while {len(longs)} long answers were read"
        )

    def procs_pid(self, name: str) -> int:
        return next(pid for pid, (n, _) in self.procs.children.items() if n == name)

    async def run(self) -> None:
        meta = self.results["meta"]
        meta["source_sha256"] = source_digest(self.workdir / "source")
        meta["calibration_ms_cpu0"] = [await asyncio.to_thread(calibrate, GATEWAY_CPUS)]
        self.start_infra()
        if self.args.long_only:
            await self.long_answer()
            return
        await self.throughput()
        await self.pooled()
        await self.transport()
        await self.ttfb()
        meta["calibration_ms_cpu0"].append(await asyncio.to_thread(calibrate, GATEWAY_CPUS))
        await self.streams()
        if self.args.redis:  # WORKERS=2 needs a shared Redis
            await self.workers2()
        await self.long_answer()
        meta["calibration_ms_cpu0"].append(await asyncio.to_thread(calibrate, GATEWAY_CPUS))


def pooled_tokens() -> list[str]:
    return [f"bench-user-token-{i:02d}" for i in range(POOLED_TOKENS)]


def guest_sources(port: int) -> dict[str, float]:
    """The gateway's ``zai_gateway_guests_total`` by source (reserve / inline), from /metrics."""
    status, body = http_get(port, "/metrics")
    found = re.findall(rb'^zai_gateway_guests_total\{source="(\w+)"\} (\S+)$', body, re.M)
    return {source.decode(): float(value) for source, value in found} if status == 200 else {}


def ms(seconds: float) -> float:
    return seconds * 1000


def summarize(phase: Phase, edges: dict[str, Snapshot], via_gateway: bool) -> dict:
    ok = phase.ok
    n = max(1, len(ok))
    row: dict = {
        "completions_per_s": phase.rate,
        "completions": len(ok),
        "failures": phase.failures,
        "latency_ms_p50": ms(percentile([r.latency for r in ok], 50)),
        "latency_ms_p99": ms(percentile([r.latency for r in ok], 99)),
        "ttfb_ms_p50": ms(percentile([r.ttfb for r in ok], 50)),
        "ttfb_ms_p99": ms(percentile([r.ttfb for r in ok], 99)),
        "first_data_ms_p50": ms(percentile([r.first_data - r.sent for r in ok], 50)),
    }
    start, end = edges.get("start"), edges.get("end")
    if start is None or end is None:
        return row
    # The rate in each quarter of the window: this machine's speed drifts (see calibration).
    quarter = (end.at - start.at) / 4
    counts = [0, 0, 0, 0]
    for r in ok:
        counts[min(3, max(0, int((r.end - start.at) / quarter)))] += 1
    row["rate_by_quarter"] = [round(c / quarter, 1) for c in counts] if quarter > 0 else []
    elapsed = end.at - start.at
    ticks = end.steal[1] - start.steal[1]
    row["cpu0_steal_percent"] = 100 * (end.steal[0] - start.steal[0]) / ticks if ticks else 0.0
    row["fake_cpu_ms_per_request"] = (end.fake_cpu - start.fake_cpu) * 1000 / n
    fake = {k: end.fake[k] - start.fake[k] for k in ("connections", "completions", "auths")}
    fake["connections"] -= 1  # the stats request itself
    if not via_gateway:
        return row
    cpu = {pid: end.cpu.get(pid, 0.0) - start.cpu.get(pid, 0.0) for pid in start.cpu}
    row.update(
        cpu_ms_per_request=sum(cpu.values()) * 1000 / n,
        cpu_busy=sum(cpu.values()) / elapsed if elapsed else 0.0,
        cpu_seconds_by_pid={str(pid): round(v, 3) for pid, v in cpu.items()},
        upstream_per_completion={k: v / n for k, v in fake.items()},
    )
    if start.redis is not None and end.redis is not None:
        delta = end.redis.minus(start.redis)
        row["redis"] = {
            "round_trips_per_request": delta.reads / n,
            "commands_per_request": delta.commands / n,
            "per_command": {k: round(v / n, 3) for k, v in sorted(delta.per_command.items())},
        }
    return row


async def run_pinned(
    argv: list[str],
    cpus: set[int],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=cwd,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {out.decode()[-2000:]}")
    return out.decode()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Benchmark the gateway against a local fake upstream (loopback only).",
    )
    parser.add_argument("--quick", action="store_true", help="a ~3-minute run (short windows)")
    parser.add_argument("--out", default="bench-results.json", help="where the JSON goes")
    parser.add_argument(
        "--guest-reserve", type=int, default=200, help="GUEST_RESERVE of the gateways (default 200)"
    )
    parser.add_argument(
        "--no-redis",
        dest="redis",
        action="store_false",
        help="the embedded store instead of redis-server (no Redis counts)",
    )
    parser.add_argument("--profile", action="store_true", help="profile in --quick too")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--py-spy", help="path to py-spy (default: PATH, .venv-tools/bench)")
    parser.add_argument(
        "--long-only", action="store_true", help="only the long-answer phase (issue 13 D1)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("the benchmark needs 2 CPUs (gateway on one, load on the other)")
    os.sched_setaffinity(0, LOAD_CPUS)
    with contextlib.suppress(ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    bench = Bench(plan, args)
    log(f"{plan.name} run, time budget {plan.budget:g} s, logs in {bench.workdir}")
    started = time.monotonic()
    failed = ""
    try:
        asyncio.run(asyncio.wait_for(bench.run(), plan.budget))
    except TimeoutError:
        failed = f"stopped: the time budget of {plan.budget:g} s ran out"
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # report what was measured, then fail
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        bench.procs.stop_all()
        if bench.redis is not None:
            bench.redis.close()
    bench.results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    if failed:
        bench.results["meta"]["error"] = failed
    Path(args.out).write_text(json.dumps(bench.results, indent=2) + "\n")
    print(report.tables(bench.results))
    log(f"results written to {args.out}")
    if failed:
        log(f"FAILED: {failed} (logs kept in {bench.workdir})")
        sys.exit(1)
    if bench.problems:
        log(f"requests failed ({'; '.join(bench.problems)}): logs kept in {bench.workdir}")
        sys.exit(1)
    shutil.rmtree(bench.workdir, ignore_errors=True)
