#!/usr/bin/env bash
# The data-parallel check of issue 19 on a machine with ≥ 2 GPUs (one NVIDIA host), with a binary
# built by `make cuda NCCL=1`:
#   bash scripts/dp-check.sh BIN OUT [NPROC]
# 1. one process, micro-batch 16; 2. NPROC processes (default 2), micro-batch 16/NPROC each, the
# same config, seed and data (configs/tiny-random.toml with the autoregressive objective, which
# draws no masks, so the two runs see the same numbers), 20 steps, bf16;
# 3. compares them: every step's loss within 2e-2 relative (bf16 sums in another order), every
#    rank's ranks.json says same_on_every_rank, and all ranks' checksums are equal.
# Writes OUT/dp-check.json; exits 1 on a mismatch.
set -euo pipefail
BIN=${1:?binary}; OUT=${2:?out folder}; N=${3:-2}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
common=(--config configs/tiny-random.toml --set 'objective={kind="autoregressive"}' --set train.max_steps=20
        --set train.grad_accum=1 --set eval.at_end=false --set train.progress=false --set model.device='"auto"')
"$BIN" train "${common[@]}" --set train.micro_batch=16 --out "$OUT/one" > "$OUT/one.log" 2>&1
"$BIN" train --nproc "$N" "${common[@]}" --set train.micro_batch=$((16 / N)) --out "$OUT/dp" > "$OUT/dp.log" 2>&1
python3 - "$OUT" "$N" <<'PY'
import csv, glob, json, os, sys
out, n = sys.argv[1], int(sys.argv[2])
one = [float(r["loss"]) for r in csv.DictReader(open(f"{out}/one/metrics.csv"))]
dp = [float(r["loss"]) for r in csv.DictReader(open(f"{out}/dp/metrics.csv"))]
worst = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(one, dp))
ranks = [json.load(open(p)) for p in [f"{out}/dp/ranks.json"] + sorted(glob.glob(f"{out}/dp/ranks/rank-*/ranks.json"))]
sums = {r["param_checksum"] for r in ranks}
res = {"nproc": n, "steps": len(one), "loss_max_rel_diff": worst, "ranks": len(ranks),
       "same_on_every_rank": all(r["same_on_every_rank"] for r in ranks), "distinct_checksums": len(sums)}
res["ok"] = len(one) == len(dp) == 20 and worst <= 2e-2 and len(ranks) == n and res["same_on_every_rank"] and len(sums) == 1
json.dump(res, open(f"{out}/dp-check.json", "w"), indent=1)
print(json.dumps(res))
sys.exit(0 if res["ok"] else 1)
PY
