"""centrifuge-python tags filter (``tags_filter`` on a subscription), JSON and Protobuf: each
subscription gets only the publications its filter passes; the default namespace refuses a
filter (107); recovery replays only what passes and live delivery goes on without a gap."""

import asyncio

import pytest
from cent import PublishRequest
from centrifuge import Filter, SubscriptionState

from helpers import FORMATS, api, run, sub_token, uid, wait_until

pytestmark = pytest.mark.parametrize("fmt", FORMATS)


async def publish(channel, n, tags):
    return await api("publish", PublishRequest(channel=channel, data={"n": n}, tags=tags))


def numbers(s, sub):
    return [s.decode(ctx.pub.data)["n"] for ctx in sub.events.publications]


def test_each_subscription_gets_what_its_filter_passes(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        ch = f"tagged:f-{uid()}"
        eng = await s.subscribed(
            await s.connected(user), ch, token=sub_token(user, ch), tags_filter=Filter.eq("team", "eng")
        )
        pricey = await s.subscribed(
            await s.connected(user),
            ch,
            token=sub_token(user, ch),
            tags_filter=Filter.all(
                Filter.gt("price", "100"),
                Filter.negate(Filter.is_in("region", ["asia"])),
                Filter.starts_with("symbol", "BTC"),
            ),
        )
        await publish(ch, 1, {"team": "eng", "price": "100", "region": "eu", "symbol": "BTCUSD"})
        await publish(ch, 2, {"team": "ops", "price": "100.01", "region": "us", "symbol": "BTCEUR"})
        await publish(ch, 3, {"team": "eng", "price": "900", "region": "asia", "symbol": "BTCUSD"})
        await publish(ch, 4, {"price": "2000", "symbol": "ETHUSD"})
        await publish(ch, 5, {"team": "eng", "price": "101", "symbol": "BTC"})
        await wait_until(lambda: 5 in numbers(s, eng) and 5 in numbers(s, pricey), 3, "the last publication")
        await asyncio.sleep(0.2)
        assert numbers(s, eng) == [1, 3, 5]
        assert numbers(s, pricey) == [2, 5]
        assert eng.events.publications[0].pub.tags == {
            "team": "eng", "price": "100", "region": "eu", "symbol": "BTCUSD",
        }
        assert [ctx.pub.offset for ctx in eng.events.publications] == [1, 3, 5]
        assert eng.events.unsubscribed == [] and pricey.events.unsubscribed == []

    run(fmt, scenario)


def test_a_filter_is_refused_where_not_allowed(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"nofilter-{uid()}"
        sub = s.new_sub(client, ch, token=sub_token(user, ch), tags_filter=Filter.eq("team", "eng"))
        await sub.subscribe()
        await wait_until(lambda: sub.events.unsubscribed, 3, "unsubscribed")
        assert sub.events.unsubscribed[0].code == 107
        assert sub.state == SubscriptionState.UNSUBSCRIBED
        other = f"nofilter-{uid()}"
        plain = await s.subscribed(client, other, token=sub_token(user, other))
        assert plain.state == SubscriptionState.SUBSCRIBED

    run(fmt, scenario)


def test_recovery_replays_only_what_passes(fmt):
    async def scenario(s):
        user = f"u-{uid()}"
        client = await s.connected(user)
        ch = f"tagged:rec-{uid()}"
        sub = await s.subscribed(client, ch, token=sub_token(user, ch), tags_filter=Filter.eq("team", "eng"))
        assert sub.events.subscribed[0].recoverable is True
        await publish(ch, 1, {"team": "eng"})
        await publish(ch, 2, {"team": "ops"})
        await wait_until(lambda: len(sub.events.publications) == 1, 3, "live publication 1")
        await client.disconnect()
        await publish(ch, 3, {"team": "ops"})
        await publish(ch, 4, {"team": "eng"})
        await publish(ch, 5, {"team": "ops"})
        await client.connect()
        await wait_until(lambda: len(sub.events.subscribed) == 2, 5, "resubscribed")
        again = sub.events.subscribed[1]
        assert again.was_recovering is True
        assert again.recovered is True
        await wait_until(lambda: len(sub.events.publications) == 2, 3, "the recovered publication")
        await publish(ch, 6, {"team": "ops"})
        await publish(ch, 7, {"team": "eng"})
        await wait_until(lambda: len(sub.events.publications) == 3, 3, "live after recovery")
        await asyncio.sleep(0.3)
        assert [ctx.pub.offset for ctx in sub.events.publications] == [1, 4, 7]
        assert numbers(s, sub) == [1, 4, 7]
        assert sub.events.unsubscribed == [], "no gap ended the subscription"
        assert sub.state == SubscriptionState.SUBSCRIBED

    run(fmt, scenario)
