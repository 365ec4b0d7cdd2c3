#!/usr/bin/env bash
# Every GPU-only check at world size 1, in one call, in under 8 minutes on one GPU (tests/gpu/README.md):
#   1. versions, nvidia-smi, the node's own GPU facts
#   2. every method on CUDA + QLoRA under ZeRO-3 + LoRA under FSDP2 + LoRA and full under FSDP2 with CPU offload,
#      then LoRA and QLoRA merges (gpu_methods.py); LoRA on an 8-bit base (quant_type int8: CUDA's LLM.int8
#      kernels, which the CPU tests do not reach) and its merge into the dequantized weights
#   3. FSDP2 logits: a wrapped LoRA / QLoRA model against the unwrapped one (fsdp_logits.py, bitsandbytes#1945)
#   4. the benchmark, short form: finetune vs the TRL tutorial and a tuned TRL, length mix and uniform rows,
#      with the planner's prediction against torch.cuda.max_memory_allocated() (bench_gpu.py)
#   5. GRPO on the tiny model through the CLI, rollouts vLLM colocated where vllm imports (else auto, which must
#      say why it generates with transformers): the rollout line and the reward curve
# Results go to $RESULTS (default tests/bench/results, or $OUT on the device machine) as <check>-<gpu>.txt.
# Usage there: bash tests/gpu/verify.sh      (with .whl carried: bash tests/gpu/wheels.sh here first)
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/* >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  # DeepSpeed's sdist, its ops left to JIT compilation where used (nvcc is on the image)
  ls .whl/deepspeed-*.tar.gz >/dev/null 2>&1 && PYTHONPATH=/tmp/site DS_BUILD_OPS=0 $PY -m pip install -q --no-index --no-deps \
      --no-build-isolation --no-cache-dir --target /tmp/site .whl/deepspeed-*.tar.gz
  export PYTHONPATH=/tmp/site:$ROOT
else
  export PYTHONPATH=$ROOT
fi
export FINETUNE_HOME=$(mktemp -d) FINETUNE_CACHE=$(mktemp -d)
RESULTS=${RESULTS:-${OUT:-$ROOT/tests/bench/results}}
mkdir -p "$RESULTS"
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo unknown)
STAMP=$(date +%F)
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $RESULTS/NAME-$GPU.txt, keep going on failure
  local name=$1 limit=$2; shift 2
  local log="$RESULTS/$name-$GPU.txt"
  echo "# $name on $GPU, $STAMP: $*" > "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log" | grep -v "^\[finetune\] step\|Warning\|warn(" | tail -40
  local rc=${PIPESTATUS[0]}
  echo "# exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" = 0 ] || status=1
}

step facts 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY - <<'PY'
import importlib.metadata as md
from launch.gpu import read_cuda_facts, attention_choice, flash_attn_installed
facts = read_cuda_facts(); print(facts)
print(attention_choice('auto', cuda=facts.available, capability=facts.capability, flash_attn_installed=flash_attn_installed()))
for n in ('torch', 'transformers', 'peft', 'trl', 'accelerate', 'bitsandbytes', 'deepspeed', 'liger-kernel', 'flash-attn'):
    try: print(n, md.version(n))
    except md.PackageNotFoundError: print(n, 'not installed')
PY"
step gpu_methods 180 $PY tests/bench/gpu_methods.py --parallel 10
step fsdp_logits 90 $PY tests/gpu/fsdp_logits.py --device cuda --out "$RESULTS/fsdp_logits-$GPU.json"
step bench_gpu 300 $PY tests/bench/bench_gpu.py --steps 14 --rows mix:2,uniform:1 --out "$RESULTS/bench_gpu-$GPU-table.txt"
ROLLOUTS=$($PY -c "import vllm" >/dev/null 2>&1 && echo vllm_colocate || echo auto)
step grpo_rollouts 240 $PY -m sdk.cli launch tiny --local --set output=$FINETUNE_HOME/runs --set train.max_steps=6 \
    --set train.logging_steps=1 --set train.batch_size=8 --set eval.num_samples=4 --set \
    "objective={name: grpo, rewards: [exact_match, {type: token_f1, weight: 0.5}], num_generations: 4, max_completion_length: 8, rollouts: $ROLLOUTS}"
echo "verify: $([ $status = 0 ] && echo 'every check passed' || echo 'some checks FAILED'); results in $RESULTS"
exit $status
