#!/usr/bin/env bash
# SDK conformance suites: the real Centrifugo SDKs (npm `centrifuge`, PyPI
# `centrifuge-python` and `cent`) against a freshly started `herald serve`.
#
# Usage (from anywhere; normally from the repo root after `cargo build`):
#   tests/sdk/run.sh            # both suites
#   tests/sdk/run.sh js         # only the JS suite
#   tests/sdk/run.sh python     # only the Python suite
#   tests/sdk/run.sh install js # only install the packages (the cluster test uses the JS SDK)
#
# Environment:
#   HERALD_BIN          server binary (default: target/debug/herald, relative to the repo root)
#   HERALD_SDK_KEEP_TMP set to 1 to keep the temp dir (server log + storage) after the run
#   HERALD_SDK_EXTERNAL set to 1 to skip starting Herald and test the server already described
#                       by HERALD_WS_URL / HERALD_API_URL / HERALD_API_KEY / HERALD_SECRET
#
# Needs: bash >= 4, node >= 20.14 with npm, python3 >= 3.9, curl, timeout. Network only for the
# npm and PyPI registries (skipped when the installed packages are up to date).
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SDK_DIR/../.." && pwd)"
cd "$REPO_ROOT"

JS_DIR="$SDK_DIR/js"
PY_DIR="$SDK_DIR/python"
VENV="$PY_DIR/.venv"
CONFIG="tests/sdk/herald-sdk.toml"
SUITE_TIMEOUT=300
INSTALL_TIMEOUT=600

log() { printf '\033[1m[sdk]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[sdk] error:\033[0m %s\n' "$*" >&2; exit 2; }

install_only=0
if [ "${1:-}" = install ]; then install_only=1; shift; fi
suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then suites=(js python); fi
for s in "${suites[@]}"; do
  case "$s" in js|python) ;; *) die "unknown suite '$s' (expected: js, python)";; esac
done
want() { local s; for s in "${suites[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

sha256() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ------------------------------------------------------------------ dependencies

install_js() {
  command -v node >/dev/null || die "node not found"
  command -v npm >/dev/null || die "npm not found"
  # --test-force-exit needs node >= 20.14.
  node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 14) ? 0 : 1)' \
    || die "node >= 20.14 required (found $(node --version))"
  local stamp="$JS_DIR/node_modules/.herald-sdk-stamp" want_stamp
  if [ -f "$JS_DIR/package-lock.json" ]; then
    want_stamp="$(sha256 "$JS_DIR/package.json" "$JS_DIR/package-lock.json")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
      log "npm packages up to date"
      return
    fi
    log "npm ci (tests/sdk/js)"
    (cd "$JS_DIR" && timeout "$INSTALL_TIMEOUT" npm ci --no-audit --no-fund --ignore-scripts)
  else
    log "npm install (tests/sdk/js, no lock file yet: creating package-lock.json — commit it)"
    (cd "$JS_DIR" && timeout "$INSTALL_TIMEOUT" npm install --no-audit --no-fund --ignore-scripts)
    want_stamp="$(sha256 "$JS_DIR/package.json" "$JS_DIR/package-lock.json")"
  fi
  printf '%s\n' "$want_stamp" >"$stamp"
}

install_python() {
  command -v python3 >/dev/null || die "python3 not found"
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "python >= 3.9 required (found $(python3 --version))"
  local stamp="$VENV/.herald-sdk-stamp" want_stamp
  want_stamp="$(sha256 "$PY_DIR/requirements.txt")"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
    log "python venv up to date"
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv tests/sdk/python/.venv"
    python3 -m venv "$VENV"
  fi
  log "pip install -r tests/sdk/python/requirements.txt"
  timeout "$INSTALL_TIMEOUT" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --timeout 60 -r "$PY_DIR/requirements.txt"
  printf '%s\n' "$want_stamp" >"$stamp"
}

if want js; then install_js; fi
if want python; then install_python; fi
if [ "$install_only" = 1 ]; then exit 0; fi

# ------------------------------------------------------------------ server

TMP_DIR=""
SERVER_PID=""
SERVER_LOG=""
any_failed=0

cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "herald did not stop on SIGTERM within 5 s; killing it"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "$TMP_DIR" ]; then
    if [ "${HERALD_SDK_KEEP_TMP:-0}" = 1 ]; then
      log "kept $TMP_DIR (server log: $SERVER_LOG)"
    else
      rm -rf "$TMP_DIR"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

server_log_tail() {
  if [ -n "$SERVER_LOG" ] && [ -f "$SERVER_LOG" ]; then
    echo "----- herald log (last 80 lines of $SERVER_LOG) -----"
    tail -n 80 "$SERVER_LOG" || true
    echo "----- end of herald log -----"
  fi
}

if [ "${HERALD_SDK_EXTERNAL:-0}" = 1 ]; then
  : "${HERALD_WS_URL:?HERALD_SDK_EXTERNAL=1 needs HERALD_WS_URL}"
  : "${HERALD_API_URL:?HERALD_SDK_EXTERNAL=1 needs HERALD_API_URL}"
  export HERALD_WS_URL HERALD_API_URL
  export HERALD_API_KEY="${HERALD_API_KEY:-sdk-test-api-key}"
  export HERALD_SECRET="${HERALD_SECRET:-sdk-test-secret}"
  log "using the external server at $HERALD_WS_URL"
else
  HERALD_BIN="${HERALD_BIN:-target/debug/herald}"
  [ -x "$HERALD_BIN" ] || die "herald binary not found at '$HERALD_BIN' (run 'cargo build' or set HERALD_BIN)"
  command -v curl >/dev/null || die "curl not found"

  TMP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/herald-sdk.XXXXXX")"
  SERVER_LOG="$TMP_DIR/herald.log"
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  BASE="http://127.0.0.1:$PORT"

  # Herald reads every HERALD_* environment variable as a config key and rejects unknown
  # ones: the server gets none of ours (HERALD_BIN, HERALD_SDK_*, HERALD_WS_URL, ...).
  unset_herald_env=()
  while IFS= read -r name; do
    unset_herald_env+=(-u "$name")
  done < <(compgen -e | grep '^HERALD_' || true)

  log "starting $HERALD_BIN serve on 127.0.0.1:$PORT (log: $SERVER_LOG)"
  env "${unset_herald_env[@]}" HERALD_STORAGE_PATH="$TMP_DIR/storage" RUST_LOG="${RUST_LOG:-info}" \
    "$HERALD_BIN" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!

  ready=0
  for _ in $(seq 1 80); do  # 80 x 0.25 s = 20 s
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      server_log_tail
      die "herald exited before becoming ready"
    fi
    code="$(curl --noproxy '*' -s -o /dev/null -m 1 -w '%{http_code}' "$BASE/health" || true)"
    if [ "$code" = 200 ]; then ready=1; break; fi
    sleep 0.25
  done
  if [ "$ready" != 1 ]; then
    server_log_tail
    die "herald did not answer 200 on $BASE/health within 20 s"
  fi
  log "herald is ready"

  export HERALD_WS_URL="ws://127.0.0.1:$PORT/connection/websocket"
  export HERALD_API_URL="$BASE/api"
  export HERALD_API_KEY="sdk-test-api-key"
  export HERALD_SECRET="sdk-test-secret"
fi

# ------------------------------------------------------------------ suites

declare -A result
declare -A took

run_suite() {
  local name=$1; shift
  local start end rc=0
  log "running the $name suite: $*"
  start=$(date +%s)
  "$@" || rc=$?
  end=$(date +%s)
  took[$name]=$((end - start))
  if [ "$rc" -eq 0 ]; then
    result[$name]="PASS"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    result[$name]="FAIL (timed out after ${SUITE_TIMEOUT} s)"
    any_failed=1
  else
    result[$name]="FAIL (exit $rc)"
    any_failed=1
  fi
}

if want js; then
  shopt -s nullglob
  js_files=("$JS_DIR"/*.test.mjs)
  shopt -u nullglob
  [ ${#js_files[@]} -gt 0 ] || die "no JS test files in $JS_DIR"
  run_suite js timeout --kill-after=10 "$SUITE_TIMEOUT" \
    node --test --test-reporter=spec --test-force-exit "${js_files[@]}"
fi

if want python; then
  run_suite python bash -c 'cd "$1" && exec timeout --kill-after=10 "$2" "$3/bin/python" -m pytest -v' \
    _ "$PY_DIR" "$SUITE_TIMEOUT" "$VENV"
fi

if [ "$any_failed" = 1 ] && [ -n "$SERVER_LOG" ]; then
  server_log_tail
fi

echo
log "summary"
for s in "${suites[@]}"; do
  printf '  %-8s %s (%ss)\n' "$s" "${result[$s]}" "${took[$s]}"
done
if [ "$any_failed" = 1 ]; then
  log "SDK conformance: FAILED"
  exit 1
fi
log "SDK conformance: all suites passed"
