#!/usr/bin/env bash
# Nightly: the long scenarios CI skips (tests marked `slow`): drivers killed at fixed and random points and
# times, actors killed repeatedly, two jobs started at once on one OUT (local and S3), an object store failing
# long enough to fail a shard, and the slow cases of the other test files. Real Ray and real processes;
# about 15-25 minutes on 2 cores. Extra arguments go to pytest (e.g. `-k chaos`, `-x`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider -m slow "$@"
