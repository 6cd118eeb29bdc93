// Fossil delta compression on stream subscriptions — centrifuge-js, every format and transport.
//
// The behaviour centrifuge-js's own stream delta tests expect from the server (namespace
// `delta` of herald-sdk.toml: allowed_delta_types = ["fossil"], delta_publish, force_recovery):
// publications decode to the published values, the first one after subscribing goes in full
// and the next similar ones as deltas (the SDK's `deltaStats()` counts which is which), and a
// subscription recovers after a clean disconnect/connect and after unsubscribe/subscribe with
// the missed publications decoded correctly. `subscription.test.mjs` ('fossil delta
// compression') covers the recovery after an abrupt transport drop.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FORMATS, TEST_TIMEOUT, uid, sleep, connectedClient, subscribed, waitUntil, apiPublish } from './helpers.mjs';

const decoded = (fmt, sub) => sub.log.publication.map((p) => fmt.decode(p.data));

// The stats say the SDK really decoded deltas: without them, full payloads would pass too.
function assertDeltaStats(sub, { publications, full, deltas }) {
  const stats = sub.deltaStats();
  const got = JSON.stringify(stats);
  assert.equal(stats.numPublications, publications, `publications counted by deltaStats(): ${got}`);
  assert.equal(stats.numFullPayloads, full, `full payloads: ${got}`);
  assert.equal(stats.numDeltaPayloads, deltas, `delta payloads: ${got}`);
  assert.ok(stats.bytesReceived < stats.bytesDecoded, `fewer bytes on the wire than decoded: ${got}`);
  assert.ok(stats.compressionRatio > 0, `positive compression ratio: ${got}`);
}

for (const fmt of FORMATS) {
  describe(`js ${fmt.name}: fossil delta (stream subscriptions)`, () => {
    test('similar publications: the first in full, the next as deltas, all decoded', { timeout: TEST_TIMEOUT }, async (t) => {
      const client = await connectedClient(t, fmt, `u-${uid()}`);
      const ch = `delta:successive-${uid()}`;
      const sub = await subscribed(client, ch, { delta: 'fossil' });
      const body = 'lorem ipsum '.repeat(50);
      const sent = [
        { seq: 1, body },
        { seq: 2, body },
        { seq: 3, body: `${body.slice(0, -3)}END` },
      ];
      for (const data of sent) await apiPublish(ch, data);
      await waitUntil(() => sub.log.publication.length === 3, 5000, '3 publications');
      assert.deepEqual(decoded(fmt, sub), sent);
      assertDeltaStats(sub, { publications: 3, full: 1, deltas: 2 });
      assert.deepEqual(sub.log.error, []);
    });

    test('ten publications with small diffs: one full, nine deltas', { timeout: TEST_TIMEOUT }, async (t) => {
      const client = await connectedClient(t, fmt, `u-${uid()}`);
      const ch = `delta:many-${uid()}`;
      const sub = await subscribed(client, ch, { delta: 'fossil' });
      const sent = Array.from({ length: 10 }, (_, i) => ({ tick: i, filler: '#'.repeat(480) }));
      for (const data of sent) await apiPublish(ch, data);
      await waitUntil(() => sub.log.publication.length === 10, 8000, '10 publications');
      assert.deepEqual(decoded(fmt, sub), sent);
      assert.deepEqual(sub.log.publication.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assertDeltaStats(sub, { publications: 10, full: 1, deltas: 9 });
    });

    test('recovery after client disconnect() and connect(): missed publications decoded', { timeout: TEST_TIMEOUT }, async (t) => {
      const client = await connectedClient(t, fmt, `u-${uid()}`);
      const ch = `delta:reconnect-${uid()}`;
      const sub = await subscribed(client, ch, { delta: 'fossil' });
      const sent = [
        { phase: 1, text: 'the quick brown fox' },
        { phase: 2, text: 'the quick brown fox jumps' },
        { phase: 3, text: 'the quick red fox jumps' },
      ];
      await apiPublish(ch, sent[0]);
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'the live publication');
      client.disconnect();
      await apiPublish(ch, sent[1]);
      await apiPublish(ch, sent[2]);
      client.connect();
      await client.ready(5000);
      await waitUntil(() => sub.log.subscribed.length === 2, 5000, 'resubscribed');
      assert.equal(sub.log.subscribed[1].recovered, true, 'recovered');
      assert.equal(sub.log.subscribed[1].wasRecovering, true, 'was recovering');
      await waitUntil(() => sub.log.publication.length === 3, 3000, 'the 2 missed publications');
      await sleep(200);
      assert.deepEqual(decoded(fmt, sub), sent, 'each publication once, decoded, in order');
      assert.deepEqual(sub.log.publication.map((p) => p.offset), [1, 2, 3]);
      assert.deepEqual(sub.log.error, []);
    });

    test('recovery after unsubscribe() and subscribe(): missed publications decoded', { timeout: TEST_TIMEOUT }, async (t) => {
      const client = await connectedClient(t, fmt, `u-${uid()}`);
      const ch = `delta:resubscribe-${uid()}`;
      const sub = await subscribed(client, ch, { delta: 'fossil' });
      const sent = [
        { rev: 1, note: 'initial revision of the note' },
        { rev: 2, note: 'initial revision of the note, amended' },
        { rev: 3, note: 'initial revision of the note, amended twice' },
      ];
      await apiPublish(ch, sent[0]);
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'the live publication');
      sub.unsubscribe();
      await apiPublish(ch, sent[1]);
      await apiPublish(ch, sent[2]);
      sub.subscribe();
      await sub.ready(5000);
      assert.equal(sub.log.subscribed.length, 2);
      assert.equal(sub.log.subscribed[1].recovered, true, 'recovered');
      assert.equal(sub.log.subscribed[1].wasRecovering, true, 'was recovering');
      await waitUntil(() => sub.log.publication.length === 3, 3000, 'the 2 missed publications');
      // And the delta chain goes on live after the recovery.
      const next = { rev: 4, note: 'initial revision of the note, amended twice!' };
      await apiPublish(ch, next);
      await waitUntil(() => sub.log.publication.length === 4, 3000, 'a live publication after recovery');
      await sleep(200);
      assert.deepEqual(decoded(fmt, sub), [...sent, next]);
      assert.deepEqual(sub.log.publication.map((p) => p.offset), [1, 2, 3, 4]);
      assert.deepEqual(sub.log.error, []);
    });
  });
}
