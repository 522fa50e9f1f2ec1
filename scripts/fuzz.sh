#!/usr/bin/env bash
# Bounded fuzzing of the header parsers and the published-name sanitizer (fuzz/, cargo-fuzz).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: all of them) for SECONDS (default 60) of libFuzzer time, prints one
# summary line per target, and exits non-zero if any target crashed (a panic is a crash: the
# input is saved under fuzz/artifacts/<target>/ and the panic is printed).
#
# Stable toolchain: cargo-fuzz passes -Zsanitizer=address (and other -Z flags), which stable
# rustc rejects unless RUSTC_BOOTSTRAP=1, so this sets it. Nothing else nightly is needed.
#
# Corpus: the committed seeds in fuzz/corpus/<target>/ are only read. What libFuzzer finds goes
# to a working corpus in fuzz/target/corpus/<target>/ (ignored by git, kept between local runs
# so they build on each other; FUZZ_WORK=DIR puts it elsewhere), so git stays clean.
set -euo pipefail

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

work=${FUZZ_WORK:-$root/fuzz/target/corpus}
logs=$root/fuzz/target/logs
mkdir -p "$logs"

# One build of every target, then the runs use those binaries directly: no cargo in between, so
# nothing is rebuilt (or fails to) if the sources change while this runs.
echo "fuzz: building ${#targets[@]} targets (address sanitizer, debug assertions)" >&2
if ! cargo fuzz build >"$logs/build.log" 2>&1; then
    grep -E -A 6 "^error" "$logs/build.log" | head -n 40 >&2 || tail -n 40 "$logs/build.log" >&2
    echo "fuzz: build failed, nothing fuzzed (full log: $logs/build.log)" >&2
    exit 1
fi
bin_dir=$root/fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

failed=()
for t in "${targets[@]}"; do
    seeds=$root/fuzz/corpus/$t
    corpus=$work/$t
    artifacts=$root/fuzz/artifacts/$t
    mkdir -p "$corpus" "$seeds" "$artifacts"
    log=$logs/$t.log
    status=0
    # The first corpus dir is written to; the seeds dir is only read.
    "$bin_dir/$t" -artifact_prefix="$artifacts/" -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=1 "$corpus" "$seeds" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    size=$(find "$corpus" -type f | wc -l)
    if ((status == 0)); then
        printf 'fuzz: %-16s ok     %10s runs in %ss, corpus %s inputs\n' "$t" "${runs:-?}" "$seconds" "$size"
        continue
    fi
    failed+=("$t")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ -z $artifact ]]; then
        printf 'fuzz: %-16s ERROR  exit %s, no crash input written (not a finding?): %s\n' "$t" "$status" "$log"
        tail -n 5 "$log" | sed 's/^/    /'
        continue
    fi
    printf 'fuzz: %-16s CRASH  %10s runs, corpus %s inputs, input: %s\n' "$t" "${runs:-?}" "$size" "$artifact"
    # Where it panicked and the message (or the sanitizer's / libFuzzer's error).
    if grep -q "panicked at" "$log"; then
        grep -m 1 -A 1 "panicked at" "$log" | sed 's/^/    /'
    else
        grep -m 1 -E "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)" "$log" | sed 's/^/    /' || true
    fi
    echo "    input (base64): $(base64 -w0 "$artifact" | head -c 400)"
    echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact"
    echo "    log: $log"
done

if ((${#failed[@]})); then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
