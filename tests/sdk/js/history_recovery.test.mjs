// History (limit / since / reverse) and recovery — centrifuge-js, JSON and Protobuf.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS, TEST_TIMEOUT, uid, sleep, subToken, connectedClient, newSub, subscribed,
  waitUntil, apiPublish, dropTransport,
} from './helpers.mjs';

const offsets = (pubs) => pubs.map((p) => p.offset);

for (const fmt of FORMATS) {
  describe(`js ${fmt.name}: history and recovery`, () => {
    test('history: limit / since / reverse, result carries epoch and offset', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `hist-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch) });
      let epoch = '';
      for (let i = 1; i <= 5; i++) {
        const r = await apiPublish(ch, { i });
        assert.equal(r.offset, i);
        epoch = r.epoch;
      }
      assert.ok(epoch, 'API publish result has an epoch');

      // No limit → only the stream position.
      const pos = await sub.history({});
      assert.deepEqual(pos.publications, []);
      assert.equal(pos.offset, 5);
      assert.equal(pos.epoch, epoch);

      // limit 2 without since → the OLDEST two, ascending.
      const h1 = await sub.history({ limit: 2 });
      assert.deepEqual(offsets(h1.publications), [1, 2]);
      assert.deepEqual(h1.publications.map((p) => fmt.decode(p.data)), [{ i: 1 }, { i: 2 }]);
      assert.equal(h1.offset, 5);
      assert.equal(h1.epoch, epoch);

      // since {offset 2, epoch} → what follows offset 2.
      const h2 = await sub.history({ since: { offset: 2, epoch }, limit: 10 });
      assert.deepEqual(offsets(h2.publications), [3, 4, 5]);
      assert.deepEqual(h2.publications.map((p) => fmt.decode(p.data)), [{ i: 3 }, { i: 4 }, { i: 5 }]);
      assert.equal(h2.offset, 5);
      assert.equal(h2.epoch, epoch);

      // reverse, limit 2 → newest first.
      const h3 = await sub.history({ limit: 2, reverse: true });
      assert.deepEqual(offsets(h3.publications), [5, 4]);
      assert.equal(h3.offset, 5);
      assert.equal(h3.epoch, epoch);

      // limit -1 → everything retained.
      const h4 = await sub.history({ limit: -1 });
      assert.deepEqual(offsets(h4.publications), [1, 2, 3, 4, 5]);

      // Client-level history(channel, opts) works the same.
      const h5 = await client.history(ch, { limit: 3 });
      assert.deepEqual(offsets(h5.publications), [1, 2, 3]);
    });

    test('history with a wrong epoch in since → error 112', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `hist-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch) });
      await apiPublish(ch, { i: 1 });
      await assert.rejects(sub.history({ since: { offset: 1, epoch: 'not-the-epoch' }, limit: 10 }),
        (err) => err.code === 112);
      assert.equal(client.state, 'connected');
    });

    test('recovery after reconnect: missed pubs in order, recovered=true, then live without duplicates', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `rec-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch) });
      const first = sub.log.subscribed[0];
      assert.equal(first.recoverable, true, 'force_recovery namespace → recoverable');
      assert.equal(first.wasRecovering, false);
      assert.equal(first.recovered, false);
      // A channel never published to has no stream: the empty position (epoch '', offset 0);
      // recovery with the empty epoch is matched by offset.
      assert.ok(first.streamPosition, 'fresh subscribe has a stream position');
      assert.equal(first.streamPosition.epoch || '', '', 'no stream yet: empty epoch');
      assert.equal(first.streamPosition.offset, 0, 'fresh channel starts at offset 0');

      await apiPublish(ch, { n: 1 });
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'live publication 1');

      client.disconnect();
      for (let n = 2; n <= 4; n++) await apiPublish(ch, { n });
      client.connect();
      await waitUntil(() => sub.log.subscribed.length === 2, 5000, 'resubscribed after reconnect');
      const again = sub.log.subscribed[1];
      assert.equal(again.wasRecovering, true, 'wasRecovering');
      assert.equal(again.recovered, true, 'recovered');
      await waitUntil(() => sub.log.publication.length === 4, 3000, 'recovered publications');
      assert.deepEqual(offsets(sub.log.publication), [1, 2, 3, 4]);
      assert.deepEqual(sub.log.publication.map((p) => fmt.decode(p.data)), [1, 2, 3, 4].map((n) => ({ n })));

      await apiPublish(ch, { n: 5 });
      await waitUntil(() => sub.log.publication.length === 5, 3000, 'live publication after recovery');
      await sleep(300);
      assert.deepEqual(offsets(sub.log.publication), [1, 2, 3, 4, 5], 'no duplicates');
    });

    test('recovery after an abrupt transport drop (no close frame)', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      // Reconnect no sooner than 1 s after the drop, so the publications below are missed.
      const client = await connectedClient(t, fmt, user, { minReconnectDelay: 1000, maxReconnectDelay: 1500 });
      const ch = `drop-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch) });
      await apiPublish(ch, { n: 1 });
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'live publication 1');
      const id1 = client.log.connected[0].client;
      if (!dropTransport(client)) {
        t.skip('cannot reach the WebSocket inside this centrifuge-js version');
        return;
      }
      await waitUntil(() => client.state !== 'connected', 3000, 'client notices the drop');
      for (let n = 2; n <= 3; n++) await apiPublish(ch, { n });
      await waitUntil(() => sub.log.subscribed.length === 2, 8000, 'resubscribed after automatic reconnect');
      assert.notEqual(client.log.connected.at(-1).client, id1, 'new connection, new client id');
      assert.equal(sub.log.subscribed[1].wasRecovering, true);
      assert.equal(sub.log.subscribed[1].recovered, true);
      assert.equal(sub.log.subscribed[1].hasRecoveredPublications, true, 'missed publications come with the subscribe reply');
      await apiPublish(ch, { n: 4 });
      await waitUntil(() => sub.log.publication.length === 4, 3000, 'all publications');
      await sleep(300);
      assert.deepEqual(offsets(sub.log.publication), [1, 2, 3, 4]);
      // The dropped connection left nothing behind.
      const pres = await sub.presence();
      assert.deepEqual(Object.keys(pres.clients), [client.log.connected.at(-1).client]);
    });

    test('recovery on the same connection: unsubscribe, miss pubs, subscribe again', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `resub-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch) });
      await apiPublish(ch, { n: 1 });
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'live publication 1');
      sub.unsubscribe();
      await apiPublish(ch, { n: 2 });
      await apiPublish(ch, { n: 3 });
      sub.subscribe();
      await waitUntil(() => sub.log.subscribed.length === 2, 5000, 'subscribed again');
      assert.equal(sub.log.subscribed[1].wasRecovering, true);
      assert.equal(sub.log.subscribed[1].recovered, true);
      await waitUntil(() => sub.log.publication.length === 3, 3000, 'recovered publications');
      assert.deepEqual(offsets(sub.log.publication), [1, 2, 3]);
    });

    test('smallhistory: 4 missed with history size 2 → recovered=false, wasRecovering=true, live continues', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `smallhistory:rec-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch) });
      await apiPublish(ch, { n: 1 });
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'live publication 1');
      client.disconnect();
      for (let n = 2; n <= 5; n++) await apiPublish(ch, { n });
      client.connect();
      await waitUntil(() => sub.log.subscribed.length === 2, 5000, 'resubscribed');
      const again = sub.log.subscribed[1];
      assert.equal(again.wasRecovering, true);
      assert.equal(again.recovered, false, 'cannot recover 4 missed from a history of 2');
      assert.equal(again.streamPosition.offset, 5, 'not recovered → current top position');
      await sleep(300);
      assert.equal(sub.log.publication.length, 1, 'no partial recovery');
      await apiPublish(ch, { n: 6 });
      await waitUntil(() => sub.log.publication.length === 2, 3000, 'live publication after failed recovery');
      assert.equal(sub.log.publication[1].offset, 6);
      assert.deepEqual(fmt.decode(sub.log.publication[1].data), { n: 6 });
    });

    test('server-side (personal channel) subscription recovers through connect.subs', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `p${uid()}`;
      const personal = `#${user}`;
      const client = await connectedClient(t, fmt, user);
      await waitUntil(() => client.log.subscribed.some((s) => s.channel === personal), 3000, `server-side subscribed event for ${personal}`);
      await apiPublish(personal, { n: 1 });
      const pubs = () => client.log.publication.filter((p) => p.channel === personal);
      await waitUntil(() => pubs().length === 1, 3000, 'live publication on the personal channel');
      client.disconnect();
      await apiPublish(personal, { n: 2 });
      await apiPublish(personal, { n: 3 });
      client.connect();
      await waitUntil(() => client.log.subscribed.filter((s) => s.channel === personal).length === 2, 5000, 'server-side resubscribe');
      const again = client.log.subscribed.filter((s) => s.channel === personal)[1];
      assert.equal(again.wasRecovering, true);
      assert.equal(again.recovered, true);
      await waitUntil(() => pubs().length === 3, 3000, 'recovered publications');
      assert.deepEqual(offsets(pubs()), [1, 2, 3]);
      assert.deepEqual(pubs().map((p) => fmt.decode(p.data)), [{ n: 1 }, { n: 2 }, { n: 3 }]);
    });
  });
}
