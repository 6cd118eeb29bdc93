"""Herald's HTTP server API through the `cent` client (JSON), observed with centrifuge-python."""

import base64
import json
from typing import Any

import pytest
import requests
from cent import (
    BatchRequest,
    BoolValue,
    BroadcastRequest,
    BroadcastResult,
    CentApiResponseError,
    CentTransportError,
    CentUnauthorizedError,
    ChannelOptionsOverride,
    ChannelsRequest,
    ChannelsResult,
    ConnectionsRequest,
    Disconnect,
    DisconnectRequest,
    DisconnectResult,
    HistoryRemoveRequest,
    HistoryRemoveResult,
    HistoryRequest,
    HistoryResult,
    InfoRequest,
    InfoResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    RefreshRequest,
    RefreshResult,
    StreamPosition,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
)
from cent.dto import CentRequest, CentResult
from centrifuge import ClientState, SubscriptionState

from helpers import API_KEY, API_URL, api, api_client, now, run, sub_token, uid, wait_until

FMT = "json"


def test_publish_returns_offset_and_epoch():
    cent = api_client()
    ch = f"api-pub-{uid()}"
    r1 = cent.publish(PublishRequest(channel=ch, data={"n": 1}))
    r2 = cent.publish(PublishRequest(channel=ch, data={"n": 2}))
    assert (r1.offset, r2.offset) == (1, 2)
    assert r1.epoch and r1.epoch == r2.epoch


def test_publish_unknown_namespace_is_error_102():
    cent = api_client()
    with pytest.raises(CentApiResponseError) as exc:
        cent.publish(PublishRequest(channel=f"nosuchnamespace:{uid()}", data={}))
    assert exc.value.code == 102


def test_wrong_api_key_is_401():
    body = json.dumps({"channel": f"api-{uid()}", "data": {}})
    with requests.Session() as http:
        http.trust_env = False
        for headers in ({"X-API-Key": "wrong-key"}, {}):
            resp = http.post(f"{API_URL}/publish", data=body, timeout=5,
                             headers={"Content-Type": "application/json", **headers})
            assert resp.status_code == 401, f"headers {headers}: HTTP {resp.status_code} {resp.text}"
        # The right key, also in the Authorization: apikey form.
        resp = http.post(f"{API_URL}/publish", data=body, timeout=5,
                         headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
        assert resp.status_code == 200, resp.text
        assert "result" in resp.json()
        resp = http.post(f"{API_URL}/publish", data=body, timeout=5,
                         headers={"Content-Type": "application/json", "Authorization": f"apikey {API_KEY}"})
        assert resp.status_code == 200, resp.text
    with pytest.raises(CentUnauthorizedError):
        api_client(key="wrong-key").info(InfoRequest())


def test_history_and_history_remove():
    cent = api_client()
    ch = f"api-hist-{uid()}"
    epoch = ""
    for i in range(1, 6):
        epoch = cent.publish(PublishRequest(channel=ch, data={"i": i})).epoch
    pos = cent.history(HistoryRequest(channel=ch))
    assert pos.publications == [] and (pos.offset, pos.epoch) == (5, epoch)
    h1 = cent.history(HistoryRequest(channel=ch, limit=2))
    assert [p.offset for p in h1.publications] == [1, 2]
    assert [p.data for p in h1.publications] == [{"i": 1}, {"i": 2}]
    assert (h1.offset, h1.epoch) == (5, epoch)
    h2 = cent.history(HistoryRequest(channel=ch, limit=10, since=StreamPosition(offset=2, epoch=epoch)))
    assert [p.offset for p in h2.publications] == [3, 4, 5]
    h3 = cent.history(HistoryRequest(channel=ch, limit=2, reverse=True))
    assert [p.offset for p in h3.publications] == [5, 4]
    h4 = cent.history(HistoryRequest(channel=ch, limit=-1))
    assert [p.offset for p in h4.publications] == [1, 2, 3, 4, 5]

    cent.history_remove(HistoryRemoveRequest(channel=ch))
    after = cent.history(HistoryRequest(channel=ch, limit=-1))
    assert after.publications == []
    assert after.epoch and after.epoch != epoch, "history_remove starts a new stream epoch"
    r = cent.publish(PublishRequest(channel=ch, data={"i": "new"}))
    assert r.epoch == after.epoch
    h5 = cent.history(HistoryRequest(channel=ch, limit=-1))
    assert [p.data for p in h5.publications] == [{"i": "new"}]
    assert h5.epoch == after.epoch


def test_broadcast():
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        chans = [f"bc-{uid()}" for _ in range(3)]
        subs = [await s.subscribed(client, ch, token=sub_token(user, ch)) for ch in chans[:2]]
        res = await api("broadcast", BroadcastRequest(channels=chans, data={"hello": "all"}))
        assert len(res.responses) == 3
        for resp in res.responses:
            assert resp.error is None
            assert resp.result.offset == 1 and resp.result.epoch
        for sub in subs:
            await wait_until(lambda sub=sub: sub.events.publications, 3, "broadcast publication")
            assert sub.events.publications[0].pub.data == {"hello": "all"}

    run(FMT, scenario)


def test_presence_presence_stats_and_channels():
    async def scenario(s):
        user1, user2 = f"u-{uid()}", f"u-{uid()}"
        marker = uid()
        ch = f"chan-{marker}-a"
        empty = f"chan-{marker}-empty"
        c1 = await s.connected(user1)
        c2 = await s.connected(user1)
        c3 = await s.connected(user2)
        for c, u in ((c1, user1), (c2, user1), (c3, user2)):
            await s.subscribed(c, ch, token=sub_token(u, ch))
        pres = await api("presence", PresenceRequest(channel=ch))
        assert sorted(pres.presence) == sorted([c1.client_id, c2.client_id, c3.client_id])
        assert pres.presence[c3.client_id].user == user2
        assert pres.presence[c1.client_id].client == c1.client_id
        stats = await api("presence_stats", PresenceStatsRequest(channel=ch))
        assert (stats.num_clients, stats.num_users) == (3, 2)
        pres0 = await api("presence", PresenceRequest(channel=empty))
        assert pres0.presence == {}
        stats0 = await api("presence_stats", PresenceStatsRequest(channel=empty))
        assert (stats0.num_clients, stats0.num_users) == (0, 0)

        chans = await api("channels", ChannelsRequest(pattern=f"chan-{marker}*"))
        assert list(chans.channels) == [ch]
        assert chans.channels[ch].num_clients == 3
        all_chans = await api("channels", ChannelsRequest())
        assert ch in all_chans.channels

        await c3.disconnect()
        await wait_until(lambda: _stats_is(ch, 2, 1), 2.5, "presence_stats after disconnect")

    run(FMT, scenario)


async def _stats_is(ch, clients, users):
    st = await api("presence_stats", PresenceStatsRequest(channel=ch))
    return (st.num_clients, st.num_users) == (clients, users)


def test_info():
    async def scenario(s):
        await s.connected(f"u-{uid()}")
        info = await api("info", InfoRequest())
        assert len(info.nodes) >= 1
        node = info.nodes[0]
        assert node.uid and node.name
        assert sum(n.num_clients for n in info.nodes) >= 1
        assert sum(n.num_users for n in info.nodes) >= 1

    run(FMT, scenario)


def test_disconnect_user_via_api():
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        other = await s.connected(f"u-{uid()}")
        await api("disconnect", DisconnectRequest(user=user))
        await wait_until(lambda: client.events.disconnected, 3, "disconnected event")
        assert client.events.disconnected[0].code == 3503, "force disconnect"
        assert client.state == ClientState.DISCONNECTED
        assert other.state == ClientState.CONNECTED, "other users stay connected"

    run(FMT, scenario)


def test_disconnect_user_via_api_custom_code():
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        await api("disconnect", DisconnectRequest(user=user, disconnect=Disconnect(code=4501, reason="go away")))
        await wait_until(lambda: client.events.disconnected, 3, "disconnected event")
        assert (client.events.disconnected[0].code, client.events.disconnected[0].reason) == (4501, "go away")
        assert client.state == ClientState.DISCONNECTED

    run(FMT, scenario)


def test_unsubscribe_user_via_api():
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"unsub-{uid()}"
        keep = f"keep-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        sub_keep = await s.subscribed(client, keep, token=sub_token(user, keep))
        await api("unsubscribe", UnsubscribeRequest(user=user, channel=ch))
        await wait_until(lambda: sub.events.unsubscribed, 3, "unsubscribed event")
        assert sub.events.unsubscribed[0].code == 2000, "server unsubscribe"
        assert sub.state == SubscriptionState.UNSUBSCRIBED
        assert sub_keep.state == SubscriptionState.SUBSCRIBED
        assert client.state == ClientState.CONNECTED
        pres = await api("presence", PresenceRequest(channel=ch))
        assert pres.presence == {}

    run(FMT, scenario)


def test_subscribe_user_via_api():
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"srvsub-{uid()}"
        await api("subscribe", SubscribeRequest(user=user, channel=ch))
        ev = client.events
        await wait_until(lambda: any(c.channel == ch for c in ev.subscribed), 3, "server-side subscribed event")
        await api("publish", PublishRequest(channel=ch, data={"via": "server-side subscription"}))
        await wait_until(lambda: any(p.channel == ch for p in ev.publications), 3, "publication")
        pub = next(p for p in ev.publications if p.channel == ch)
        assert pub.pub.data == {"via": "server-side subscription"}

    run(FMT, scenario)


# ------------------------------------------------------------------ every method's fields


class RpcResult(CentResult):
    """`cent` 5.2.0 has no `rpc` request; this one is built on its own base classes."""

    data: Any = None


class RpcRequest(CentRequest[RpcResult]):
    __returning__ = RpcResult
    __api_method__ = "rpc"

    method: str
    params: Any = None


def test_rpc_is_not_available_without_a_proxy():
    cent = api_client()
    # `Client` has no rpc method in 5.2.0; `_send` is what each of its methods calls.
    with pytest.raises(CentApiResponseError) as exc:
        cent._send(RpcRequest(method="getUser", params={"id": 1}))
    assert (exc.value.code, exc.value.message) == (108, "not available")
    with pytest.raises(CentApiResponseError) as exc:
        cent._send(RpcRequest(method=""))
    assert exc.value.code == 107


def test_a_method_herald_does_not_have_is_404():
    # `connections` is a Centrifugo PRO method: the open-source server has no route for it either.
    with pytest.raises(CentTransportError) as exc:
        api_client().connections(ConnectionsRequest(user="u", expression=""))
    assert exc.value.status_code == 404


def test_publish_with_every_field():
    cent = api_client()
    ch = f"api-fields-{uid()}"
    key = uid()
    # `delta`, `version` and `version_epoch` are not fields of cent 5.2.0's PublishRequest; its
    # models keep extra fields and send them.
    request = PublishRequest(channel=ch, data={"n": 1}, skip_history=False, tags={"k": "v"},
                             idempotency_key=key, delta=True, version=1, version_epoch="v1")
    assert "version_epoch" in request.api_payload
    first = cent.publish(request)
    again = cent.publish(request)
    assert (again.offset, again.epoch) == (first.offset, first.epoch) == (1, first.epoch)
    b64 = cent.publish(PublishRequest(channel=ch, data=None, b64data=base64.b64encode(b'{"n":2}').decode()))
    assert b64.offset == 2
    skipped = cent.publish(PublishRequest(channel=ch, data={"n": 3}, skip_history=True))
    assert (skipped.offset, skipped.epoch) == (0, "")
    h = cent.history(HistoryRequest(channel=ch, limit=-1))
    assert [(p.offset, p.data, p.tags) for p in h.publications] == [(1, {"n": 1}, {"k": "v"}), (2, {"n": 2}, None)]
    bc = cent.broadcast(BroadcastRequest(channels=[ch, ""], data={"n": 4}, tags={"b": "1"}, delta=False,
                                         version=2, version_epoch="v1"))
    assert bc.responses[0].error is None and bc.responses[0].result.offset == 3
    assert bc.responses[1].result is None and bc.responses[1].error.code == 107


def test_subscribe_with_every_field_and_refresh():
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"srv-fields-{uid()}"
        request = SubscribeRequest(
            user=user, channel=ch, client=client.client_id, info={"role": "reader"}, data={"hello": 1},
            recover_since=StreamPosition(offset=0, epoch=""), expire_at=0,
            override=ChannelOptionsOverride(presence=BoolValue(value=True), join_leave=BoolValue(value=False)),
        )
        assert isinstance(await api("subscribe", request), SubscribeResult)
        ev = client.events
        await wait_until(lambda: any(c.channel == ch for c in ev.subscribed), 3, "server-side subscribed event")
        # A `session` names no Herald connection: nothing happens to this one.
        await api("unsubscribe", UnsubscribeRequest(user=user, channel=ch, session="no-such-session"))
        await api("refresh", RefreshRequest(user=user, client=client.client_id, expire_at=now() + 3600))
        await api("publish", PublishRequest(channel=ch, data={"still": "subscribed"}))
        await wait_until(lambda: any(p.channel == ch for p in ev.publications), 3, "publication")
        assert client.state == ClientState.CONNECTED
        # Expired now: closed with 3005, from which the SDK reconnects.
        await api("refresh", RefreshRequest(user=user, expired=True))
        await wait_until(lambda: any(c.code == 3005 for c in ev.connecting), 3, "reconnect after 3005")

    run(FMT, scenario)


def test_disconnect_whitelist_and_client():
    async def scenario(s):
        user = f"u-{uid()}"
        keep = await s.connected(user)
        drop = await s.connected(user)
        await api("disconnect", DisconnectRequest(user=user, whitelist=[keep.client_id],
                                                  disconnect=Disconnect(code=4502, reason="not you")))
        await wait_until(lambda: drop.events.disconnected, 3, "disconnected event")
        assert (drop.events.disconnected[0].code, drop.events.disconnected[0].reason) == (4502, "not you")
        assert keep.state == ClientState.CONNECTED
        await api("disconnect", DisconnectRequest(user=user, client=keep.client_id))
        await wait_until(lambda: keep.events.disconnected, 3, "disconnected event")
        assert keep.events.disconnected[0].code == 3503

    run(FMT, scenario)


@pytest.mark.parametrize("parallel", [False, True])
def test_batch_of_every_command_type(parallel):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"batch-{uid()}"
        other = f"batch-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch))
        result = await api("batch", BatchRequest(parallel=parallel, requests=[
            PublishRequest(channel=ch, data={"n": 1}),
            BroadcastRequest(channels=[ch, other], data={"n": 2}),
            PresenceStatsRequest(channel=ch),
            PresenceRequest(channel=ch),
            HistoryRequest(channel=ch, limit=10),
            ChannelsRequest(pattern=ch),
            InfoRequest(),
            HistoryRemoveRequest(channel=other),
            RefreshRequest(user=user, expire_at=now() + 3600),
            SubscribeRequest(user=user, channel=other),
            UnsubscribeRequest(user=user, channel=f"nobody-{uid()}"),
            DisconnectRequest(user=f"nobody-{uid()}"),
        ]))
        replies = result.replies
        kinds = [PublishResult, BroadcastResult, PresenceStatsResult, PresenceResult, HistoryResult,
                 ChannelsResult, InfoResult, HistoryRemoveResult, RefreshResult, SubscribeResult,
                 UnsubscribeResult, DisconnectResult]
        assert [type(r) for r in replies] == kinds
        publish, broadcast = replies[0], replies[1]
        assert broadcast.responses[0].result.epoch == publish.epoch
        assert sorted([publish.offset, broadcast.responses[0].result.offset]) == [1, 2]
        assert broadcast.responses[1].result.offset == 1
        assert (replies[2].num_clients, replies[2].num_users) == (1, 1)
        assert list(replies[3].presence) == [client.client_id]
        assert list(replies[5].channels) == [ch] and replies[5].channels[ch].num_clients == 1
        assert len(replies[6].nodes) >= 1
        if not parallel:
            assert (publish.offset, broadcast.responses[0].result.offset) == (1, 2)
            assert [p.data for p in replies[4].publications] == [{"n": 1}, {"n": 2}]
        await wait_until(lambda: len(sub.events.publications) == 2, 3, "both publications")
        assert sorted(p.pub.offset for p in sub.events.publications) == [1, 2]
        await wait_until(lambda: any(c.channel == other for c in client.events.subscribed), 3,
                         "server-side subscription from the batch")

    run(FMT, scenario)
