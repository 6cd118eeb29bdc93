"""Proxies (docs/proxies.md) driven by centrifuge-python, JSON and Protobuf.

The proxies need their own config, so this module starts its own application backend (a
threaded stdlib HTTP server on loopback that recognises users by the forwarded session Cookie,
answers per user and per channel, and records every call) and its own Herald (``HERALD_BIN``,
default target/debug/herald, relative to the repository root as in run.sh); the Herald that
run.sh started is not used. centrifuge-python's ``headers`` are real WebSocket handshake headers,
so they carry the Cookie; it has no emulated (ConnectRequest) headers, which the JS suite covers.
"""

import asyncio
import ctypes
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import requests
from centrifuge import Client, ClientState, SubscriptionState
from centrifuge.exceptions import ReplyError

from helpers import FORMATS, ClientEvents, Session, uid, wait_until

pytestmark = pytest.mark.parametrize("fmt", FORMATS)

REPO_ROOT = Path(__file__).resolve().parents[3]
HERALD_BIN = REPO_ROOT / os.environ.get("HERALD_BIN", "target/debug/herald")
SECRET = "proxy-test-secret"
TEST_TIMEOUT = 40.0
CONNECT_ERROR = 13  # centrifuge-python's error event code for a connect reply error


# ------------------------------------------------------------------ the application backend

class Backend:
    """Sessions known to the backend: session id (the ``sid`` cookie) -> {user, banned}.
    Every call is recorded as {proxy, headers (lower-case names), body}."""

    def __init__(self) -> None:
        self.sessions: Dict[str, Dict[str, Any]] = {}
        self.calls: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None  # recorded as None: a test asserting on it fails with the call in view
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy = self.path.lstrip("/")
                with backend.lock:
                    backend.calls.append({"proxy": proxy, "headers": headers, "body": body})
                reply = json.dumps(backend.answer(proxy, headers, body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def session_of(self, headers: Dict[str, str]) -> Optional[Dict[str, Any]]:
        m = re.search(r"(?:^|;\s*)sid=([^;]+)", headers.get("cookie", ""))
        return self.sessions.get(m.group(1)) if m else None

    def answer(self, proxy: str, headers: Dict[str, str], body: Any) -> Any:
        session = self.session_of(headers)
        if proxy == "connect":
            if session is None:
                return {"error": {"code": 401, "message": "no session"}}
            if session["banned"]:
                return {"disconnect": {"code": 4501, "reason": "banned"}}
            return {"result": {
                "user": session["user"],
                "data": {"greeting": f"hello {session['user']}"},
                "meta": {"sid": session["sid"]},
            }}
        # The Cookie is forwarded on every call of the connection, not only on connect.
        if session is None or session["user"] != body.get("user"):
            return {"error": {"code": 401, "message": "no session"}}
        if proxy == "subscribe":
            if ":deny-" in body["channel"]:
                return {"error": {"code": 403, "message": "forbidden"}}
            return {"result": {}}
        if proxy == "publish":
            return {"result": {"data": {**body["data"], "rewritten": True, "by": body["user"]}}}
        if proxy == "rpc":
            if body["method"] == "ns:echo":
                return {"result": {"data": {"echo": body["data"], "user": body["user"]}}}
            return {"error": {"code": 404, "message": "unknown method"}}
        return {"error": {"code": 400, "message": f"unknown proxy {proxy}"}}

    def session(self, banned: bool = False) -> Dict[str, str]:
        """A new session: its id, user and Cookie header value."""
        sid = secrets.token_hex(8)
        user = f"u-{secrets.token_hex(4)}"
        self.sessions[sid] = {"sid": sid, "user": user, "banned": banned}
        return {"sid": sid, "user": user, "cookie": f"theme=dark; sid={sid}"}

    def calls_for(self, proxy: str, sid: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [
                c for c in self.calls
                if c["proxy"] == proxy and f"sid={sid}" in c["headers"].get("cookie", "")
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------ Herald with proxies

def proxy_config(backend: str, connect_endpoint: Optional[str] = None) -> str:
    def proxy(name: str) -> str:
        return (f'enabled = true\nendpoint = "{backend}/{name}"\ntimeout = "2s"\n'
                f'http_headers = ["Cookie"]\n')

    return f"""
[client]
token_hmac_secret = "{SECRET}"

[client.proxy.connect]
enabled = true
endpoint = "{connect_endpoint or backend + '/connect'}"
timeout = "2s"
http_headers = ["Cookie"]

[channels.proxy.subscribe]
{proxy('subscribe')}
[channels.proxy.publish]
{proxy('publish')}
[rpc.proxy]
{proxy('rpc')}
[rpc.namespaces.ns]
proxy_enabled = true

[rpc.namespaces.noproxy]
proxy_enabled = false

# Subscribe and publish decided by the backend.
[channels.namespaces.sp]
subscribe_proxy_enabled = true
publish_proxy_enabled = true
"""


def _die_with_parent() -> None:
    """In the child: SIGKILL when pytest dies (killed by run.sh's timeout, say), so no server
    is left behind. Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (AttributeError, OSError):
        pass


class Herald:
    """``herald serve`` on 127.0.0.1:0 with a fresh storage dir; the address comes from the
    "herald listening on ADDR" line on stdout, as tests/common learns it."""

    def __init__(self, config: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="herald-sdk-proxy."))
        config_path = self.dir / "herald.toml"
        self.log_path = self.dir / "herald.log"
        config_path.write_text(f'{config}\n[storage]\npath = "{self.dir / "data"}"\n')
        # Herald reads HERALD_* variables as config keys; run.sh exports some that are not.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.setdefault("RUST_LOG", "info")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(HERALD_BIN), "serve", "--config", str(config_path), "--listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                preexec_fn=_die_with_parent,
            )
        addresses: "queue.Queue[str]" = queue.Queue()

        def read_stdout() -> None:  # to the end, so the child never blocks on a full pipe
            for line in self.process.stdout:
                if line.startswith("herald listening on "):
                    addresses.put(line[len("herald listening on "):].strip())

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            try:
                addr = addresses.get(timeout=0.1)
                break
            except queue.Empty:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"herald did not start:\n{log}")
        self.ws_url = f"ws://{addr}/connection/websocket"
        self.http_url = f"http://{addr}"

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's series that carry every label in ``labels``."""
        session = requests.Session()
        session.trust_env = False  # never route loopback through an environment proxy
        text = session.get(f"{self.http_url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not (line.startswith(name + "{") or line.startswith(name + " ")):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if os.environ.get("HERALD_SDK_KEEP_TMP") == "1":
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def herald(backend):
    if not os.access(HERALD_BIN, os.X_OK):
        pytest.skip(f"no herald binary at {HERALD_BIN}")
    h = Herald(proxy_config(backend.url))
    yield h
    h.stop()


# ------------------------------------------------------------------ clients

class ProxySession(Session):
    """Clients without a token on this module's Herald; the Cookie goes in the handshake."""

    def __init__(self, fmt: str, url: str) -> None:
        super().__init__(fmt)
        self.url = url

    def client(self, cookie: Optional[str] = None, **kwargs: Any) -> Client:  # type: ignore[override]
        opts: Dict[str, Any] = dict(min_reconnect_delay=0.1, max_reconnect_delay=1.0, timeout=5.0, proxy=None)
        if cookie is not None:
            opts["headers"] = {"Cookie": cookie}
        opts.update(kwargs)
        client = Client(self.url, events=ClientEvents(), use_protobuf=self.fmt == "protobuf", **opts)
        self.clients.append(client)
        return client

    async def with_cookie(self, session: Dict[str, str], **kwargs: Any) -> Client:
        client = self.client(cookie=session["cookie"], **kwargs)
        await client.connect()
        await client.ready(timeout=5.0)
        return client


def run(fmt: str, url: str, scenario) -> None:
    async def main() -> None:
        s = ProxySession(fmt, url)
        try:
            await asyncio.wait_for(scenario(s), TEST_TIMEOUT)
        finally:
            await s.close()

    asyncio.run(main())


# ------------------------------------------------------------------ scenarios

def test_cookie_authenticates_without_a_token(fmt, backend, herald):
    async def scenario(s):
        sess = backend.session()
        client = await s.with_cookie(sess, data=s.encode({"hello": "there"}))
        ctx = client.events.connected[0]
        assert s.decode(ctx.data) == {"greeting": f"hello {sess['user']}"}, "the result data reaches the client"

        calls = backend.calls_for("connect", sess["sid"])
        assert len(calls) == 1
        headers, body = calls[0]["headers"], calls[0]["body"]
        assert headers["cookie"] == sess["cookie"], "the Cookie is forwarded unchanged"
        assert headers["content-type"].startswith("application/json")
        assert body["client"] == ctx.client
        assert body["transport"] == "websocket"
        assert body["protocol"] == fmt
        assert body["encoding"] == "json"
        assert body["name"] == "python"
        assert body["data"] == {"hello": "there"}

        # The connection is the backend's user: the next proxy call says so, with the meta.
        await s.subscribed(client, f"sp:ok-{uid()}")
        call = backend.calls_for("subscribe", sess["sid"])[-1]
        assert call["body"]["user"] == sess["user"]
        assert call["body"]["meta"] == {"sid": sess["sid"]}

    run(fmt, herald.ws_url, scenario)


def test_connect_refused_with_4501_does_not_reconnect(fmt, backend, herald):
    async def scenario(s):
        sess = backend.session(banned=True)
        client = s.client(cookie=sess["cookie"])
        await client.connect()
        await wait_until(lambda: client.events.disconnected, 5, "disconnected")
        assert client.events.disconnected[0].code == 4501
        assert client.events.disconnected[0].reason == "banned"
        assert client.state == ClientState.DISCONNECTED
        # The SDK must not come back: one connect call, over two seconds of reconnect delays.
        await asyncio.sleep(2)
        assert len(backend.calls_for("connect", sess["sid"])) == 1
        assert client.events.connected == []
        assert len(client.events.disconnected) == 1
        assert client.state == ClientState.DISCONNECTED

    run(fmt, herald.ws_url, scenario)


def test_subscribe_proxy_allows_and_refuses(fmt, backend, herald):
    async def scenario(s):
        sess = backend.session()
        client = await s.with_cookie(sess)
        ok_channel = f"sp:ok-{uid()}"
        ok = await s.subscribed(client, ok_channel)
        assert len(ok.events.subscribed) == 1

        call = next(c for c in backend.calls_for("subscribe", sess["sid"]) if c["body"]["channel"] == ok_channel)
        assert call["headers"]["cookie"] == sess["cookie"]
        assert call["body"]["user"] == sess["user"]
        assert call["body"]["client"] == client.events.connected[0].client
        assert call["body"]["meta"] == {"sid": sess["sid"]}

        # A non-temporary subscribe error: the SDK reports it as unsubscribed with its code.
        denied = s.new_sub(client, f"sp:deny-{uid()}")
        await denied.subscribe()
        await wait_until(lambda: denied.events.unsubscribed, 5, "unsubscribed")
        assert denied.events.unsubscribed[0].code == 403
        assert denied.events.subscribed == []
        assert denied.state == SubscriptionState.UNSUBSCRIBED
        assert client.state == ClientState.CONNECTED, "the connection stays"
        assert ok.state == SubscriptionState.SUBSCRIBED

    run(fmt, herald.ws_url, scenario)


def test_publish_proxy_rewrites_the_publication(fmt, backend, herald):
    async def scenario(s):
        ch = f"sp:pub-{uid()}"
        reader, writer = backend.session(), backend.session()
        sub = await s.subscribed(await s.with_cookie(reader), ch)
        writer_client = await s.with_cookie(writer)

        await writer_client.publish(ch, s.encode({"text": "hi"}))
        await wait_until(lambda: sub.events.publications, 3, "the publication")
        assert s.decode(sub.events.publications[0].pub.data) == {
            "text": "hi", "rewritten": True, "by": writer["user"],
        }
        call = backend.calls_for("publish", writer["sid"])[-1]
        assert call["body"]["channel"] == ch
        assert call["body"]["user"] == writer["user"]
        assert call["body"]["data"] == {"text": "hi"}
        await asyncio.sleep(0.2)
        assert len(sub.events.publications) == 1, "published once"

    run(fmt, herald.ws_url, scenario)


def test_rpc_round_trip(fmt, backend, herald):
    async def scenario(s):
        sess = backend.session()
        client = await s.with_cookie(sess)
        reply = await client.rpc("ns:echo", s.encode({"n": 42}))
        assert s.decode(reply.data) == {"echo": {"n": 42}, "user": sess["user"]}
        call = backend.calls_for("rpc", sess["sid"])[-1]
        assert call["body"]["method"] == "ns:echo"
        assert call["body"]["meta"] == {"sid": sess["sid"]}

        for method, code in [("ns:missing", 404), ("noproxy:x", 108), ("unknown:x", 104)]:
            with pytest.raises(ReplyError) as e:
                await client.rpc(method, s.encode({}))
            assert e.value.code == code, method
        assert client.state == ClientState.CONNECTED

    run(fmt, herald.ws_url, scenario)


def test_connect_backend_down_gives_error_100_and_retries(fmt, backend, herald):
    down = Herald(proxy_config(backend.url, f"http://127.0.0.1:{closed_port()}/connect"))
    try:
        async def scenario(s):
            client = s.client(cookie=backend.session()["cookie"])
            await client.connect()

            def connect_errors():
                return [e for e in client.events.errors if e.code == CONNECT_ERROR]

            await wait_until(lambda: len(connect_errors()) >= 3, 10, "three connect errors")
            for e in connect_errors():
                assert isinstance(e.error, ReplyError) and e.error.code == 100, repr(e.error)
            assert client.state == ClientState.CONNECTING, "still trying"
            assert client.events.disconnected == [], "never gave up"
            unreachable = await asyncio.to_thread(
                down.metric, "herald_proxy_errors_total", proxy="connect", reason="unreachable"
            )
            assert unreachable >= 3, f"unreachable failures counted: {unreachable}"

        run(fmt, down.ws_url, scenario)
    finally:
        down.stop()
