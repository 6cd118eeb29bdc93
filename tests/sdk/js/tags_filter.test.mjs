// Tags filter (`tagsFilter` on a subscription): centrifuge-js, every format and transport.
// The namespace `tagged` allows a filter, the default namespace refuses one (107).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS, TEST_TIMEOUT, uid, sleep, subToken, connectedClient, newSub, subscribed, waitUntil, api,
} from './helpers.mjs';

// Publishes `{n}` with `tags` through the server API.
const publish = (channel, n, tags) => api('publish', { channel, data: { n }, tags });

const team = (name) => ({ key: 'team', cmp: 'eq', val: name });

for (const fmt of FORMATS) {
  describe(`js ${fmt.name}: tags filter`, () => {
    test('each subscription gets only the publications its filter passes', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const ch = `tagged:f-${uid()}`;
      const eng = await subscribed(await connectedClient(t, fmt, user), ch, {
        token: subToken(user, ch), tagsFilter: team('eng'),
      });
      const pricey = await subscribed(await connectedClient(t, fmt, user), ch, {
        token: subToken(user, ch),
        tagsFilter: {
          op: 'and',
          nodes: [
            { key: 'price', cmp: 'gte', val: '100' },
            { op: 'not', nodes: [{ key: 'region', cmp: 'in', vals: ['asia', 'africa'] }] },
          ],
        },
      });
      const all = await subscribed(await connectedClient(t, fmt, user), ch, { token: subToken(user, ch) });

      await publish(ch, 1, { team: 'eng', price: '99.5', region: 'eu' });
      await publish(ch, 2, { team: 'ops', price: '100', region: 'us' });
      await publish(ch, 3, { team: 'eng', price: '1000', region: 'asia' });
      await publish(ch, 4, {});
      await publish(ch, 5, { team: 'eng', price: '250', region: 'eu' });

      const ns = (sub) => sub.log.publication.map((p) => fmt.decode(p.data).n);
      await waitUntil(() => ns(all).length === 5, 3000, 'every publication for the unfiltered subscription');
      await waitUntil(() => ns(eng).includes(5) && ns(pricey).includes(5), 3000, 'the last publication');
      await sleep(200);
      assert.deepEqual(ns(eng), [1, 3, 5]);
      assert.deepEqual(ns(pricey), [2, 5]);
      assert.deepEqual(ns(all), [1, 2, 3, 4, 5]);
      assert.deepEqual(eng.log.publication[0].tags, { team: 'eng', price: '99.5', region: 'eu' });
      // Positioned: each publication still carries its own offset.
      assert.deepEqual(eng.log.publication.map((p) => p.offset), [1, 3, 5]);
      for (const sub of [eng, pricey]) assert.equal(sub.log.unsubscribed.length, 0);
    });

    test('a filter where the namespace does not allow one is refused with 107', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `nofilter-${uid()}`;
      const sub = newSub(client, ch, { token: subToken(user, ch), tagsFilter: team('eng') });
      sub.subscribe();
      await waitUntil(() => sub.log.unsubscribed.length === 1, 3000, 'unsubscribed');
      assert.equal(sub.log.unsubscribed[0].code, 107);
      assert.equal(client.state, 'connected', 'the connection stays');
      // The same channel without a filter is fine.
      const other = `nofilter-${uid()}`;
      const plain = await subscribed(client, other, { token: subToken(user, other) });
      assert.equal(plain.state, 'subscribed');
    });

    test('recovery after reconnect replays only what passes, then live without a gap', { timeout: TEST_TIMEOUT }, async (t) => {
      const user = `u-${uid()}`;
      const client = await connectedClient(t, fmt, user);
      const ch = `tagged:rec-${uid()}`;
      const sub = await subscribed(client, ch, { token: subToken(user, ch), tagsFilter: team('eng') });
      assert.equal(sub.log.subscribed[0].recoverable, true);
      await publish(ch, 1, { team: 'eng' });
      await publish(ch, 2, { team: 'ops' });
      await waitUntil(() => sub.log.publication.length === 1, 3000, 'live publication 1');

      client.disconnect();
      await publish(ch, 3, { team: 'ops' });
      await publish(ch, 4, { team: 'eng' });
      await publish(ch, 5, { team: 'ops' });
      client.connect();
      await waitUntil(() => sub.log.subscribed.length === 2, 5000, 'resubscribed after reconnect');
      const again = sub.log.subscribed[1];
      assert.equal(again.wasRecovering, true);
      assert.equal(again.recovered, true);
      await waitUntil(() => sub.log.publication.length === 2, 3000, 'the recovered publication');

      await publish(ch, 6, { team: 'ops' });
      await publish(ch, 7, { team: 'eng' });
      await waitUntil(() => sub.log.publication.length === 3, 3000, 'live publication after recovery');
      await sleep(300);
      assert.deepEqual(sub.log.publication.map((p) => p.offset), [1, 4, 7]);
      assert.deepEqual(sub.log.publication.map((p) => fmt.decode(p.data).n), [1, 4, 7]);
      assert.equal(sub.log.unsubscribed.length, 0, 'no gap ended the subscription');
      assert.equal(sub.state, 'subscribed');
    });
  });
}
