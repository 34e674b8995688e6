#!/usr/bin/env bash
# Profile the methods on one CUDA GPU in a few minutes (an H100 run of the ViT-era towers: results/archive/vit-towers/profile-gpu/):
# every method at the paper and base presets (batch 1, T = 10: measured peak allocated /
# reserved memory, step time, FLOPs; at paper also against DG-SCT, as in the Mettle paper's
# Fig. 1c), the largest batch that fits in 24 GiB for Mettle and LAVisH at the paper preset
# (real steps until OOM, bisected), and a batch-size sweep of the two at base. Reports land in
# OUT (default results/profile-gpu), one folder per command. A point that fails (OOM) is
# recorded with its status; the script goes on and exits 1.
# PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/profile-gpu}
PY=${PYTHON:-python}
ALL=frozen,lora,lavish,dgsct,mettle,full
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available')" || exit 2
status=0
profile() {  # profile NAME ARGS...: one `bench profile` into OUT/NAME
    local name=$1
    shift
    echo "== $name: bench profile $*"
    "$PY" -m bench profile --device cuda --warmup 3 --repeats 10 --out "$OUT/$name" "$@" || status=1
}
profile paper --methods "$ALL" --preset paper --batch-size 1 --segments 10 --reference dgsct
profile base --methods "$ALL" --preset base --batch-size 1 --segments 10
profile paper-budget --methods mettle,lavish --preset paper --batch-size 1 --segments 10 --budget 24GiB
profile base-batch --methods mettle,lavish --preset base --segments 10 --sweep batch-size=1,2,4,8
echo "reports: $OUT/{paper,base,paper-budget,base-batch}/profile.md"
exit $status
