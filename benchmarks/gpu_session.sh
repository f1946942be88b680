#!/usr/bin/env bash
# One GPU session, prepared: what a short loan of a GPU machine should run, in order of value,
# each step under its own time limit so that one slow step cannot take the rest, about 9 minutes
# in all. Writes everything under ${OUT:-out/gpu_session}; a failed step is logged and the
# next one runs. From the repository root (vtp_compile importable, e.g. PYTHONPATH=.):
#
#     OUT=/tmp/gpu bash benchmarks/gpu_session.sh
#
# 1. environment: GPU, torch, transformers, triton (the device image may differ from CI's)
# 2. every Triton kernel against its reference, and their times (benchmarks/gpu_kernels.py)
# 3. the host-sync checks of every op's CUDA path (fake CUDA tensors; real ones in 2 and 4)
# 4. the suite's GPU scale: Qwen2.5-VL-7B shapes (an image; a 32-frame clip at batch 1 and 8),
#    then LLaVA-1.5-7B shapes (benchmarks/suite.py --scale gpu)
set -u
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.}
status=0

step() {   # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, keep going on failure
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
  [ $rc -eq 0 ] || status=1
}

step env 60 bash -c 'nvidia-smi; python -c "import torch, transformers, triton; print(torch.__version__, torch.version.cuda, transformers.__version__, triton.__version__, torch.cuda.get_device_name())"'
step kernels 120 python benchmarks/gpu_kernels.py --json "$OUT/kernels.json"
step cuda_paths 120 python -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_path.py
step suite_qwen 240 python benchmarks/suite.py --scale gpu --models "qwen2.5-vl-7b,qwen2.5-vl-7b-video (32 frames)" --json "$OUT/suite_qwen.json"
step suite_llava 150 python benchmarks/suite.py --scale gpu --models llava-1.5-7b --json "$OUT/suite_llava.json"
exit $status
