"""Fossil delta compression with centrifuge-python, JSON and Protobuf: what the SDK's own suite
expects of a server with delta on (its fossil decoder tests and the delta variants of its client
tests), as our own scenarios.

- namespace `deltapub` of herald-sdk.toml is set up as the SDK's suite sets up its default
  namespace: subscription tokens, client publish, history, force_recovery, delta_publish;
- `delta` (allow_subscribe_for_client) takes API publishes;
- tests/fixtures/fossil holds deltas made by Fossil itself (see its README).

`test_client.py::test_fossil_delta` covers API publishes recovered after an abrupt transport drop.
"""

import json
import random
from pathlib import Path

import pytest
from cent import PublishRequest
from centrifuge import DeltaType
from centrifuge.fossil import apply_delta

from helpers import FORMATS, api, conn_token, run, sub_token, uid, wait_until

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "fossil"
FIXTURE_CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "delta").is_file())

DELTAS = [None, DeltaType.FOSSIL]


def delta_id(delta):
    return "fossil" if delta else "nodelta"


async def api_publish(channel, data):
    return await api("publish", PublishRequest(channel=channel, data=data))


def read_case(name):
    return [(FIXTURES / name / f).read_bytes() for f in ("origin", "target", "delta")]


async def token_subscribed(s, client, user, channel, **kwargs):
    return await s.subscribed(client, channel, token=sub_token(user, channel), **kwargs)


# ============================================================== the SDK's decoder

def test_fixture_cases_exist():
    assert FIXTURE_CASES, f"no fossil fixtures found under {FIXTURES}"


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_sdk_decoder_applies_fossil_made_deltas(case):
    """The fixtures' deltas (made by Fossil) rebuild each target with the SDK's decoder, the one
    that rebuilds Herald's deltas; a delta missing its last byte is refused."""
    origin, target, delta = read_case(case)
    assert apply_delta(origin, delta) == target
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises a bare Exception
        apply_delta(origin, delta[:-1])


# ============================================================== client publish, live

@pytest.mark.parametrize("delta", DELTAS, ids=delta_id)
@pytest.mark.parametrize("fmt", FORMATS)
def test_client_publish_same_then_shorter_payload(fmt, delta):
    """A subscriber publishes a long payload, the same payload again, then a short unrelated one
    into its own channel: it receives each one as published. With delta on, the repeat comes as a
    delta (of nothing changed); without it nothing is a delta."""
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"deltapub:pubsub-{uid()}"
        sub = await token_subscribed(s, client, user, ch, delta=delta)
        assert sub._delta_negotiated is bool(delta), "the server confirms delta only when asked"
        long_payload = {"text": "a message long enough for a fossil delta to be much smaller than it: "
                                "it repeats itself, it repeats itself, it repeats itself."}
        sent = [long_payload, long_payload, {"text": "bye"}]
        for i, payload in enumerate(sent):
            await sub.publish(data=s.encode(payload))
            await wait_until(lambda i=i: len(sub.events.publications) == i + 1, 3, f"publication {i + 1}")
        pubs = [c.pub for c in sub.events.publications]
        assert [s.decode(p.data) for p in pubs] == sent
        assert [p.offset for p in pubs] == [1, 2, 3]
        flags = [bool(p.delta) for p in pubs]
        if delta:
            assert flags[:2] == [False, True], f"first in full, the repeat as a delta: {flags}"
        else:
            assert flags == [False, False, False]
        assert sub.events.errors == []

    run(fmt, scenario)


# ============================================================== recovery

@pytest.mark.parametrize("delta", DELTAS, ids=delta_id)
@pytest.mark.parametrize("fmt", FORMATS)
def test_recovery_of_client_publications_after_disconnect(fmt, delta):
    """Two clients of one user subscribe; the first disconnects (cleanly), the second publishes
    ten; the first connects again and recovers all ten, decoded, in order, each once."""
    async def scenario(s):
        user = f"u-{uid()}"
        ch = f"deltapub:recovery-{uid()}"
        reader = await s.connected(user)
        reader_sub = await token_subscribed(s, reader, user, ch, delta=delta)
        first = reader_sub.events.subscribed[0]
        assert first.recovered is False and first.was_recovering is False
        writer = await s.connected(user)
        writer_sub = await token_subscribed(s, writer, user, ch, delta=delta)

        await reader.disconnect()
        sent = []
        for i in range(10):
            text = f"a subscriber joined, number {i}" if i % 2 == 0 else f"greetings from another client {i}"
            sent.append({"text": text})
            await writer_sub.publish(data=s.encode(sent[-1]))
        await reader.connect()
        await wait_until(lambda: len(reader_sub.events.subscribed) == 2, 5, "resubscribed")
        again = reader_sub.events.subscribed[1]
        assert again.recovered is True
        assert again.was_recovering is True
        await wait_until(lambda: len(reader_sub.events.publications) >= 10, 5, "10 recovered publications")
        await wait_until(lambda: len(writer_sub.events.publications) == 10, 3, "the writer's own 10")
        pubs = [c.pub for c in reader_sub.events.publications]
        assert [p.offset for p in pubs] == list(range(1, 11)), "each once, in order"
        assert [s.decode(p.data) for p in pubs] == sent
        assert reader_sub.events.errors == []

    run(fmt, scenario)


# ============================================================== realistic documents

def order_books(steps, seed):
    """An exchange order book (24 asks, 24 bids, ~1.5 KB of JSON) and `steps - 1` successors,
    each changing one ask, one bid and the update time, as a market data feed does."""
    rng = random.Random(seed)
    mid = 600_000
    book = {
        "asks": [[str(mid + 10 * (i + 1)), f"{rng.uniform(1, 5000):.2f}"] for i in range(24)],
        "bids": [[str(mid - 10 * i), f"{rng.uniform(1, 5000):.2f}"] for i in range(24)],
        "lastTradePrice": str(mid),
        "lastUpdate": 1_700_000_000_000,
    }
    books = [book]
    for _ in range(steps - 1):
        book = json.loads(json.dumps(book))
        book["asks"][rng.randrange(24)][1] = f"{rng.uniform(1, 5000):.2f}"
        book["bids"][rng.randrange(24)][1] = f"{rng.uniform(1, 5000):.2f}"
        book["lastUpdate"] += rng.randrange(100, 5000)
        books.append(book)
    return books


@pytest.mark.parametrize("fmt", FORMATS)
def test_order_book_updates_delta_chained(fmt):
    """Six successive order books published through the API: the subscriber rebuilds each one;
    every one after the first comes as a delta against the one before."""
    async def scenario(s):
        client = await s.connected(f"u-{uid()}")
        ch = f"delta:book-{uid()}"
        sub = await s.subscribed(client, ch, delta=DeltaType.FOSSIL)
        books = order_books(6, seed=ch)
        for book in books:
            await api_publish(ch, book)
        await wait_until(lambda: len(sub.events.publications) == len(books), 5, "every order book")
        pubs = [c.pub for c in sub.events.publications]
        assert [s.decode(p.data) for p in pubs] == books
        assert [bool(p.delta) for p in pubs] == [False] + [True] * (len(books) - 1)

    run(fmt, scenario)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixture_targets_through_herald(fmt):
    """Each fixture's origin then target, published by a client: a subscriber with delta on
    receives the target exactly (Protobuf: the bytes, including the binary ones; JSON: the
    fixtures that are JSON documents). Where a delta is much smaller than the target (cases
    with a few bytes changed in kilobytes) it comes as one."""
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        checked = 0
        for case in FIXTURE_CASES:
            origin, target, fossil_delta = read_case(case)
            if fmt == "json":
                try:
                    origin, target = json.loads(origin), json.loads(target)
                except ValueError:
                    continue
            ch = f"deltapub:fixture{case}-{uid()}"
            sub = await token_subscribed(s, client, user, ch, delta=DeltaType.FOSSIL)
            await sub.publish(data=origin)
            await sub.publish(data=target)
            await wait_until(lambda sub=sub: len(sub.events.publications) == 2, 3, f"case {case}: 2 publications")
            first, second = (c.pub for c in sub.events.publications)
            assert first.data == origin, f"case {case}: origin"
            assert second.data == target, f"case {case}: target"
            assert first.delta is False
            if fmt == "protobuf" and len(target) > 1000 and len(fossil_delta) * 4 < len(target):
                assert second.delta is True, f"case {case}: a delta much smaller than the target goes as one"
            await sub.unsubscribe()
            checked += 1
        assert checked >= 1

    run(fmt, scenario)


@pytest.mark.parametrize("fmt", FORMATS)
def test_recovered_order_books_come_delta_chained(fmt):
    """Order books missed while disconnected are recovered in order and decoded; the first
    recovered one is in full (the client's base may be stale) and the next ones are deltas, and
    a live one after the recovery continues the chain."""
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"deltapub:bookrecovery-{uid()}"
        sub = await token_subscribed(s, client, user, ch, delta=DeltaType.FOSSIL)
        books = order_books(6, seed=ch)
        await api_publish(ch, books[0])
        await wait_until(lambda: len(sub.events.publications) == 1, 3, "the live order book")
        await client.disconnect()
        for book in books[1:5]:
            await api_publish(ch, book)
        await client.connect()
        await wait_until(lambda: len(sub.events.subscribed) == 2, 5, "resubscribed")
        assert sub.events.subscribed[1].recovered is True
        await wait_until(lambda: len(sub.events.publications) == 5, 3, "4 recovered order books")
        await api_publish(ch, books[5])
        await wait_until(lambda: len(sub.events.publications) == 6, 3, "a live order book after recovery")
        pubs = [c.pub for c in sub.events.publications]
        assert [p.offset for p in pubs] == [1, 2, 3, 4, 5, 6]
        assert [s.decode(p.data) for p in pubs] == books
        assert [bool(p.delta) for p in pubs] == [False, False, True, True, True, True]

    run(fmt, scenario)
