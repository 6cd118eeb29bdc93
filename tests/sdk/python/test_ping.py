"""Server pings (ping_interval 25 s in herald-sdk.toml) and client pongs, both formats at once.

Each client stays idle for 40 s. With max_server_ping_delay 2 s the SDK reconnects if no ping
arrives within 27 s, and the server closes with 3012 if it does not accept the SDK's pongs
(pong_timeout 8 s).
"""

import asyncio

from centrifuge import ClientState

from helpers import FORMATS, Session, conn_token, run, uid


def test_server_pings_keep_idle_connections_alive():
    async def scenario(_unused):
        sessions = [Session(fmt) for fmt in FORMATS]
        try:
            clients = [s.client(token=conn_token(f"u-{uid()}"), max_server_ping_delay=2.0) for s in sessions]
            for c in clients:
                await c.connect()
                await c.ready(timeout=5)
            ids = [c.client_id for c in clients]
            await asyncio.sleep(40)
            for fmt, c, cid in zip(FORMATS, clients, ids):
                ev = c.events
                assert c.state == ClientState.CONNECTED, f"{fmt}: still connected"
                assert len(ev.connecting) == 1, f"{fmt}: no reconnect (no ping, or 3012): {ev.connecting}"
                assert ev.disconnected == [], f"{fmt}: never disconnected"
                assert c.client_id == cid
            for s, c in zip(sessions, clients):
                await s.subscribed(c, f"public:ping-{uid()}")
        finally:
            for s in sessions:
                await s.close()

    run("json", scenario, timeout=70)
