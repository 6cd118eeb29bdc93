// Follows one channel with the real centrifuge SDK (JSON) and prints what it sees, one JSON
// object per line, for tests/rolling.rs:
//   node follow.mjs WS_URL TOKEN CHANNEL
// Lines: {"event":"subscribed","recovered":…,"wasRecovering":…,"epoch":…,"offset":…},
//        {"event":"publication","offset":…,"id":…}, {"event":"subscribing","code":…},
//        {"event":"disconnected"|"connecting","code":…}.
// It runs until stdin closes (the test ends it so).
import { Centrifuge } from 'centrifuge';
import { WebSocket } from 'ws';

const [url, token, channel] = process.argv.slice(2);
const out = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const client = new Centrifuge(url, {
  token,
  websocket: WebSocket,
  minReconnectDelay: 100,
  maxReconnectDelay: 1000,
});
client.on('connecting', (ctx) => out({ event: 'connecting', code: ctx.code }));
client.on('disconnected', (ctx) => out({ event: 'disconnected', code: ctx.code }));

const sub = client.newSubscription(channel);
sub.on('subscribing', (ctx) => out({ event: 'subscribing', code: ctx.code }));
sub.on('subscribed', (ctx) =>
  out({
    event: 'subscribed',
    recovered: !!ctx.recovered,
    wasRecovering: !!ctx.wasRecovering,
    epoch: ctx.streamPosition ? ctx.streamPosition.epoch || '' : '',
    offset: ctx.streamPosition ? Number(ctx.streamPosition.offset || 0) : 0,
  }),
);
sub.on('publication', (ctx) => out({ event: 'publication', offset: Number(ctx.offset || 0), id: ctx.data.id }));
sub.subscribe();
client.connect();

process.stdin.on('end', () => {
  client.disconnect();
  process.exit(0);
});
process.stdin.resume();
