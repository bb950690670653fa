#!/usr/bin/env bash
# The GPU checks of issue 18 in one run, for a lent GPU machine that has PyTorch but no
# network. Prepared here (see benchmarks/gpu/README.md): .whl/ (the wheels of the packages
# that machine lacks) and .gpucarry/ (the default sample's prepared arrays, made by
# `python benchmarks/gpu/stage_check.py --pack .gpucarry`). On the GPU machine, from the
# repository root, with OUT set to the folder the results go to:
#
#     bash benchmarks/gpu/run_device.sh [PART ...]  # stage train inference (default), compile
#
# Each part has its own time limit (train: what is left but 95 s) and writes its results
# as it goes, so a part cut short leaves the others intact; a part is skipped when less
# than its limit is left of BUDGET seconds (default 460). Results: OUT/run.log,
# OUT/stage_check.{json,log,safetensors,model.json}, OUT/train_cuda.json,
# OUT/inference_cuda.json, OUT/stage_compile.json.
set -u -o pipefail
: "${OUT:?set OUT to the results folder}"
BUDGET=${BUDGET:-460}
MODELS=${MODELS:-"efficientnet_b0 tf_efficientnet_lite0"}
START=$(date +%s)
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/run.log") 2>&1

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(elapsed) s] $*"; }
part() {  # part NAME LIMIT COMMAND...
    local name=$1 limit=$2
    shift 2
    if (( $(elapsed) + limit > BUDGET )); then
        say "skip $name: needs up to $limit s, $(( BUDGET - $(elapsed) )) s left"
        return
    fi
    say "start $name (limit $limit s): $*"
    timeout "$limit" "$@"
    say "end $name: exit $?"
}

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
say "wheels installed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
    --format=csv
nproc
python3 - <<'EOF'
import albumentations, dvclive, onnxruntime, pydantic, timm, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version(), "timm", timm.__version__, "albumentations",
      albumentations.__version__, "pydantic", pydantic.__version__, "onnxruntime",
      onnxruntime.__version__, onnxruntime.get_available_providers())
print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
EOF

for name in ${*:-stage train inference}; do
    case $name in
        stage)
            part stage 120 python3 benchmarks/gpu/stage_check.py --inputs .gpucarry \
                --out "$OUT" --name stage_check ;;
        train)
            # shellcheck disable=SC2086
            # what is left, less 95 s for the inference part
            part train $(( BUDGET - $(elapsed) - 95 )) python3 benchmarks/train_benchmark.py \
                --device cuda --model $MODELS --size 224 --batch-size 256 --images 8192 \
                --out "$OUT/train_cuda.json" ;;
        inference)
            # shellcheck disable=SC2086
            part inference 90 python3 benchmarks/inference_benchmark.py --device cuda \
                --model $MODELS --size 224 --batch-size 256 \
                --out "$OUT/inference_cuda.json" ;;
        compile)
            # The train stage once more with torch.compile and loader processes: the frozen
            # and the full stage each compile their own graph.
            part compile 110 python3 benchmarks/gpu/stage_check.py --inputs .gpucarry \
                --out /tmp/stage_compile --name stage_compile --compile --workers 4 \
                --epochs 3 --no-nccl --work /tmp/medimg_stage_compile
            cp /tmp/stage_compile/stage_compile.json "$OUT/" 2>/dev/null ;;
        *) say "unknown part $name" ;;
    esac
done
say "done"
