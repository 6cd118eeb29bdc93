"""Shared helpers for the centrifuge-python / cent conformance suites.

Environment (exported by tests/sdk/run.sh):
    HERALD_WS_URL   ws://127.0.0.1:PORT/connection/websocket
    HERALD_API_URL  http://127.0.0.1:PORT/api
    HERALD_API_KEY  server API key (X-API-Key)
    HERALD_SECRET   HMAC secret for HS256 connection/subscription tokens

Tests are plain functions that call ``run(fmt, scenario)``: the async scenario gets a
``Session`` that creates clients and disconnects all of them at the end, under a hard
timeout. No pytest-asyncio needed.
"""

import asyncio
import inspect
import json
import os
import secrets
import time
from typing import Any, Awaitable, Callable, List, Optional

import jwt
import requests
from cent import Client as ApiClient
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    SubscriptionEventHandler,
    SubscriptionState,
)

WS_URL = os.environ.get("HERALD_WS_URL", "ws://127.0.0.1:8000/connection/websocket")
API_URL = os.environ.get("HERALD_API_URL", "http://127.0.0.1:8000/api")
API_KEY = os.environ.get("HERALD_API_KEY", "sdk-test-api-key")
SECRET = os.environ.get("HERALD_SECRET", "sdk-test-secret")

FORMATS = ["json", "protobuf"]
TEST_TIMEOUT = 40.0

__all__ = [
    "API_KEY", "API_URL", "SECRET", "WS_URL", "FORMATS", "ClientState", "SubscriptionState",
    "uid", "now", "make_jwt", "conn_token", "sub_token", "encode", "decode", "wait_until",
    "api_client", "api", "Session", "run",
]


def uid() -> str:
    return secrets.token_hex(6)


def now() -> int:
    return int(time.time())


# ------------------------------------------------------------------ tokens (HS256)

def make_jwt(claims: dict, secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def conn_token(user: str, **claims: Any) -> str:
    """Connection token for ``user``; pass ``exp=`` for an expiring one."""
    return make_jwt({"sub": user, "iat": now(), **claims})


def sub_token(user: str, channel: str, **claims: Any) -> str:
    return make_jwt({"sub": user, "channel": channel, "iat": now(), **claims})


# ------------------------------------------------------------------ payloads

def encode(fmt: str, value: Any) -> Any:
    """What the SDK publishes for ``value``: the value itself in JSON, bytes in Protobuf."""
    if fmt == "json":
        return value
    return json.dumps(value).encode()


def decode(fmt: str, data: Any) -> Any:
    """Received publication data back to a Python value."""
    if fmt == "json":
        return data
    assert isinstance(data, (bytes, bytearray)), f"protobuf data must be bytes, got {type(data)}"
    return json.loads(data)


# ------------------------------------------------------------------ waiting

async def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Polls ``cond`` (sync or async) until truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ server HTTP API (cent)

def api_client(key: str = API_KEY) -> ApiClient:
    session = requests.Session()
    session.trust_env = False  # never route loopback through an environment proxy
    return ApiClient(API_URL, key, timeout=5.0, session=session)


_API = None


async def api(method: str, request: Any) -> Any:
    """Calls ``cent.Client.<method>(request)`` off the event loop."""
    global _API
    if _API is None:
        _API = api_client()
    return await asyncio.to_thread(getattr(_API, method), request)


# ------------------------------------------------------------------ recorded events

class ClientEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.connecting: List[Any] = []
        self.connected: List[Any] = []
        self.disconnected: List[Any] = []
        self.errors: List[Any] = []
        self.subscribing: List[Any] = []
        self.subscribed: List[Any] = []
        self.unsubscribed: List[Any] = []
        self.publications: List[Any] = []
        self.joins: List[Any] = []
        self.leaves: List[Any] = []

    async def on_connecting(self, ctx):
        self.connecting.append(ctx)

    async def on_connected(self, ctx):
        self.connected.append(ctx)

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)

    async def on_subscribing(self, ctx):
        self.subscribing.append(ctx)

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx):
        self.publications.append(ctx)

    async def on_join(self, ctx):
        self.joins.append(ctx)

    async def on_leave(self, ctx):
        self.leaves.append(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.subscribing: List[Any] = []
        self.subscribed: List[Any] = []
        self.unsubscribed: List[Any] = []
        self.publications: List[Any] = []
        self.joins: List[Any] = []
        self.leaves: List[Any] = []
        self.errors: List[Any] = []

    async def on_subscribing(self, ctx):
        self.subscribing.append(ctx)

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx):
        self.publications.append(ctx)

    async def on_join(self, ctx):
        self.joins.append(ctx)

    async def on_leave(self, ctx):
        self.leaves.append(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)


# ------------------------------------------------------------------ per-test session

class Session:
    """Creates clients for one format and disconnects them all at the end."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.clients: List[Client] = []

    def encode(self, value: Any) -> Any:
        return encode(self.fmt, value)

    def decode(self, data: Any) -> Any:
        return decode(self.fmt, data)

    def client(
        self,
        token: str = "",
        get_token: Optional[Callable[[], Awaitable[str]]] = None,
        **kwargs: Any,
    ) -> Client:
        opts = dict(min_reconnect_delay=0.1, max_reconnect_delay=1.0, timeout=5.0, proxy=None)
        opts.update(kwargs)
        client = Client(
            WS_URL,
            events=ClientEvents(),
            token=token,
            get_token=get_token,
            use_protobuf=self.fmt == "protobuf",
            **opts,
        )
        self.clients.append(client)
        return client

    async def connected(self, user: str, **kwargs: Any) -> Client:
        client = self.client(token=conn_token(user), **kwargs)
        await client.connect()
        await client.ready(timeout=5.0)
        return client

    @staticmethod
    def new_sub(client: Client, channel: str, **kwargs: Any):
        return client.new_subscription(channel, events=SubEvents(), **kwargs)

    async def subscribed(self, client: Client, channel: str, **kwargs: Any):
        sub = self.new_sub(client, channel, **kwargs)
        await sub.subscribe()
        await sub.ready(timeout=5.0)
        return sub

    async def close(self) -> None:
        for client in self.clients:
            try:
                await asyncio.wait_for(client.disconnect(), 5.0)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


def run(fmt: str, scenario: Callable[[Session], Awaitable[None]], timeout: float = TEST_TIMEOUT) -> None:
    """Runs ``scenario(session)`` in a fresh event loop with a hard timeout."""

    async def main() -> None:
        session = Session(fmt)
        try:
            await asyncio.wait_for(scenario(session), timeout)
        finally:
            await session.close()

    asyncio.run(main())
