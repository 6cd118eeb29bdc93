// Applies fossil deltas with the decoder the centrifuge SDK ships and compares each result with
// the expected target (issue 12 item 3):
//   node fossil_check.mjs DIR...
// Each DIR holds one directory per case with the files `origin`, `target` and `delta`, as
// tests/fixtures/fossil/ does. Prints one line per failure and a summary; exits 1 if any failed.
//
// The SDK does not export its `applyDelta` (build/index.mjs, the part taken from
// dchest/fossil-delta-js); a client applies it in its codec's `applyDeltaIfNeeded`. So the
// check goes through the codecs of two clients that are created but never connected:
// - Protobuf: the publication's data is the delta's bytes; every case goes this way.
// - JSON: the data is a JSON string, decoded by the SDK with TextEncoder; a delta that is not
//   valid UTF-8 reaches it with U+FFFD in place of the broken bytes, as from a server's JSON
//   encoder. Cases whose target is a JSON document go this way too.
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import { WebSocket } from 'ws';

const dirs = process.argv.slice(2);
if (dirs.length === 0) {
  console.error('usage: node fossil_check.mjs DIR...');
  process.exit(2);
}

const codecOf = (Client) => {
  const codec = new Client('ws://127.0.0.1:9/unused', { websocket: WebSocket })._codec;
  if (typeof codec?.applyDeltaIfNeeded !== 'function') {
    throw new Error('this centrifuge build has no _codec.applyDeltaIfNeeded: update fossil_check.mjs');
  }
  return codec;
};
const protobuf = codecOf(CentrifugeProtobuf);
const json = codecOf(CentrifugeJson);

const isJson = (bytes) => {
  try {
    JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    return true;
  } catch {
    return false;
  }
};
const same = (a, b) => a.length === b.length && a.every((byte, i) => byte === b[i]);

// What the SDK makes of `delta` against `origin`: the bytes, or the error it threw.
const viaProtobuf = (origin, delta) => protobuf.applyDeltaIfNeeded({ data: delta, delta: true }, origin).newPrevValue;
const viaJson = (origin, delta) => {
  const data = new TextDecoder().decode(delta);
  return json.applyDeltaIfNeeded({ data, delta: true }, origin).newPrevValue;
};

let cases = 0;
let jsonCases = 0;
const failures = [];
for (const dir of dirs) {
  for (const name of readdirSync(dir).sort()) {
    const caseDir = join(dir, name);
    if (!existsSync(join(caseDir, 'delta'))) continue;
    const [origin, target, delta] = ['origin', 'target', 'delta'].map((f) => new Uint8Array(readFileSync(join(caseDir, f))));
    const paths = [['protobuf', viaProtobuf]];
    if (isJson(target)) {
      paths.push(['json', viaJson]);
      jsonCases++;
    }
    cases++;
    for (const [path, apply] of paths) {
      let outcome;
      try {
        const result = Uint8Array.from(apply(origin, delta));
        outcome = same(result, target) ? null : `${result.length} bytes that differ from the ${target.length}-byte target`;
      } catch (e) {
        outcome = `error: ${e.message}`;
      }
      if (outcome !== null) failures.push(`${caseDir} (${path} codec): ${outcome}`);
    }
  }
}

for (const failure of failures) console.log(`FAIL ${failure}`);
console.log(`${cases} cases (${jsonCases} also through the JSON codec), ${failures.length} failures`);
process.exit(failures.length === 0 && cases > 0 ? 0 : 1);
