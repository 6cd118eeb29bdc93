#!/usr/bin/env bash
# Runs Herald's fuzz targets (fuzz/fuzz_targets, issue 11) with cargo-fuzz and libFuzzer:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Default: 60 seconds each, every target. Prints per target the executions and libFuzzer's
# final coverage (`cov`: code edges reached, `ft`: features, `corp`: corpus entries/size).
# Exits non-zero when a target fails, naming the input it saved (fuzz/artifacts/<target>/…);
# replay it with `cargo fuzz run -s none <target> <file>` in fuzz/.
#
# Inputs found go to fuzz/corpus/<target>/ next to the committed seeds (seed-*), so later runs
# start from there; git ignores them.
#
# Sanitizer: none by default. Herald forbids unsafe code, so what the targets look for is
# panics (overflow checks and debug assertions are on), hangs and memory blow-ups, and without
# AddressSanitizer each target runs about twice as many inputs. FUZZ_SANITIZER=address turns
# it on; -Zsanitizer is a nightly flag, and only the stable toolchain is available here, so the
# script then sets RUSTC_BOOTSTRAP=1, which lets stable rustc accept it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
if [[ $sanitizer != none ]]; then
    export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

cd fuzz
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for every target: they share all of Herald. FUZZ_CODEGEN_UNITS=16 builds faster
# at some cost in executions per second; FUZZ_DEV=1 builds without optimizations (cargo fuzz
# --dev: a few minutes instead of about ten here, and far fewer executions per second), which is
# what the test command's short slice uses: it checks that every target builds and runs.
profile=()
if [[ ${FUZZ_DEV:-0} == 1 ]]; then
    profile=(--dev)
fi
cargo fuzz build "${profile[@]}" -s "$sanitizer" --codegen-units "${FUZZ_CODEGEN_UNITS:-1}"

# libFuzzer's full output per target: kept in FUZZ_LOG_DIR when it is set.
if [[ -n ${FUZZ_LOG_DIR:-} ]]; then
    mkdir -p "$FUZZ_LOG_DIR"
    logs=$(cd "$FUZZ_LOG_DIR" && pwd)
else
    logs=$(mktemp -d)
    trap 'rm -rf "$logs"' EXIT
fi
failed=()
summary=()
for target in "${targets[@]}"; do
    printf '\n\033[1m== fuzz %s for %ss\033[0m\n' "$target" "$seconds"
    log="$logs/$target.log"
    status=0
    # -timeout: one input running 10 s is a hang worth failing on. -rss_limit_mb stays at
    # libFuzzer's 2048. The corpus directory is both the seeds and where new inputs go.
    # A target reads dict/<target>.dict when there is one (see fuzz/dict/README.md).
    dict=()
    if [[ -f dict/$target.dict ]]; then
        dict=(-dict="dict/$target.dict")
    fi
    cargo fuzz run "${profile[@]}" -s "$sanitizer" --codegen-units "${FUZZ_CODEGEN_UNITS:-1}" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || status=$?
    if ((status != 0)); then
        tail -n 40 "$log"
    fi
    # A target that fails at once prints no figures: grep finding nothing is not an error.
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    stats=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1 || true)
    # libFuzzer's own count of the seconds it ran ("Done N runs in S second(s)").
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    line="$target: ${runs:-?} runs in ${took:-?}s, ${stats:-no coverage figures}"
    echo "$line"
    if ((status != 0)); then
        # libFuzzer names the input it saved; cargo-fuzz repeats it after "Failing input:".
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        if [[ -z $artifact ]]; then
            artifact=$(grep -A2 '^Failing input:' "$log" | tail -1 | tr -d '[:space:]' || true)
        fi
        line="$line, FAILED (exit $status), input: ${artifact:-none written}"
        failed+=("$target")
    fi
    summary+=("$line")
done

printf '\n\033[1m== fuzzing summary\033[0m\n'
printf '%s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
