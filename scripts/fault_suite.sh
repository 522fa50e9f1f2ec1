#!/usr/bin/env bash
# The fault suite in full (docs/faults.md): the loopback and shaped-link cases with more
# repetitions, then the long shaped-link runs at 128 kbit/s with 60 s outages, all on the
# project's lab (scripts/linklab). Needs root and iptables (apt-get install -y iptables), and
# for bench_link.py's anchors what scripts/linklab/README.md lists. Takes about 15 minutes.
#   scripts/fault_suite.sh            # everything
#   KILLS=40 scripts/fault_suite.sh   # more client kills
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${KILLS:-20}

echo "== short cases, client killed ${kills} times (seeded), figures printed"
UPLOAD_KILLS=$kills cargo test --release --test tests -- --include-ignored --nocapture --test-threads 1 \
  faults:: link:: send::random_kills send::a_damaged send::a_silently \
  send::an_edit send::a_second_sender queue::run_killed tls:: 2>&1 \
  | grep -E "^test |re-sent|kills|cut at|loss at|frozen|test result"

echo "== long cases on the 128 kbit/s link (goodput, probe, 60 s outage, silent death + kill)"
cargo build --release
scripts/bench_link.py --bin target/release/upload
