"""centrifuge-python against Herald, JSON and Protobuf: connection, tokens, subscriptions,
publish, presence, join/leave, history, recovery, personal channel, RPC."""

import asyncio

import pytest
from cent import PublishRequest
from centrifuge import ClientState, DeltaType, ReplyError, StreamPosition, SubscriptionState

from helpers import (
    FORMATS,
    api,
    conn_token,
    make_jwt,
    now,
    run,
    sub_token,
    uid,
    wait_until,
)

pytestmark = pytest.mark.parametrize("fmt", FORMATS)


async def api_publish(channel, data):
    return await api("publish", PublishRequest(channel=channel, data=data))


def offsets(ctxs):
    return [c.pub.offset for c in ctxs]


# ============================================================== connection

def test_connect_disconnect_loop(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = s.client(token=conn_token(user), name="herald-sdk-tests", version="1.2.3",
                          data=s.encode({"hello": "connect data"}))
        ev = client.events
        ids = []
        for i in range(5):
            await client.connect()
            await client.ready(timeout=5)
            assert client.state == ClientState.CONNECTED
            await wait_until(lambda: len(ev.connected) == i + 1, 2, "connected event")
            ctx = ev.connected[-1]
            assert isinstance(ctx.client, str) and ctx.client, "connect result must carry a client id"
            assert ctx.version, "connect result must carry a non-empty server version"
            ids.append(ctx.client)
            await client.disconnect()
            assert client.state == ClientState.DISCONNECTED
            assert ev.disconnected[-1].code == 0
        assert len(set(ids)) == 5, f"each connection gets its own client id: {ids}"
        assert ev.errors == []

    run(fmt, scenario)


def test_bad_connection_token_garbage(fmt):
    async def scenario(s):
        client = s.client(token="this-is-not-a-jwt")
        await client.connect()
        await wait_until(lambda: client.events.disconnected, 5, "disconnected event")
        assert client.events.disconnected[0].code == 3500
        await asyncio.sleep(1.5)
        assert client.state == ClientState.DISCONNECTED, "terminal code: no reconnect"
        assert client.events.connected == []

    run(fmt, scenario)


def test_bad_connection_token_signature(fmt):
    async def scenario(s):
        token = make_jwt({"sub": f"u-{uid()}", "iat": now()}, secret="not-the-server-secret")
        client = s.client(token=token)
        await client.connect()
        await wait_until(lambda: client.events.disconnected, 5, "disconnected event")
        assert client.events.disconnected[0].code == 3500
        await asyncio.sleep(1.0)
        assert client.state == ClientState.DISCONNECTED
        assert client.events.connected == []

    run(fmt, scenario)


def test_expired_connection_token_refreshed_with_get_token(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        calls = []

        async def get_token():
            calls.append(now())
            return conn_token(user, exp=now() + 3600)

        client = s.client(token=conn_token(user, iat=now() - 120, exp=now() - 60), get_token=get_token)
        await client.connect()
        await wait_until(lambda: client.state == ClientState.CONNECTED, 10, "connected after token refresh")
        assert calls, "get_token must have been called"
        codes = [getattr(e.error, "code", None) for e in client.events.errors]
        assert 109 in codes, f"expired token → error 109, got errors {client.events.errors}"
        assert client.events.disconnected == []

    run(fmt, scenario)


def test_short_lived_token_refresh_keeps_connection(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        exp = now() + 3
        calls = []

        async def get_token():
            calls.append(asyncio.get_running_loop().time())
            return conn_token(user, exp=now() + 3600)

        client = s.client(token=conn_token(user, exp=exp), get_token=get_token)
        start = asyncio.get_running_loop().time()
        await client.connect()
        await client.ready(timeout=5)
        await wait_until(lambda: calls, 8, "get_token call for refresh")
        assert calls[0] - start <= 4.5, "refresh must be driven by the connect result expires/ttl"
        while now() < exp + 4:
            await asyncio.sleep(0.2)
        ev = client.events
        assert client.state == ClientState.CONNECTED
        assert len(ev.connected) == 1, "no reconnect"
        assert len(ev.connecting) == 1, "only the initial connecting event"
        assert ev.disconnected == []
        assert ev.errors == []
        ch = f"public:refresh-{uid()}"
        await s.subscribed(client, ch)

    run(fmt, scenario)


def test_rpc_not_available(fmt):
    async def scenario(s):
        client = await s.connected(f"u-{uid()}")
        with pytest.raises(ReplyError) as exc:
            await client.rpc("some.method", s.encode({"a": 1}))
        assert exc.value.code == 108
        assert client.state == ClientState.CONNECTED

    run(fmt, scenario)


# ============================================================== subscriptions and tokens

def test_subscribe_unsubscribe_loop_public(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"public:loop-{uid()}"
        sub = s.new_sub(client, ch)
        for _ in range(5):
            await sub.subscribe()
            await sub.ready(timeout=5)
            assert sub.state == SubscriptionState.SUBSCRIBED
            await sub.unsubscribe()
            assert sub.state == SubscriptionState.UNSUBSCRIBED
        assert len(sub.events.subscribed) == 5
        assert [u.code for u in sub.events.unsubscribed] == [0] * 5
        await sub.subscribe()
        await sub.ready(timeout=5)
        await api_publish(ch, {"after": "loop"})
        await wait_until(lambda: sub.events.publications, 3, "publication")
        await asyncio.sleep(0.3)
        assert len(sub.events.publications) == 1
        assert s.decode(sub.events.publications[0].pub.data) == {"after": "loop"}
        assert len(client.events.connecting) == 1, "no reconnects (unsubscribe errors reconnect)"

    run(fmt, scenario)


def test_unsubscribe_not_subscribed_is_fine(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"public:race-{uid()}"
        sub = s.new_sub(client, ch)
        # subscribe() schedules the subscribe; unsubscribe() right away sends an
        # unsubscribe for a channel the server has not subscribed (yet).
        await sub.subscribe()
        await sub.unsubscribe()
        await asyncio.sleep(0.5)
        assert client.state == ClientState.CONNECTED
        assert len(client.events.connecting) == 1, "an unsubscribe error would make the SDK reconnect"
        await sub.subscribe()
        await sub.ready(timeout=5)
        stats = await sub.presence_stats()
        assert (stats.num_clients, stats.num_users) == (1, 1)

    run(fmt, scenario)


def test_default_namespace_requires_sub_token(fmt):
    async def scenario(s):
        client = await s.connected(f"u-{uid()}")
        sub = s.new_sub(client, f"private-{uid()}")
        await sub.subscribe()
        await wait_until(lambda: sub.events.unsubscribed, 5, "unsubscribed event")
        assert sub.events.unsubscribed[0].code == 103
        assert client.state == ClientState.CONNECTED

    run(fmt, scenario)


def test_valid_sub_token(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"tok-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        assert sub.state == SubscriptionState.SUBSCRIBED
        ch2 = f"tok-{uid()}"
        calls = []

        async def get_token(channel):
            calls.append(channel)
            return sub_token(user, channel)

        await s.subscribed(client, ch2, get_token=get_token)
        assert calls == [ch2]

    run(fmt, scenario)


@pytest.mark.parametrize("kind", ["bad-signature", "garbage"])
def test_invalid_sub_token_103(fmt, kind):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"tok-{uid()}"
        if kind == "garbage":
            token = "garbage.token.value"
        else:
            token = make_jwt({"sub": user, "channel": ch, "iat": now()}, secret="wrong-secret")
        sub = s.new_sub(client, ch, token=token)
        await sub.subscribe()
        await wait_until(lambda: sub.events.unsubscribed, 5, "unsubscribed event")
        assert sub.events.unsubscribed[0].code == 103
        await asyncio.sleep(0.3)
        assert client.state == ClientState.CONNECTED
        assert len(client.events.connected) == 1
        ch2 = f"tok-{uid()}"
        await s.subscribed(client, ch2, token=sub_token(user, ch2))

    run(fmt, scenario)


@pytest.mark.parametrize("kind", ["wrong-user", "wrong-channel"])
def test_sub_token_mismatch_3500(fmt, kind):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"tok-{uid()}"
        token = sub_token(f"other-{uid()}", ch) if kind == "wrong-user" else sub_token(user, ch + "-other")
        sub = s.new_sub(client, ch, token=token)
        await sub.subscribe()
        await wait_until(lambda: client.events.disconnected, 5, "disconnected event")
        assert client.events.disconnected[0].code == 3500
        await asyncio.sleep(0.5)
        assert client.state == ClientState.DISCONNECTED

    run(fmt, scenario)


# ============================================================== publish

def test_client_publish_roundtrip(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"pub-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        payload = {"text": 'héllo "wörld"\nline2', "n": 42, "f": 1.5,
                   "nested": {"arr": [1, None, True, "x"]}, "empty": {}}
        await sub.publish(s.encode(payload))
        await wait_until(lambda: sub.events.publications, 3, "own publication")
        pub = sub.events.publications[0].pub
        assert s.decode(pub.data) == payload
        assert pub.offset == 1
        assert pub.info is not None and pub.info.user == user
        assert pub.info.client == client.client_id
        await client.publish(ch, s.encode({"second": True}))
        await wait_until(lambda: len(sub.events.publications) == 2, 3, "second publication")
        assert sub.events.publications[1].pub.offset == 2

    run(fmt, scenario)


def test_protobuf_binary_payload(fmt):
    if fmt != "protobuf":
        pytest.skip("binary payloads only exist in the Protobuf format")

    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"bin-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        data = bytes([0, 0xFF, 0x0A, 0x0D] + [(i * 37 + 11) % 256 for i in range(296)])
        await sub.publish(data)
        await wait_until(lambda: sub.events.publications, 3, "own publication")
        assert sub.events.publications[0].pub.data == data

    run(fmt, scenario)


def test_api_publish_received_live(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"api-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        results = [await api_publish(ch, {"i": i}) for i in (1, 2, 3)]
        assert [r.offset for r in results] == [1, 2, 3]
        assert results[0].epoch and all(r.epoch == results[0].epoch for r in results)
        await wait_until(lambda: len(sub.events.publications) == 3, 3, "3 publications")
        assert offsets(sub.events.publications) == [1, 2, 3]
        assert [s.decode(p.pub.data) for p in sub.events.publications] == [{"i": 1}, {"i": 2}, {"i": 3}]
        assert sub.events.publications[0].pub.info is None

    run(fmt, scenario)


# ============================================================== presence, join/leave

def test_presence_and_stats(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        ch = f"pres-{uid()}"
        c1 = await s.connected(user)
        c2 = await s.connected(user)
        s1 = await s.subscribed(c1, ch, token=sub_token(user, ch))
        s2 = await s.subscribed(c2, ch, token=sub_token(user, ch))
        pres = await s1.presence()
        assert sorted(pres.clients) == sorted([c1.client_id, c2.client_id])
        for cid, info in pres.clients.items():
            assert info.client == cid
            assert info.user == user
        stats = await c1.presence_stats(ch)
        assert (stats.num_clients, stats.num_users) == (2, 1)

        await s2.unsubscribe()

        async def n_clients():
            return (await s1.presence_stats()).num_clients

        await wait_until(lambda: _eq(n_clients(), 1), 2.5, "presence after unsubscribe")
        assert list((await s1.presence()).clients) == [c1.client_id]

        await s2.subscribe()
        await s2.ready(timeout=5)
        await wait_until(lambda: _eq(n_clients(), 2), 2.5, "presence back to 2")
        await c2.disconnect()
        await wait_until(lambda: _eq(n_clients(), 1), 2.5, "presence after disconnect")
        assert list((await s1.presence()).clients) == [c1.client_id]

    run(fmt, scenario)


async def _eq(awaitable, value):
    return (await awaitable) == value


def test_join_leave(fmt):
    async def scenario(s):
        user_a, user_b = f"a-{uid()}", f"b-{uid()}"
        ch = f"jl-{uid()}"
        a = await s.connected(user_a)
        b = await s.connected(user_b)
        sa = await s.subscribed(a, ch, token=sub_token(user_a, ch))
        await wait_until(lambda: any(j.info.client == a.client_id for j in sa.events.joins), 3, "own join")
        sb = await s.subscribed(b, ch, token=sub_token(user_b, ch))
        await wait_until(lambda: any(j.info.client == b.client_id for j in sa.events.joins), 3, "B's join at A")
        join_b = next(j for j in sa.events.joins if j.info.client == b.client_id)
        assert join_b.info.user == user_b
        await sb.unsubscribe()
        await wait_until(lambda: any(lv.info.client == b.client_id for lv in sa.events.leaves), 3, "B's leave")
        leave_b = next(lv for lv in sa.events.leaves if lv.info.client == b.client_id)
        assert leave_b.info.user == user_b
        await sb.subscribe()
        await sb.ready(timeout=5)
        await wait_until(lambda: len([j for j in sa.events.joins if j.info.client == b.client_id]) == 2, 3, "second join")
        await b.disconnect()
        await wait_until(lambda: len([lv for lv in sa.events.leaves if lv.info.client == b.client_id]) == 2, 3,
                         "leave on disconnect")

    run(fmt, scenario)


# ============================================================== history

def test_history_limit_since_reverse(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"hist-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        epoch = ""
        for i in range(1, 6):
            r = await api_publish(ch, {"i": i})
            assert r.offset == i
            epoch = r.epoch
        pos = await sub.history()
        assert pos.publications == [] and pos.offset == 5 and pos.epoch == epoch
        h1 = await sub.history(limit=2)
        assert [p.offset for p in h1.publications] == [1, 2]
        assert [s.decode(p.data) for p in h1.publications] == [{"i": 1}, {"i": 2}]
        assert (h1.offset, h1.epoch) == (5, epoch)
        h2 = await sub.history(limit=10, since=StreamPosition(offset=2, epoch=epoch))
        assert [p.offset for p in h2.publications] == [3, 4, 5]
        assert (h2.offset, h2.epoch) == (5, epoch)
        h3 = await sub.history(limit=2, reverse=True)
        assert [p.offset for p in h3.publications] == [5, 4]
        h4 = await sub.history(limit=-1)
        assert [p.offset for p in h4.publications] == [1, 2, 3, 4, 5]
        h5 = await client.history(ch, limit=3)
        assert [p.offset for p in h5.publications] == [1, 2, 3]

    run(fmt, scenario)


# ============================================================== recovery

def test_recovery_after_reconnect(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"rec-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        first = sub.events.subscribed[0]
        assert first.recoverable is True
        assert first.was_recovering is False and first.recovered is False
        # A channel never published to has no stream: the empty position (recovery with the
        # empty epoch is matched by offset).
        assert first.stream_position is not None and not first.stream_position.epoch
        assert first.stream_position.offset == 0
        await api_publish(ch, {"n": 1})
        await wait_until(lambda: len(sub.events.publications) == 1, 3, "live publication 1")
        await client.disconnect()
        for n in (2, 3, 4):
            await api_publish(ch, {"n": n})
        await client.connect()
        await wait_until(lambda: len(sub.events.subscribed) == 2, 5, "resubscribed")
        again = sub.events.subscribed[1]
        assert again.was_recovering is True
        assert again.recovered is True
        await wait_until(lambda: len(sub.events.publications) == 4, 3, "recovered publications")
        assert offsets(sub.events.publications) == [1, 2, 3, 4]
        assert [s.decode(p.pub.data) for p in sub.events.publications] == [{"n": n} for n in (1, 2, 3, 4)]
        await api_publish(ch, {"n": 5})
        await wait_until(lambda: len(sub.events.publications) == 5, 3, "live after recovery")
        await asyncio.sleep(0.3)
        assert offsets(sub.events.publications) == [1, 2, 3, 4, 5], "no duplicates"

    run(fmt, scenario)


def test_recovery_after_transport_drop(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = s.client(token=conn_token(user), min_reconnect_delay=1.0, max_reconnect_delay=1.5)
        await client.connect()
        await client.ready(timeout=5)
        ch = f"drop-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        await api_publish(ch, {"n": 1})
        await wait_until(lambda: len(sub.events.publications) == 1, 3, "live publication 1")
        transport = getattr(getattr(client, "_conn", None), "transport", None)
        if transport is None:
            pytest.skip("cannot reach the socket inside this centrifuge-python version")
        old_id = client.client_id
        transport.abort()  # no close frame: an abrupt network loss
        await wait_until(lambda: client.state != ClientState.CONNECTED, 3, "client notices the drop")
        await api_publish(ch, {"n": 2})
        await api_publish(ch, {"n": 3})
        await wait_until(lambda: len(sub.events.subscribed) == 2, 8, "resubscribed after reconnect")
        assert client.client_id != old_id
        assert sub.events.subscribed[1].was_recovering is True
        assert sub.events.subscribed[1].recovered is True
        await api_publish(ch, {"n": 4})
        await wait_until(lambda: len(sub.events.publications) == 4, 3, "all publications")
        await asyncio.sleep(0.3)
        assert offsets(sub.events.publications) == [1, 2, 3, 4]
        pres = await sub.presence()
        assert list(pres.clients) == [client.client_id], "the dropped connection left no presence"

    run(fmt, scenario)


def test_recovery_small_history_not_recovered(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"smallhistory:rec-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        await api_publish(ch, {"n": 1})
        await wait_until(lambda: len(sub.events.publications) == 1, 3, "live publication 1")
        await client.disconnect()
        for n in (2, 3, 4, 5):
            await api_publish(ch, {"n": n})
        await client.connect()
        await wait_until(lambda: len(sub.events.subscribed) == 2, 5, "resubscribed")
        again = sub.events.subscribed[1]
        assert again.was_recovering is True
        assert again.recovered is False
        assert again.stream_position.offset == 5
        await asyncio.sleep(0.3)
        assert len(sub.events.publications) == 1, "no partial recovery"
        await api_publish(ch, {"n": 6})
        await wait_until(lambda: len(sub.events.publications) == 2, 3, "live after failed recovery")
        assert sub.events.publications[1].pub.offset == 6

    run(fmt, scenario)


# ============================================================== personal channel

def test_personal_channel_42(fmt):
    async def scenario(s):
        client = await s.connected("42")
        ev = client.events
        await wait_until(lambda: any(c.channel == "#42" for c in ev.subscribed), 3, "server-side #42 subscribed")
        ctx = next(c for c in ev.subscribed if c.channel == "#42")
        assert ctx.recoverable is True
        await wait_until(lambda: any(j.channel == "#42" and j.info.client == client.client_id for j in ev.joins),
                         3, "own join on #42")
        marker = uid()
        await api_publish("#42", {"marker": marker})

        def got(m):
            for p in ev.publications:
                if p.channel != "#42":
                    continue
                try:
                    if s.decode(p.pub.data).get("marker") == m:
                        return p
                except Exception:  # noqa: BLE001 - foreign payloads
                    pass
            return None

        await wait_until(lambda: got(marker), 3, "API publication on #42")
        marker2 = uid()
        await client.publish("#42", s.encode({"marker": marker2}))
        await wait_until(lambda: got(marker2), 3, "client publication on #42")
        assert got(marker2).pub.info.user == "42"

    run(fmt, scenario)


def test_personal_channel_recovery_via_connect_subs(fmt):
    async def scenario(s):
        user = f"p{uid()}"
        personal = f"#{user}"
        client = await s.connected(user)
        ev = client.events
        await wait_until(lambda: any(c.channel == personal for c in ev.subscribed), 3, "server-side subscribed")
        await api_publish(personal, {"n": 1})

        def pubs():
            return [p for p in ev.publications if p.channel == personal]

        await wait_until(lambda: len(pubs()) == 1, 3, "live publication")
        await client.disconnect()
        await api_publish(personal, {"n": 2})
        await api_publish(personal, {"n": 3})
        await client.connect()
        await wait_until(lambda: len([c for c in ev.subscribed if c.channel == personal]) == 2, 5, "resubscribed")
        again = [c for c in ev.subscribed if c.channel == personal][1]
        assert again.was_recovering is True
        assert again.recovered is True
        await wait_until(lambda: len(pubs()) == 3, 3, "recovered publications")
        assert [p.pub.offset for p in pubs()] == [1, 2, 3]

    run(fmt, scenario)


def _document(version):
    """A 2 KB JSON document whose `version` field changes: deltas are much smaller."""
    items = [{"id": i, "name": f"item number {i}", "price": i * 7} for i in range(40)]
    return {"version": version, "title": "inventory", "items": items}


def test_fossil_delta(fmt):
    """The SDK negotiates fossil deltas (namespace `delta` of herald-sdk.toml) and rebuilds every
    document from them, live and after a recovery, which comes delta-chained."""
    async def scenario(s):
        user = f"u-{uid()}"
        client = s.client(token=conn_token(user), min_reconnect_delay=1.0, max_reconnect_delay=1.5)
        await client.connect()
        await client.ready(timeout=5)
        ch = f"delta:doc-{uid()}"
        sub = await s.subscribed(client, ch, delta=DeltaType.FOSSIL)
        assert sub._delta_negotiated is True, "the server confirmed delta"
        for version in range(1, 5):
            await api_publish(ch, _document(version))
        await wait_until(lambda: len(sub.events.publications) == 4, 5, "4 publications")
        assert [s.decode(p.pub.data) for p in sub.events.publications] == [_document(v) for v in range(1, 5)]
        transport = getattr(getattr(client, "_conn", None), "transport", None)
        if transport is None:
            pytest.skip("cannot reach the socket inside this centrifuge-python version")
        transport.abort()
        await wait_until(lambda: client.state != ClientState.CONNECTED, 3, "client notices the drop")
        for version in range(5, 8):
            await api_publish(ch, _document(version))
        await wait_until(lambda: len(sub.events.subscribed) == 2, 8, "resubscribed after reconnect")
        assert sub.events.subscribed[1].recovered is True
        await api_publish(ch, _document(8))
        await wait_until(lambda: len(sub.events.publications) == 8, 5, "8 publications")
        assert [s.decode(p.pub.data) for p in sub.events.publications] == [_document(v) for v in range(1, 9)]

    run(fmt, scenario)
