// Connection lifecycle, connection tokens, refresh and RPC — centrifuge-js, JSON and Protobuf, over
// WebSocket and the HTTP-streaming and SSE fallbacks.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS, TEST_TIMEOUT, WS_URL, ENDPOINTS, uid, nowSec, sleep, jwt, connToken, newClient, connectedClient, waitUntil,
} from './helpers.mjs';

for (const fmt of FORMATS) {
  describe(`js ${fmt.name}: connection`, () => {
    test('connect/disconnect loop (5x): non-empty, fresh client id each time', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = newClient(t, fmt, {
        token: connToken(user),
        name: 'herald-sdk-tests',
        version: '1.2.3',
        data: fmt.encode({ hello: 'connect data' }),
      });
      const ids = [];
      for (let i = 0; i < 5; i++) {
        const nConnected = client.log.connected.length;
        const nDisconnected = client.log.disconnected.length;
        client.connect();
        await client.ready(5000);
        await waitUntil(() => client.log.connected.length === nConnected + 1, 2000, 'connected event');
        const ctx = client.log.connected.at(-1);
        assert.equal(typeof ctx.client, 'string');
        assert.ok(ctx.client.length > 0, 'connect result must carry a client id');
        assert.equal(ctx.transport, fmt.transport);
        ids.push(ctx.client);
        client.disconnect();
        assert.equal(client.state, 'disconnected');
        await waitUntil(() => client.log.disconnected.length === nDisconnected + 1, 2000, 'disconnected event');
        assert.equal(client.log.disconnected.at(-1).code, 0, 'disconnect() gives code 0 (disconnect called)');
      }
      assert.equal(new Set(ids).size, 5, `each connection gets its own client id: ${ids}`);
      assert.deepEqual(client.log.error.filter((e) => e.type !== 'transport'), [], 'no errors');
    });

    test('several clients connect at once; closing some leaves the others working', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const clients = [0, 1, 2].map(() => newClient(t, fmt, { token: connToken(user) }));
      clients.forEach((c) => c.connect());
      await Promise.all(clients.map((c) => c.ready(5000)));
      clients[0].disconnect();
      clients[1].disconnect();
      // The remaining one still answers commands.
      const ch = `public:multi-${uid()}`;
      const sub = clients[2].newSubscription(ch);
      sub.on('error', () => {});
      sub.subscribe();
      await sub.ready(5000);
      const stats = await sub.presenceStats();
      assert.equal(stats.numClients, 1);
      assert.equal(stats.numUsers, 1);
    });

    test('garbage connection token → disconnected 3500, no reconnect', { timeout: TEST_TIMEOUT }, async (t) => {
      const client = newClient(t, fmt, { token: 'this-is-not-a-jwt' });
      client.connect();
      await waitUntil(() => client.log.disconnected.length > 0, 5000, 'disconnected event');
      assert.equal(client.log.disconnected[0].code, 3500);
      assert.equal(client.state, 'disconnected');
      await sleep(1500);
      assert.equal(client.state, 'disconnected', 'terminal code: the SDK must not reconnect');
      assert.equal(client.log.connected.length, 0);
      assert.equal(client.log.connecting.length, 1, 'only the initial connecting event');
    });

    test('connection token with a bad signature → disconnected 3500, no reconnect', { timeout: TEST_TIMEOUT }, async (t) => {
      const token = jwt({ sub: `u-${uid()}`, iat: nowSec() }, 'not-the-server-secret');
      const client = newClient(t, fmt, { token });
      client.connect();
      await waitUntil(() => client.log.disconnected.length > 0, 5000, 'disconnected event');
      assert.equal(client.log.disconnected[0].code, 3500);
      await sleep(1000);
      assert.equal(client.state, 'disconnected');
      assert.equal(client.log.connected.length, 0);
    });

    test('expired connection token → error 109, SDK calls getToken and connects', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      let getTokenCalls = 0;
      const client = newClient(t, fmt, {
        token: connToken(user, { iat: nowSec() - 120, exp: nowSec() - 60 }),
        getToken: async () => {
          getTokenCalls++;
          return connToken(user, { exp: nowSec() + 3600 });
        },
      });
      client.connect();
      await waitUntil(() => client.state === 'connected', 10000, 'connected state after token refresh');
      assert.ok(getTokenCalls >= 1, 'getToken must have been called');
      const connectErrors = client.log.error.filter((e) => e.type === 'connect');
      assert.ok(connectErrors.length >= 1, `connect error event expected, got ${JSON.stringify(client.log.error)}`);
      assert.equal(connectErrors[0].error.code, 109, 'expired token → error 109 (token expired)');
      assert.equal(client.log.disconnected.length, 0, 'never disconnected (109 is not terminal)');
    });

    test('short-lived token is refreshed via getToken before/at expiry, connection stays up', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const exp = nowSec() + 3;
      const refreshedAt = [];
      const client = newClient(t, fmt, {
        token: connToken(user, { exp }),
        getToken: async () => {
          refreshedAt.push(Date.now() / 1000);
          return connToken(user, { exp: nowSec() + 3600 });
        },
      });
      client.connect();
      await client.ready(5000);
      const clientId = client.log.connected[0].client;
      // Wait well past the original expiry.
      await waitUntil(() => refreshedAt.length > 0, 8000, 'getToken call for refresh');
      assert.ok(refreshedAt[0] <= exp + 1.5,
        `refresh must be driven by the connect result expires/ttl (called at ${refreshedAt[0]}, exp ${exp})`);
      while (nowSec() < exp + 4) await sleep(200);
      assert.equal(client.state, 'connected');
      assert.equal(client.log.connected.length, 1, 'no reconnect happened');
      assert.equal(client.log.connecting.length, 1, 'only the initial connecting event');
      assert.equal(client.log.disconnected.length, 0);
      assert.equal(client.log.connected[0].client, clientId);
      assert.deepEqual(client.log.error, [], 'no refresh errors');
      // Still usable after the original expiry.
      const ch = `public:refresh-${uid()}`;
      const sub = client.newSubscription(ch);
      sub.on('error', () => {});
      sub.subscribe();
      await sub.ready(5000);
    });

    test('rpc → error 108 (not available), also when issued while connecting', { timeout: TEST_TIMEOUT }, async (t) => {
      const client = newClient(t, fmt, { token: connToken(`u-${uid()}`) });
      client.connect();
      // Issued before the connect reply: the SDK sends it once connected.
      const early = client.rpc('some.method', fmt.encode({ a: 1 }));
      await assert.rejects(early, (err) => {
        assert.equal(err.code, 108, `unexpected error ${JSON.stringify(err)}`);
        return true;
      });
      await client.ready(5000);
      await assert.rejects(client.rpc('other', fmt.encode({})), (err) => err.code === 108);
      assert.equal(client.state, 'connected', 'an rpc error does not close the connection');
    });

  });
}

// Where WebSocket is blocked the SDK falls back along its transport list; Herald serves each
// fallback (the whole suite above also runs over them, HERALD_SDK_TRANSPORTS).
test('js json: blocked transports fall back to http_stream, then to sse', { timeout: TEST_TIMEOUT }, async (t) => {
  const blockedWs = WS_URL.replace(/\/connection\/websocket$/, '/blocked/websocket');
  const blockedStream = `${ENDPOINTS.http_stream.replace(/\/connection\/http_stream$/, '')}/blocked/http_stream`;
  const cases = [
    { transports: [{ transport: 'websocket', endpoint: blockedWs }, { transport: 'http_stream', endpoint: ENDPOINTS.http_stream }], expect: 'http_stream' },
    {
      transports: [
        { transport: 'websocket', endpoint: blockedWs },
        { transport: 'http_stream', endpoint: blockedStream },
        { transport: 'sse', endpoint: ENDPOINTS.sse },
      ],
      expect: 'sse',
    },
  ];
  for (const { transports, expect } of cases) {
    const fmt = FORMATS.find((f) => f.format === 'json');
    const client = newClient(t, fmt, { token: connToken(`u-${uid()}`) }, transports);
    client.connect();
    await client.ready(10000);
    assert.equal(client.log.connected.at(-1).transport, expect);
    const sub = await client.newSubscription(`public:fallback-${uid()}`);
    sub.on('error', () => {});
    sub.subscribe();
    await sub.ready(5000);
    client.disconnect();
  }
});

// Server pings (ping_interval 25 s in herald-sdk.toml) and client pongs. Both formats at
// once to keep the suite short: each client is idle for 40 s. With maxServerPingDelay 2 s
// the SDK reconnects if no ping arrives within 27 s, and the server closes with 3012 if it
// does not accept the SDK's pongs (pong_timeout 8 s).
test('js json+protobuf: server pings keep an idle connection alive for 40 s', { timeout: 70000 }, async (t) => {
  const clients = FORMATS.map((fmt) => ({
    fmt,
    client: newClient(t, fmt, { token: connToken(`u-${uid()}`), maxServerPingDelay: 2000 }),
  }));
  for (const { client } of clients) client.connect();
  await Promise.all(clients.map(({ client }) => client.ready(5000)));
  const ids = clients.map(({ client }) => client.log.connected[0].client);
  await sleep(40000);
  clients.forEach(({ fmt, client }, i) => {
    assert.equal(client.state, 'connected', `${fmt.name}: still connected`);
    assert.equal(client.log.connecting.length, 1, `${fmt.name}: no reconnect (no-ping or 3012) — ${JSON.stringify(client.log.connecting)}`);
    assert.equal(client.log.disconnected.length, 0, `${fmt.name}: never disconnected`);
    assert.equal(client.log.connected.at(-1).client, ids[i]);
  });
  // Still usable.
  await Promise.all(clients.map(async ({ client }) => {
    const sub = client.newSubscription(`public:ping-${uid()}`);
    sub.on('error', () => {});
    sub.subscribe();
    await sub.ready(5000);
  }));
});
