"""Instances, the guest reserve and shared facts, on fakeredis and a real redis-server."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec

from server.core.models import require_model
from server.credentials.sources import GuestTokens
from state.facts import Facts
from state.guests import SIGNINS_PACED, SIGNINS_UNPACED, GuestReserve, StoredGuest
from state.instances import Instances
from state.keys import Keys

KEYS = Keys("t:")


class Numbered:
    """Stands in for a guest sign-in: the n-th is ``token-n``; ``then(n)`` runs with each."""

    def __init__(self, then: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.made = 0
        self.then = then

    async def __call__(self) -> StoredGuest:
        self.made += 1
        if self.then is not None:
            await self.then(self.made)
        return StoredGuest(f"token-{self.made}", f"user-{self.made}", "Guest", time.time())


async def test_instances_register_expire_and_deregister(redis):
    # The TTL leaves room for a loaded CI machine between the heartbeats and the reads.
    a = Instances(redis, KEYS, "host:1:a", ttl=2.0, version="1")
    b = Instances(redis, KEYS, "host:2:b", ttl=2.0, version="1")
    await a.heartbeat(inflight=2)
    await b.heartbeat(inflight=0)
    live = {row["id"]: row for row in await a.live()}
    assert set(live) == {"host:1:a", "host:2:b"} and live["host:1:a"]["inflight"] == "2"
    await b.deregister()
    assert [row["id"] for row in await a.live()] == ["host:1:a"]
    await asyncio.sleep(2.1)  # a was "killed": no more heartbeats
    assert await a.live() == []
    assert await redis.exists(KEYS.instance("host:1:a")) == 0


async def test_guest_reserve_refills_and_each_guest_is_used_once(redis):
    reserve = GuestReserve(redis, KEYS, size=6)
    fetch = Numbered()

    assert await reserve.take() == ([], 0)
    assert reserve.low(0) and reserve.low(2) and not reserve.low(3)
    assert await reserve.refill(fetch) == 6
    other = GuestReserve(redis, KEYS, size=6)
    taken = await asyncio.gather(*(r.take(n) for r, n in [(reserve, 1), (other, 3), (reserve, 2)]))
    tokens = [guest.token for guests, _ in taken for guest in guests]
    assert [len(guests) for guests, _ in taken] == [1, 3, 2]
    assert sorted(tokens) == sorted(f"token-{i}" for i in range(1, 7))
    assert await reserve.take(4) == ([], 0)  # empty now


async def test_a_burst_of_anonymous_requests_pops_its_guests_in_one_round_trip(redis):
    reserve = GuestReserve(redis, KEYS, size=40)  # a batch of 8; 40 or more left: full
    stored = [StoredGuest(f"token-{n}", f"user-{n}", "Guest", time.time()) for n in range(80)]
    await redis.rpush(KEYS.guests, *(msgspec.json.encode(guest) for guest in stored))
    guests = GuestTokens(client=None, reserve=reserve)  # type: ignore[arg-type]
    model = require_model("GLM-4.5")
    creds = await asyncio.gather(*(guests.acquire(model) for _ in range(20)))
    assert len({cred.token for cred in creds}) == 20  # each guest used once
    assert await redis.llen(KEYS.guests) == 80 - 27  # one pop: the 20 waiting, 7 kept
    more = [await guests.acquire(model) for _ in range(7)]
    assert await redis.llen(KEYS.guests) == 53  # served by the 7 kept
    assert not {cred.token for cred in more} & {cred.token for cred in creds}
    assert guests._refill is None  # never short of its size: nothing to top up


async def test_the_reserve_grows_with_what_every_replica_asks_for(redis):
    a = GuestReserve(redis, KEYS, size=4, max_size=30)
    b = GuestReserve(redis, KEYS, size=4, max_size=30)
    fetch = Numbered()

    assert await a.refill(fetch) == 4  # no demand yet: its floor
    for reserve in (a, b) * 10:  # 40 asked in one second, by two replicas, mostly unmet
        await reserve.take(2)
    await asyncio.sleep(1.05)  # that second is over: it counts
    # 40 over the 5 s window is 8/s, and a refill stocks 2 s of it: 16
    assert await b.refill(fetch) == 16 and b.target == 16 and not b.low(8) and b.low(7)
    for reserve in (a, b) * 40:
        await reserve.take(2)
    await asyncio.sleep(1.05)
    assert await a.refill(fetch) == 30  # 200 asked: 80 wanted, capped at 30
    fixed = GuestReserve(redis, KEYS, size=4)  # no max: the size, whatever the demand
    assert await fixed.wanted() == 4


async def test_demand_older_than_two_windows_is_forgotten(redis):
    reserve = GuestReserve(redis, KEYS, size=2, max_size=100)
    now = int((await redis.time())[0])
    await redis.hset(KEYS.guest_demand, mapping={now - 3: 50, now - 30: 1000})
    assert await reserve.wanted() == 20  # 50 over 5 s, 2 s of it; the old ask is not counted
    assert await redis.hkeys(KEYS.guest_demand) == [str(now - 3)]


async def test_refill_is_done_by_one_replica_at_a_time(redis):
    a, b = GuestReserve(redis, KEYS, size=3), GuestReserve(redis, KEYS, size=3)

    async def slow() -> StoredGuest:
        await asyncio.sleep(0.01)
        return StoredGuest("t", "u", "Guest", time.time())

    added = await asyncio.gather(a.refill(slow), b.refill(slow))
    assert sorted(added) == [0, 3]


async def test_a_refill_keeps_signing_in_while_takes_drain_the_reserve(redis):
    # A sustained load: with every sign-in the refill makes, a request takes a guest. A refill
    # that filled once and stopped left the reserve short (requests then signed in inline).
    reserve = GuestReserve(redis, KEYS, size=40)

    async def demand(made: int) -> None:
        if made <= 60:
            await reserve.take(1)

    fetch = Numbered(demand)
    added = await reserve.refill(fetch, SIGNINS_PACED)
    assert await redis.llen(KEYS.guests) == 40  # full when the demand stopped
    assert added == fetch.made > 40


async def test_sign_ins_in_flight_follow_the_pacing(redis):
    # Unpaced, enough at once to outrun a busy worker's demand, each pushed as soon as a
    # batch is in; paced, two (more would only book slots ahead of the requests' own calls).
    for in_flight, expected in ((SIGNINS_UNPACED, 64), (SIGNINS_PACED, 2)):
        await redis.delete(KEYS.guests)
        reserve = GuestReserve(redis, KEYS, size=200)
        going = most = 0
        seen_stocked = 0

        async def fetch() -> StoredGuest:
            nonlocal going, most, seen_stocked
            going += 1
            most = max(most, going)
            seen_stocked = max(seen_stocked, await redis.llen(KEYS.guests))
            await asyncio.sleep(0.001)
            going -= 1
            return StoredGuest("t", "u", "Guest", time.time())

        assert await reserve.refill(fetch, in_flight) == 200
        assert most == expected
        assert 0 < seen_stocked < 200  # pushed while the refill still went on


async def test_stale_guest_is_not_used(redis):
    reserve = GuestReserve(redis, KEYS, size=2, max_age=10)

    async def old() -> StoredGuest:
        return StoredGuest("t", "u", "Guest", time.time() - 60)

    await reserve.refill(old)
    assert (await reserve.take(2))[0] == []


async def test_facts_are_shared_with_an_age(redis):
    facts = Facts(redis, KEYS)
    assert await facts.get("fe_version", 60) is None
    await facts.put("fe_version", "prod-fe-1.2.3")
    assert await Facts(redis, KEYS).get("fe_version", 60) == "prod-fe-1.2.3"
    assert await facts.get("fe_version", -1) is None


async def test_a_paced_refill_stops_starting_sign_ins_before_its_lock_runs_out(redis, monkeypatch):
    # Paced sign-ins arrive a few a second: a round for hundreds used to run on past the
    # refill lock's life, so another replica's round started beside it and both booked pacer
    # slots. The round now starts no sign-in after its deadline and lets the lock go.
    monkeypatch.setattr("state.guests._REFILL_FOR", 0.3)
    reserve = GuestReserve(redis, KEYS, size=200)

    async def paced(_: int) -> None:
        await asyncio.sleep(0.05)

    fetch = Numbered(paced)
    started = time.monotonic()
    added = await reserve.refill(fetch, SIGNINS_PACED)
    assert time.monotonic() - started < 1.0
    assert 2 <= added == fetch.made <= 16  # about 0.3 s of two at a time, 20 per second
    assert await redis.llen(KEYS.guests) == added
    assert await GuestReserve(redis, KEYS, size=200).refill(Numbered(), SIGNINS_PACED) > 0
