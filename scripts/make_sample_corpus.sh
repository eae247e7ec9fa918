#!/usr/bin/env bash
# Rebuild the sample corpus shipped in the package (rvos_batch/assets/sample): 4 synthetic videos of real
# DAVIS silhouettes and motion, with their first-appearance prompts, so `rvos-batch label` runs out of the box
# in both modes. Needs ../shared/data (or RVOS_SHARED_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/rvos-batch synth "$tmp/davis" --videos 4 --frames 16 --seed 4242 --textures heldout
rm -rf rvos_batch/assets/sample
.venv/bin/rvos-batch ingest "$tmp/davis" rvos_batch/assets/sample --format davis --videos-per-file 4 --no-progress
du -sh rvos_batch/assets/sample
