#!/usr/bin/env bash
# The BLOOM-study suite on one CUDA GPU: a 1.1 B-parameter synthetic Llama in bfloat16 under every
# backend and variant one GPU allows (hf, accelerate, ds-inference tp 1 with and without kernel
# injection, ds-zero with 1 rank, hf-tp with 1 rank), then the engines suite on the GPU: vLLM (tensor
# parallel over the leased GPUs), llama.cpp with its layers on the GPU, bitsandbytes int8/NF4 and
# DeepSpeed-Inference int8 kernels; an engine whose package is not installed here (vllm, a CUDA build
# of xllamacpp, bitsandbytes) is skipped with the reason. Then a table of what was measured.
#
#   scripts/gpu_check.sh [extra pytest arguments]
#
# Missing packages are installed from wheels in .whl/ when that folder exists (a machine without
# network: download them elsewhere with `pip download --no-deps`), else from the package index.
# Nothing is downloaded at run time: the model is built from its config with random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
    exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    site=${LLMPERF_SITE:-/tmp/llmperf-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif ! "$PY" -c "import pytest_llmperf, deepspeed, sqlite_utils" 2>/dev/null; then
    "$PY" -m pip install -q -e .
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" - <<'PY'
import importlib
names = ["torch", "transformers", "accelerate", "deepspeed", "sqlite_utils", "filelock", "rich", "tqdm",
         "psutil", "pynvml", "pytest", "numpy"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing (put their wheels in .whl/)" >&2
    exit 2
fi

# the plugin loads through its pytest11 entry point when installed; from a plain checkout, by name
plugin=()
"$PY" -c "from importlib.metadata import entry_points as e; assert any(p.value.startswith('pytest_llmperf') for p in e(group='pytest11'))" 2>/dev/null \
    || plugin=(-p pytest_llmperf.plugin)

db=${LLMPERF_GPU_DB:-.llmperf/gpu-check.db}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/llmperf-torch-extensions}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
start=$(date +%s)
set +e
"$PY" -m pytest "${plugin[@]}" --llmperf suites/ -q -rs -p no:cacheprovider \
    --llmperf-db="$db" --llmperf-models=synthetic:llama-1b --llmperf-dtype=bfloat16 --llmperf-device=cuda \
    --llmperf-world-sizes=1 --llmperf-batch-sizes=1,8,32 --llmperf-new-tokens=100 --llmperf-trials=3 \
    --llmperf-warmups=1 --llmperf-rank-timeout=240 \
    -k "not disk-offload and not cpu-offload" "$@"
status=$?
echo "gpu_check: suite finished in $(( $(date +%s) - start )) s with exit status $status"
start=$(date +%s)
"$PY" -m pytest "${plugin[@]}" --llmperf suites/test_engines.py -q -rs -p no:cacheprovider \
    --llmperf-db="$db" --llmperf-device=cuda --llmperf-rank-timeout=240 "$@"
engines=$?
set -e
echo "gpu_check: engines finished in $(( $(date +%s) - start )) s with exit status $engines"
[ "$status" -ne 0 ] || status=$engines
"$PY" -m pytest_llmperf.cli history --db "$db" --last 200 --metric tokens_per_s
"$PY" -m pytest_llmperf.cli history --db "$db" --last 200 --metric load_s
"$PY" -m pytest_llmperf.cli history --db "$db" --last 200 --metric ttft_ms
"$PY" -m pytest_llmperf.cli history --db "$db" --last 200 --metric token_agreement
"$PY" -m pytest_llmperf.cli history --db "$db" --last 200 --metric p99_ttft_ms
exit $status
