#!/usr/bin/env bash
# Profile every method on one CUDA GPU at the base and paper presets (a few minutes on an
# H100): measured peak allocated / reserved memory, step time, FLOPs, the largest batch in
# 24 GiB, and a batch-size sweep at base. Reports land in OUT (default results/profile-gpu).
# A point that fails (OOM) is recorded with its status; the script goes on and exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/profile-gpu}
METHODS=frozen,lora,lavish,mettle,full
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available')" || exit 2
status=0
for preset in base paper; do
    python -m bench profile --methods "$METHODS" --preset "$preset" --batch-size 1 --segments 10 \
        --device cuda --warmup 2 --repeats 5 --budget 24GiB --out "$OUT/$preset" || status=1
done
python -m bench profile --methods "$METHODS" --preset base --segments 10 --device cuda \
    --warmup 2 --repeats 5 --sweep batch-size=1,2,4,8 --out "$OUT/base-batch" || status=1
echo "reports: $OUT/{base,paper,base-batch}/profile.md"
exit $status
