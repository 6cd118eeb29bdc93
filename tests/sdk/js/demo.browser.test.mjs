// The demo page (/demo) in a real browser: Debian's headless Chromium driven by playwright-core.
// It shows the connection state, live publications, presence and a recovery after a dropped
// connection, over WebSocket and, with WebSocket blocked in the page, over HTTP-streaming and
// then SSE. Screenshots go to target/test-artifacts/ (HERALD_ARTIFACTS overrides).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { WS_URL, uid, apiPublish } from './helpers.mjs';

const BASE = WS_URL.replace(/^ws/, 'http').replace(/\/connection\/websocket$/, '');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = process.env.HERALD_ARTIFACTS || new URL('../../../target/test-artifacts/', import.meta.url).pathname;

const text = (page, id) => page.locator(`#${id}`).textContent();

async function until(what, check, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function openDemo(browser, channel, user, { blockWebSocket = false, blockHttpStream = false } = {}) {
  const context = await browser.newContext();
  if (blockWebSocket) {
    // As behind a proxy that refuses WebSocket: the page has none.
    await context.addInitScript(() => Object.defineProperty(window, 'WebSocket', { value: undefined }));
  }
  if (blockHttpStream) {
    await context.route('**/connection/http_stream', (route) => route.abort());
  }
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${BASE}/demo?channel=${encodeURIComponent(channel)}&user=${user}`);
  await until(`${user} connected and subscribed`, async () =>
    (await text(page, 'state')) === 'connected' && (await text(page, 'subscription')) === 'subscribed');
  page.errors = errors;
  return page;
}

const publications = (page) => page.locator('#publications li').allTextContents();

test('demo page: live publications, presence, recovery, and the fallbacks', { timeout: 120000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (scripts/test.sh installs Debian's chromium)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    const channel = `public:demo-${uid()}`;
    const alice = await openDemo(browser, channel, 'alice');
    assert.equal(await text(alice, 'transport'), 'websocket');

    await apiPublish(channel, { text: 'one' });
    await apiPublish(channel, { text: 'two' });
    await until('two publications', async () => (await publications(alice)).length === 2);

    // Presence: a second visitor appears in the first one's list.
    const bob = await openDemo(browser, channel, 'bob');
    await until('bob in alice\'s presence', async () => (await text(alice, 'presence')).includes('bob'));
    assert.match(await text(alice, 'presence'), /alice/);

    // A publication from the page itself reaches both.
    await bob.fill('#text', 'hello from bob');
    await bob.click('#send button');
    await until('bob\'s message at alice', async () => (await publications(alice)).some((p) => p.includes('hello from bob')));

    // Dropped connection: what was published meanwhile is recovered.
    await alice.click('#drop');
    await apiPublish(channel, { text: 'while away 1' });
    await apiPublish(channel, { text: 'while away 2' });
    await until('recovered after the drop', async () => (await text(alice, 'recovery')) === 'recovered: true');
    await until('every publication', async () => (await publications(alice)).length === 5);
    const offsets = await alice.locator('#publications li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.offset)));
    assert.deepEqual(offsets, [1, 2, 3, 4, 5]);
    await alice.screenshot({ path: `${ARTIFACTS}/demo-websocket.png`, fullPage: true });

    // WebSocket blocked: HTTP-streaming; that blocked too: SSE. Both see live publications.
    const streaming = await openDemo(browser, channel, 'carol', { blockWebSocket: true });
    assert.equal(await text(streaming, 'transport'), 'http_stream');
    const sse = await openDemo(browser, channel, 'dave', { blockWebSocket: true, blockHttpStream: true });
    assert.equal(await text(sse, 'transport'), 'sse');
    await apiPublish(channel, { text: 'to every transport' });
    for (const page of [alice, bob, streaming, sse]) {
      await until('the last publication everywhere', async () =>
        (await publications(page)).some((p) => p.includes('to every transport')));
    }
    await until('dave in alice\'s presence', async () => (await text(alice, 'presence')).includes('dave'));
    // The SSE page recovers after a drop as well.
    await sse.click('#drop');
    await apiPublish(channel, { text: 'while sse away' });
    await until('sse recovered', async () => (await text(sse, 'recovery')) === 'recovered: true');
    await until('sse got it', async () => (await publications(sse)).some((p) => p.includes('while sse away')));
    await sse.screenshot({ path: `${ARTIFACTS}/demo-sse.png`, fullPage: true });
    for (const page of [alice, bob, streaming, sse]) {
      assert.deepEqual(page.errors, [], 'no script errors in the page');
    }
  } finally {
    await browser.close();
  }
});
