#!/usr/bin/env bash
# Starts Herald on its embedded default config (config/herald.toml, development secrets) at
# http://127.0.0.1:8000 and shows it working: a WebSocket subscriber on `chat:lobby` receives
# three messages published through the HTTP API. Herald keeps running afterwards; Ctrl-C stops it.
# Set DEMO_EXIT=1 to stop it right after the demonstration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --bin herald
# The demo page (/demo) runs the npm `centrifuge` browser bundle: installed into demo/.
if command -v npm >/dev/null 2>&1; then
  (cd demo && npm ci --no-audit --no-fund --ignore-scripts --silent) || echo "(npm failed: /demo will say the bundle is missing)" >&2
else
  echo "(npm not found: /demo will say the browser bundle is missing)" >&2
fi
bin=target/release/herald
tmp=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$tmp"' EXIT

"$bin" serve &
server=$!
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:8000/health >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "herald failed to start (is port 8000 taken?)" >&2; exit 1; }
  sleep 0.1
done

echo "--- subscribing to chat:lobby over WebSocket"
"$bin" sub chat:lobby --count 3 --timeout 30s 2>"$tmp/sub.err" >"$tmp/sub.out" &
sub=$!
for _ in $(seq 100); do grep -q subscribed "$tmp/sub.err" && break; sleep 0.1; done

echo "--- publishing three messages through POST /api/publish"
for i in 1 2 3; do
  "$bin" publish chat:lobby "{\"text\":\"hello $i\"}"
done

wait $sub
echo "--- the subscriber received:"
cat "$tmp/sub.out"

if [ "${DEMO_EXIT:-0}" = 1 ]; then
  exit 0
fi
echo "--- Herald is running at http://127.0.0.1:8000 (Ctrl-C to stop)"
echo "--- open http://127.0.0.1:8000/demo in two browser windows: live publications, presence, recovery"
wait $server
