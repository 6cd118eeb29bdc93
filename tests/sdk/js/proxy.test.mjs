// Proxies (docs/proxies.md) driven by centrifuge-js over WebSocket, JSON and Protobuf.
//
// The proxies need their own config, so this file starts its own application backend (a
// node:http server on loopback that recognises users by the forwarded session Cookie, answers
// per user and per channel, and records every call) and its own Herald (HERALD_BIN, default
// target/debug/herald, relative to the repository root as in run.sh). The Herald that run.sh
// started is not used. Scenarios: cookie authentication without a JWT, a connect refused with a
// custom disconnect code, the subscribe proxy allowing and refusing, a publication rewritten by
// the publish proxy, an RPC round-trip, and a backend that is down.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ReadableStream } from 'node:stream/web';
import { WebSocket } from 'ws';
import EventSource from 'eventsource';
import { FORMATS, TEST_TIMEOUT, uid, sleep, waitUntil, record } from './helpers.mjs';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const HERALD_BIN = path.resolve(REPO_ROOT, process.env.HERALD_BIN || 'target/debug/herald');
const SECRET = 'proxy-test-secret';

// ---------------------------------------------------------------- the application backend

// Sessions known to the backend: session id (the `sid` cookie) -> { user, banned }.
// Every call is recorded as { proxy, headers, body }.
async function startBackend() {
  const sessions = new Map();
  const calls = [];

  const sessionOf = (headers) => {
    const m = /(?:^|;\s*)sid=([^;]+)/.exec(headers.cookie || '');
    return m ? sessions.get(m[1]) : undefined;
  };

  const answer = (proxy, headers, body) => {
    const session = sessionOf(headers);
    switch (proxy) {
      case 'connect':
        if (!session) return { error: { code: 401, message: 'no session' } };
        if (session.banned) return { disconnect: { code: 4501, reason: 'banned' } };
        return {
          result: {
            user: session.user,
            data: { greeting: `hello ${session.user}` },
            meta: { sid: session.sid },
          },
        };
      case 'subscribe':
        // The Cookie is forwarded on every call of the connection, not only on connect.
        if (!session || session.user !== body.user) return { error: { code: 401, message: 'no session' } };
        if (body.channel.includes(':deny-')) return { error: { code: 403, message: 'forbidden' } };
        return { result: {} };
      case 'publish':
        if (!session || session.user !== body.user) return { error: { code: 401, message: 'no session' } };
        return { result: { data: { ...body.data, rewritten: true, by: body.user } } };
      case 'rpc':
        if (!session || session.user !== body.user) return { error: { code: 401, message: 'no session' } };
        if (body.method === 'ns:echo') return { result: { data: { echo: body.data, user: body.user } } };
        return { error: { code: 404, message: 'unknown method' } };
      default:
        return { error: { code: 400, message: `unknown proxy ${proxy}` } };
    }
  };

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const proxy = req.url.replace(/^\//, '');
      let body = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString());
      } catch {
        // recorded as null: a test asserting on the body then fails with the call in view
      }
      calls.push({ proxy, method: req.method, headers: req.headers, body });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(answer(proxy, req.headers, body)));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    // A new session; returns its Cookie header value.
    session(opts = {}) {
      const sid = uid();
      const user = `u-${uid(4)}`;
      sessions.set(sid, { sid, user, banned: false, ...opts });
      return { sid, user, cookie: `theme=dark; sid=${sid}` };
    },
    callsFor(proxy, sid) {
      return calls.filter((c) => c.proxy === proxy && (c.headers.cookie || '').includes(`sid=${sid}`));
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// A loopback port nothing listens on.
async function closedPort() {
  const s = net.createServer();
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}

// ---------------------------------------------------------------- Herald with proxies

function proxyConfig(backend, connectEndpoint = `${backend}/connect`) {
  const proxy = (name) => `enabled = true
endpoint = "${backend}/${name}"
timeout = "2s"
http_headers = ["Cookie"]`;
  return `
[http_stream]
enabled = true

[sse]
enabled = true

[client]
token_hmac_secret = "${SECRET}"

[client.proxy.connect]
enabled = true
endpoint = "${connectEndpoint}"
timeout = "2s"
http_headers = ["Cookie"]

[channels.proxy.subscribe]
${proxy('subscribe')}

[channels.proxy.publish]
${proxy('publish')}

[rpc.proxy]
${proxy('rpc')}

[rpc.namespaces.ns]
proxy_enabled = true

[rpc.namespaces.noproxy]
proxy_enabled = false

# Subscribe and publish decided by the backend.
[channels.namespaces.sp]
subscribe_proxy_enabled = true
publish_proxy_enabled = true
`;
}

// Starts `herald serve` on 127.0.0.1:0 with `config` and a fresh storage dir; learns the
// address from the "herald listening on ADDR" line on stdout, as tests/common does.
async function startHerald(config) {
  const dir = mkdtempSync(path.join(tmpdir(), 'herald-sdk-proxy.'));
  const configPath = path.join(dir, 'herald.toml');
  const logPath = path.join(dir, 'herald.log');
  writeFileSync(configPath, `${config}\n[storage]\npath = "${path.join(dir, 'data')}"\n`);
  // Herald reads HERALD_* variables as config keys; run.sh exports some that are not.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  env.RUST_LOG = process.env.RUST_LOG || 'info';
  const logFd = openSync(logPath, 'a');
  const child = spawn(HERALD_BIN, ['serve', '--config', configPath, '--listen', '127.0.0.1:0'], {
    env, stdio: ['ignore', 'pipe', logFd],
  });
  closeSync(logFd);
  const log = () => {
    try {
      return readFileSync(logPath, 'utf8');
    } catch {
      return '';
    }
  };
  const exited = new Promise((resolve) => child.on('exit', resolve));
  // A test process that exits early (--test-force-exit, a failed hook) takes its server along.
  const killOnExit = () => child.kill('SIGKILL');
  process.on('exit', killOnExit);
  const removeDir = () => {
    if (process.env.HERALD_SDK_KEEP_TMP === '1') {
      console.log(`kept ${dir}`);
    } else {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start within 20 s:\n${log()}`)), 20000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    exited.then((code) => { clearTimeout(timer); reject(new Error(`herald exited (${code}):\n${log()}`)); });
    // Keep reading stdout to the end so the child never blocks on a full pipe.
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('herald listening on ')) {
        clearTimeout(timer);
        resolve(line.slice('herald listening on '.length).trim());
      }
    });
  }).catch((e) => {
    child.kill('SIGKILL');
    removeDir();
    throw e;
  });
  return {
    wsUrl: `ws://${addr}/connection/websocket`,
    httpUrl: `http://${addr}`,
    log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const stopped = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
        if (!stopped) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      process.off('exit', killOnExit);
      removeDir();
    },
  };
}

// The sum of a metric's series in /metrics that carry every label in `labels`.
async function metric(herald, name, labels = {}) {
  const text = await (await fetch(`${herald.httpUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  return text.split('\n')
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .filter((l) => Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

// ---------------------------------------------------------------- clients

// A WebSocket constructor whose handshake carries `cookie`, as a browser's would.
function cookieWebSocket(cookie) {
  return class CookieWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: cookie } });
    }
  };
}

// A client without a token that records its events in `client.log` and is disconnected
// when the test ends. Does not connect.
function newClient(t, fmt, url, { cookie = null, ...opts } = {}) {
  const client = new fmt.Centrifuge(url, {
    websocket: cookie ? cookieWebSocket(cookie) : WebSocket,
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...opts,
  });
  client.log = record(client, [
    'state', 'connecting', 'connected', 'disconnected', 'subscribed', 'subscribing', 'unsubscribed', 'publication',
  ]);
  t.after(() => client.disconnect());
  return client;
}

// A client over HTTP streaming or SSE whose session-opening request (only that one, not the
// POSTs to /emulation that carry later commands) carries `cookie`.
function newEmulatedClient(t, fmt, herald, cookie) {
  const streamUrl = `${herald.httpUrl}/connection/${fmt.transport}`;
  const client = new fmt.Centrifuge([{ transport: fmt.transport, endpoint: streamUrl }], {
    fetch: (url, init = {}) => (String(url).startsWith(`${herald.httpUrl}/connection/`)
      ? fetch(url, { ...init, headers: { ...init.headers, Cookie: cookie } })
      : fetch(url, init)),
    readableStream: ReadableStream,
    // eventsource 2 takes request headers in its second argument.
    eventsource: function CookieEventSource(url, init = {}) {
      return new EventSource(url, { ...init, headers: { ...init.headers, Cookie: cookie } });
    },
    emulationEndpoint: `${herald.httpUrl}/emulation`,
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  client.log = record(client, ['state', 'connecting', 'connected', 'disconnected']);
  t.after(() => client.disconnect());
  return client;
}

function newSub(client, channel, opts = {}) {
  const sub = client.newSubscription(channel, opts);
  sub.log = record(sub, ['state', 'subscribing', 'subscribed', 'unsubscribed', 'publication']);
  return sub;
}

// ---------------------------------------------------------------- scenarios

const available = (() => {
  try {
    accessSync(HERALD_BIN, constants.X_OK);
    return true;
  } catch {
    return false;
  }
})();

describe('js proxies', { skip: available ? false : `no herald binary at ${HERALD_BIN}` }, () => {
  let backend;
  let herald;

  before(async () => {
    backend = await startBackend();
    herald = await startHerald(proxyConfig(backend.url));
  });

  after(async () => {
    await herald?.stop();
    await backend?.close();
  });

  for (const fmt of FORMATS.filter((f) => f.transport === 'websocket')) {
    describe(fmt.name, () => {
      const connected = async (t, session, opts = {}) => {
        const client = newClient(t, fmt, herald.wsUrl, { cookie: session.cookie, ...opts });
        client.connect();
        await client.ready(5000);
        return client;
      };

      test('without a token, the Cookie authenticates: the connect proxy gets it and picks the user', { timeout: TEST_TIMEOUT }, async (t) => {
        const s = backend.session();
        const client = await connected(t, s, { data: fmt.encode({ hello: 'there' }) });
        const ctx = client.log.connected[0];
        assert.deepEqual(fmt.decode(ctx.data), { greeting: `hello ${s.user}` }, 'the result data reaches the client');

        const calls = backend.callsFor('connect', s.sid);
        assert.equal(calls.length, 1);
        const { headers, body, method } = calls[0];
        assert.equal(method, 'POST');
        assert.match(headers['content-type'], /^application\/json/);
        assert.equal(headers.cookie, s.cookie, 'the Cookie is forwarded unchanged');
        assert.equal(body.client, ctx.client);
        assert.equal(body.transport, 'websocket');
        assert.equal(body.protocol, fmt.format);
        assert.equal(body.encoding, 'json');
        assert.equal(body.name, 'js');
        assert.deepEqual(body.data, { hello: 'there' });

        // The connection is the backend's user: the next proxy call says so, with the meta.
        const sub = newSub(client, `sp:ok-${uid()}`);
        sub.subscribe();
        await sub.ready(5000);
        const subCall = backend.callsFor('subscribe', s.sid).at(-1);
        assert.equal(subCall.body.user, s.user);
        assert.deepEqual(subCall.body.meta, { sid: s.sid });
      });

      test('headers emulation: the SDK `headers` option (ConnectRequest.headers) reaches the connect proxy', { timeout: TEST_TIMEOUT }, async (t) => {
        const s = backend.session();
        // A plain WebSocket without a Cookie; the Cookie goes in the connect command only.
        const client = newClient(t, fmt, herald.wsUrl, { headers: { Cookie: s.cookie } });
        client.connect();
        await waitUntil(() => client.log.connected.length + client.log.disconnected.length > 0, 5000, 'connected or disconnected');
        const calls = backend.callsFor('connect', s.sid);
        assert.equal(calls.length, 1, `the connect proxy got the emulated Cookie; client: ${JSON.stringify(client.log.disconnected)}`);
        assert.equal(client.state, 'connected');
      });

      test('a real handshake Cookie wins over an emulated one', { timeout: TEST_TIMEOUT }, async (t) => {
        const real = backend.session();
        const emulated = backend.session();
        const client = await connected(t, real, { headers: { Cookie: emulated.cookie } });
        assert.equal(backend.callsFor('connect', real.sid).length, 1);
        assert.equal(backend.callsFor('connect', emulated.sid).length, 0);
        assert.equal(backend.callsFor('connect', real.sid)[0].headers.cookie, real.cookie);
        assert.equal(client.state, 'connected');
      });

      test('a connect refused with disconnect 4501 ends disconnected with 4501, without reconnecting', { timeout: TEST_TIMEOUT }, async (t) => {
        const s = backend.session({ banned: true });
        const client = newClient(t, fmt, herald.wsUrl, { cookie: s.cookie });
        client.connect();
        await waitUntil(() => client.log.disconnected.length === 1, 5000, 'disconnected');
        assert.equal(client.log.disconnected[0].code, 4501);
        assert.equal(client.log.disconnected[0].reason, 'banned');
        assert.equal(client.state, 'disconnected');
        // The SDK must not come back: one connect call, over two seconds of reconnect delays.
        await sleep(2000);
        assert.equal(backend.callsFor('connect', s.sid).length, 1);
        assert.equal(client.log.connected.length, 0);
        assert.equal(client.log.disconnected.length, 1);
        assert.equal(client.state, 'disconnected');
      });

      test('the subscribe proxy allows one channel and refuses another with 403', { timeout: TEST_TIMEOUT }, async (t) => {
        const s = backend.session();
        const client = await connected(t, s);
        const okChannel = `sp:ok-${uid()}`;
        const ok = newSub(client, okChannel);
        ok.subscribe();
        await ok.ready(5000);
        assert.equal(ok.log.subscribed.length, 1);

        const call = backend.callsFor('subscribe', s.sid).find((c) => c.body.channel === okChannel);
        assert.ok(call, 'the subscribe proxy was called');
        assert.equal(call.headers.cookie, s.cookie);
        assert.equal(call.body.user, s.user);
        assert.equal(call.body.client, client.log.connected[0].client);
        assert.deepEqual(call.body.meta, { sid: s.sid });

        // A non-temporary subscribe error: centrifuge-js reports it as `unsubscribed` with the
        // error's code (no error event, no retry).
        const denied = newSub(client, `sp:deny-${uid()}`);
        denied.subscribe();
        await waitUntil(() => denied.log.unsubscribed.length === 1, 5000, 'unsubscribed');
        assert.equal(denied.log.unsubscribed[0].code, 403);
        assert.equal(denied.log.subscribed.length, 0);
        assert.equal(denied.state, 'unsubscribed');
        assert.equal(client.state, 'connected', 'the connection stays');
        assert.equal(ok.state, 'subscribed');
      });

      test('the publish proxy rewrites a publication: another subscriber gets the new data', { timeout: TEST_TIMEOUT }, async (t) => {
        const ch = `sp:pub-${uid()}`;
        const reader = backend.session();
        const writer = backend.session();
        const readerClient = await connected(t, reader);
        const sub = newSub(readerClient, ch);
        sub.subscribe();
        await sub.ready(5000);
        const writerClient = await connected(t, writer);

        await writerClient.publish(ch, fmt.encode({ text: 'hi' }));
        await waitUntil(() => sub.log.publication.length === 1, 3000, 'the publication');
        assert.deepEqual(fmt.decode(sub.log.publication[0].data), { text: 'hi', rewritten: true, by: writer.user });

        const call = backend.callsFor('publish', writer.sid).at(-1);
        assert.equal(call.body.channel, ch);
        assert.equal(call.body.user, writer.user);
        assert.deepEqual(call.body.data, { text: 'hi' });
        assert.equal(call.headers.cookie, writer.cookie);
        await sleep(200);
        assert.equal(sub.log.publication.length, 1, 'published once');
      });

      test('RPC through the proxy returns the backend\'s data; no proxy 108, unknown namespace 104', { timeout: TEST_TIMEOUT }, async (t) => {
        const s = backend.session();
        const client = await connected(t, s);
        const reply = await client.rpc('ns:echo', fmt.encode({ n: 42 }));
        assert.deepEqual(fmt.decode(reply.data), { echo: { n: 42 }, user: s.user });
        const call = backend.callsFor('rpc', s.sid).at(-1);
        assert.equal(call.body.method, 'ns:echo');
        assert.deepEqual(call.body.meta, { sid: s.sid });

        await assert.rejects(client.rpc('ns:missing', fmt.encode({})), (e) => e.code === 404, 'the backend\'s error');
        await assert.rejects(client.rpc('noproxy:x', fmt.encode({})), (e) => e.code === 108);
        await assert.rejects(client.rpc('unknown:x', fmt.encode({})), (e) => e.code === 104);
        assert.equal(client.state, 'connected');
      });

      test('the connect backend is down: connect error 100, and the SDK keeps retrying', { timeout: TEST_TIMEOUT }, async (t) => {
        const down = await startHerald(proxyConfig(backend.url, `http://127.0.0.1:${await closedPort()}/connect`));
        t.after(() => down.stop());
        const s = backend.session();
        const client = newClient(t, fmt, down.wsUrl, { cookie: s.cookie });
        client.connect();
        const connectErrors = () => client.log.error.filter((e) => e.type === 'connect');
        await waitUntil(() => connectErrors().length >= 3, 10000, 'three connect errors');
        for (const e of connectErrors()) assert.equal(e.error.code, 100, JSON.stringify(e.error));
        assert.equal(client.state, 'connecting', 'still trying');
        assert.equal(client.log.disconnected.length, 0, 'never gave up');
        const unreachable = await metric(down, 'herald_proxy_errors_total', { proxy: 'connect', reason: 'unreachable' });
        assert.ok(unreachable >= 3, `unreachable failures counted: ${unreachable}`);
      });
    });
  }

  for (const fmt of FORMATS.filter((f) => f.transport !== 'websocket')) {
    test(`${fmt.name}: the Cookie of the request that opened the session reaches every proxy call`, { timeout: TEST_TIMEOUT }, async (t) => {
      const s = backend.session();
      const client = newEmulatedClient(t, fmt, herald, s.cookie);
      client.connect();
      await client.ready(5000);
      const connect = backend.callsFor('connect', s.sid);
      assert.equal(connect.length, 1);
      assert.equal(connect[0].headers.cookie, s.cookie);
      assert.equal(connect[0].body.transport, fmt.transport);
      assert.equal(connect[0].body.protocol, fmt.format);

      // The subscribe command goes over POST /emulation, which carries no Cookie: the
      // subscribe proxy still gets the session's.
      const channel = `sp:ok-${uid()}`;
      const sub = newSub(client, channel);
      sub.subscribe();
      await sub.ready(5000);
      const call = backend.callsFor('subscribe', s.sid).find((c) => c.body.channel === channel);
      assert.ok(call, 'the subscribe proxy got the session Cookie');
      assert.equal(call.body.user, s.user);
      assert.equal(call.body.transport, fmt.transport);
    });
  }
});
