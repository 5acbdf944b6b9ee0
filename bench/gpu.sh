#!/usr/bin/env bash
# GPU check in one call: bash bench/gpu.sh OUT_DIR [--smoke]  (or --smoke OUT_DIR). Writes
# OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.txt; see bench/gpu_check.py. Needs torch, h5py, safetensors.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
exec python "$here/gpu_check.py" "$@"
