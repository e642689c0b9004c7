"""Check a folder written by `harness export` with transformers: its logits for the probe ids equal
the harness's (the `export_check.safetensors` the folder carries) within a tolerance, under causal
attention (transformers' default) and under full attention (a 4-D all-zero additive mask, how a
ddm-sft model is read). A folder with `adapter_config.json` is loaded as base + peft adapter.

    python tests/scripts/check_export.py DIR [--tol 1e-4]

Needs torch, transformers and (for an adapter folder) peft; exits 1 on a mismatch.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    check = load_file(os.path.join(a.dir, "export_check.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(a.dir, torch_dtype=torch.float32)
    adapter = os.path.join(a.dir, "adapter")
    if os.path.exists(os.path.join(adapter, "adapter_config.json")):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    ids = check["ids"].to(torch.long)  # (1, L)
    L = ids.shape[1]
    worst = 0.0
    with torch.no_grad():
        causal = model(input_ids=ids).logits
        full = model(input_ids=ids, attention_mask=torch.zeros(1, 1, L, L, dtype=torch.float32)).logits
    report = {}
    for name, got in [("causal", causal), ("full", full)]:
        want = check[f"logits_{name}"]
        d = (got - want).abs().max().item()
        report[name] = d
        worst = max(worst, d)
    facts = json.load(open(os.path.join(a.dir, "ddm_sft.json")))
    print(json.dumps({"dir": a.dir, "objective": facts.get("objective"), "max_abs_diff": report, "tol": a.tol,
                      "torch": torch.__version__, "transformers": __import__("transformers").__version__}))
    return 0 if worst <= a.tol else 1


if __name__ == "__main__":
    sys.exit(main())
