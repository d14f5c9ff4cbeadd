#!/usr/bin/env bash
# The one command for the lent H200 (issue 12), from the repository root:  bash bench/gpu_check.sh
# Time budget (the whole run ends inside 8 minutes, so that it can be rerun once after a fix):
#   build of the C++ and CUDA kernels against the device's torch: ~1-3 min on 16 cores (seconds when cached in
#   /tmp/v4k from an earlier run on the same machine); ceilings ~10 s; op checks < 2 min; tiny model e2e < 1 min;
#   the layer steps < 2 min. gpu_check.py gives each stage a deadline inside --budget (455 s) and `timeout 470`
#   stops it regardless. Results: $OUT/GPU_RESULTS.md, $OUT/results.json, $OUT/log.txt (and build_errors.txt
#   if a build failed), GPU_RESULTS.md also in bench/. Exit status 0 only if every section passed.
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-bench/out/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 V4_KERNELS=1 V4_KERNEL_CACHE=/tmp/v4k MAX_JOBS=16
{
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  command -v nvcc && nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'
  timeout 470 python3 bench/gpu_check.py --device cuda --out "$OUT" --copy-to bench/GPU_RESULTS.md "$@"
} 2>&1 | tee "$OUT/log.txt"
