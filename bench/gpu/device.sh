#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root, after the kit is installed in ~/site:
#   bash bench/gpu/device.sh STAGE...   stages: smoke tests (= tests_a tests_b, one call each: tests/gpu takes
#                                       ~10 min on one H100) trainer rollout sync sync2 grpo scaling capacity
#                                       (CAPACITY=model:mode,... picks capacity.py's configurations)
#                                       vs_trl1 vs_trl2 (vs_trl1_05 / vs_trl1_15 ...: one model)
# Logs go to $OUT (what the device tool brings back) and to stdout.
set -u
export PYTHONPATH=~/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 \
  RAY_DEDUP_LOGS=0 VLLM_LOGGING_LEVEL=WARNING
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
run() {  # name seconds command...
  local name=$1 secs=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout -s KILL "$secs" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  grep -v "^\s*$" "$OUT/$name.log" | grep -E "^\||^#|target|median|backend|model |tokens/s|FAILED|Error|error|passed|failed|skipped|gap|first push|comparison|rlp|TRL|^[a-z]+: " | tail -40
  echo "=== $name rc=$rc"
}
for stage in "$@"; do
  case $stage in
    smoke) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import vllm, ray, deepspeed, torch; print(vllm.__version__, ray.__version__, deepspeed.__version__, torch.__version__)";;
    tests) run tests 560 python3 -m pytest -q -s -x tests/gpu -p no:cacheprovider --timeout 400;;
    tests_a) run tests_a 420 python3 -m pytest -q -s -x tests/gpu -p no:cacheprovider --timeout 400 -rA \
               -k "not lora and not replaced and not automatic";;
    tests_b) run tests_b 420 python3 -m pytest -q -s -x tests/gpu -p no:cacheprovider --timeout 400 -rA \
               -k "lora or replaced or automatic";;
    trainer) run trainer 300 python3 bench/gpu/trainer.py;;
    rollout) run rollout 240 python3 bench/gpu/rollout.py;;
    sync) run sync 240 python3 bench/gpu/weight_sync.py --layout colocated;;
    sync2) run sync2 240 python3 bench/gpu/weight_sync.py --layout separated;;
    grpo) run grpo 300 python3 bench/gpu/grpo_step.py;;
    scaling) run scaling 1200 python3 bench/gpu/scaling.py;;  # 7 configurations, ~2 min each; needs 4 GPUs
    capacity) run capacity 560 python3 bench/gpu/capacity.py --configs "${CAPACITY:-1.5b:static,1.5b:hybrid}";;
    vs_trl1) run vs_trl1 560 python3 bench/gpu/vs_trl.py --gpus 1;;
    vs_trl2) run vs_trl2 560 python3 bench/gpu/vs_trl.py --gpus 2;;
    vs_trl1_05|vs_trl1_15|vs_trl2_05|vs_trl2_15)
      g=${stage:6:1}; m=${stage:8:1}.${stage:9:1}b
      run "$stage" 400 python3 bench/gpu/vs_trl.py --gpus "$g" --models "$m"
      for f in /tmp/rlp-vs-trl/log-*; do echo "== $f"; grep -v "^\s*$" "$f" | tail -25; done > "$OUT/$stage-children.log";;
    *) echo "unknown stage $stage";;
  esac
done
