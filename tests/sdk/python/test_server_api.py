"""Herald's HTTP server API through the `cent` client (JSON), observed with centrifuge-python."""

import json

import pytest
import requests
from cent import (
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from centrifuge import ClientState, SubscriptionState

from helpers import API_KEY, API_URL, api, api_client, run, sub_token, uid, wait_until

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
