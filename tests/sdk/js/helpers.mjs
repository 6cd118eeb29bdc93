// Shared helpers for the centrifuge-js conformance suites (node:test).
//
// Environment (exported by tests/sdk/run.sh):
//   HERALD_WS_URL   ws://127.0.0.1:PORT/connection/websocket
//   HERALD_API_URL  http://127.0.0.1:PORT/api
//   HERALD_API_KEY  server API key (X-API-Key)
//   HERALD_SECRET   HMAC secret for HS256 connection/subscription tokens

import { createHmac, randomBytes } from 'node:crypto';
import { ReadableStream } from 'node:stream/web';
import { WebSocket } from 'ws';
import EventSource from 'eventsource';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';

export const WS_URL = process.env.HERALD_WS_URL || 'ws://127.0.0.1:8000/connection/websocket';
export const API_URL = process.env.HERALD_API_URL || 'http://127.0.0.1:8000/api';
export const API_KEY = process.env.HERALD_API_KEY || 'sdk-test-api-key';
export const SECRET = process.env.HERALD_SECRET || 'sdk-test-secret';

// The fallback endpoints sit beside the WebSocket one.
const HTTP_BASE = WS_URL.replace(/^ws/, 'http').replace(/\/connection\/websocket$/, '');
export const ENDPOINTS = {
  http_stream: `${HTTP_BASE}/connection/http_stream`,
  sse: `${HTTP_BASE}/connection/sse`,
};
export const EMULATION_URL = `${HTTP_BASE}/emulation`;

// Default per-test timeout (ms) handed to node:test `test(name, { timeout })`.
export const TEST_TIMEOUT = 30000;

const enc = new TextEncoder();
const dec = new TextDecoder();

// Each scenario runs once per protocol format and transport. `encode` turns a JS value into
// what the SDK publishes in that format (JSON: the value itself; Protobuf: bytes), and
// `decode` turns received publication data back into the JS value. The fallbacks run as the
// SDK's own suite runs them in Node: `ws`, `eventsource` (major 2), fetch and ReadableStream.
// HERALD_SDK_TRANSPORTS (comma-separated, default all) picks the transports.
const JSON_FORMAT = {
  format: 'json',
  Centrifuge: CentrifugeJson,
  encode: (v) => v,
  decode: (d) => d,
};
const PROTOBUF_FORMAT = {
  format: 'protobuf',
  Centrifuge: CentrifugeProtobuf,
  encode: (v) => enc.encode(JSON.stringify(v)),
  decode: (d) => {
    assertBytes(d);
    return JSON.parse(dec.decode(d));
  },
};
const WANTED = (process.env.HERALD_SDK_TRANSPORTS || 'websocket,http_stream,sse').split(',');
export const FORMATS = [
  { ...JSON_FORMAT, name: 'json', transport: 'websocket' },
  { ...PROTOBUF_FORMAT, name: 'protobuf', transport: 'websocket' },
  { ...JSON_FORMAT, name: 'json http_stream', transport: 'http_stream' },
  { ...PROTOBUF_FORMAT, name: 'protobuf http_stream', transport: 'http_stream' },
  // SSE is JSON only.
  { ...JSON_FORMAT, name: 'json sse', transport: 'sse' },
].filter((f) => WANTED.includes(f.transport));

export function assertBytes(d) {
  if (!(d instanceof Uint8Array)) {
    throw new Error(`expected Uint8Array publication data in protobuf format, got ${typeof d}: ${String(d)}`);
  }
}

export function uid(n = 8) {
  return randomBytes(n).toString('hex');
}

export function nowSec() {
  return Math.floor(Date.now() / 1000);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------- tokens (HS256)

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}

export function jwt(claims, secret = SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

// Connection token for `user`. Pass { exp } (absolute, seconds) for an expiring token.
export function connToken(user, extra = {}) {
  return jwt({ sub: user, iat: nowSec(), ...extra });
}

// Subscription token for `user` on `channel`.
export function subToken(user, channel, extra = {}) {
  return jwt({ sub: user, channel, iat: nowSec(), ...extra });
}

// ---------------------------------------------------------------- waiting

// Polls `cond` until it returns a truthy value (returned) or `timeout` ms pass.
export async function waitUntil(cond, timeout = 5000, what = 'condition') {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    }
    await sleep(20);
  }
}

// Records every emission of `events` on `emitter` into arrays: log[event] = [ctx, ...].
// An 'error' listener is always attached (EventEmitter throws on unhandled 'error').
export function record(emitter, events) {
  const log = {};
  for (const ev of new Set([...events, 'error'])) {
    log[ev] = [];
    emitter.on(ev, (ctx) => log[ev].push(ctx));
  }
  return log;
}

// ---------------------------------------------------------------- clients

// Creates a client for `fmt`, records its events in `client.log` and disconnects it
// when the test ends. Does not connect.
// `transports` (a list of {transport, endpoint}) replaces the variant's own endpoint.
export function newClient(t, fmt, opts = {}, transports = null) {
  const endpoint = transports || (fmt.transport === 'websocket'
    ? WS_URL
    : [{ transport: fmt.transport, endpoint: ENDPOINTS[fmt.transport] }]);
  const client = new fmt.Centrifuge(endpoint, {
    websocket: WebSocket,
    fetch: globalThis.fetch,
    readableStream: ReadableStream,
    eventsource: EventSource,
    emulationEndpoint: EMULATION_URL,
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...opts,
  });
  client.log = record(client, [
    'state', 'connecting', 'connected', 'disconnected',
    'subscribed', 'subscribing', 'unsubscribed', 'publication', 'join', 'leave',
  ]);
  t.after(() => client.disconnect());
  return client;
}

// Connects a client for `user` and waits for the connected state.
export async function connectedClient(t, fmt, user, opts = {}) {
  const client = newClient(t, fmt, { token: connToken(user), ...opts });
  client.connect();
  await client.ready(5000);
  return client;
}

// Creates a subscription whose events are recorded in `sub.log`.
export function newSub(client, channel, opts = {}) {
  const sub = client.newSubscription(channel, opts);
  sub.log = record(sub, ['state', 'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave']);
  return sub;
}

// Subscribes and waits for the subscribed state.
export async function subscribed(client, channel, opts = {}) {
  const sub = newSub(client, channel, opts);
  sub.subscribe();
  await sub.ready(5000);
  return sub;
}

// Drops the transport under the client without a close handshake (an abrupt
// transport drop, as on network loss): terminates the WebSocket, or closes the HTTP stream
// or event source. Returns false when the SDK internals this relies on are not where
// expected.
export function dropTransport(client) {
  const transport = client._transport;
  if (transport && transport.emulation && transport.emulation()) {
    if (typeof transport.close !== 'function') return false;
    transport.close();
    return true;
  }
  const ws = transport && transport._transport;
  if (!ws || typeof ws.terminate !== 'function') return false;
  ws.terminate();
  return true;
}

// ---------------------------------------------------------------- server HTTP API

// POST $HERALD_API_URL/<method>; returns `result` or throws on HTTP/API errors.
export async function api(method, body = {}, { key = API_KEY } = {}) {
  const res = await apiRaw(method, body, { key });
  const text = await res.text();
  if (res.status !== 200) {
    throw new Error(`API ${method}: HTTP ${res.status}: ${text}`);
  }
  let json;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`API ${method}: response is not JSON: ${text}`);
  }
  if (json.error) {
    const err = new Error(`API ${method}: error ${json.error.code}: ${json.error.message}`);
    err.code = json.error.code;
    throw err;
  }
  return json.result || {};
}

export async function apiRaw(method, body = {}, { key = API_KEY } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (key !== null) headers['X-API-Key'] = key;
  return fetch(`${API_URL}/${method}`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
}

export function apiPublish(channel, data) {
  return api('publish', { channel, data });
}

// Waits until HTTP API presence of `channel` satisfies `pred(presenceMap)`.
export async function waitApiPresence(channel, pred, timeout = 2500, what = 'presence') {
  let last;
  try {
    return await waitUntil(async () => {
      const r = await api('presence', { channel });
      last = r.presence || {};
      return pred(last) ? last : null;
    }, timeout, what);
  } catch (e) {
    e.message += `; last presence: ${JSON.stringify(last)}`;
    throw e;
  }
}
