"""Check a folder written by `harness export` with transformers: its logits for the probe ids equal
the harness's (the `export_check.safetensors` the folder carries) within a tolerance, under causal
attention (transformers' default) and under full attention (a 4-D all-zero additive mask, how a
ddm-sft model is read). A folder with `adapter_config.json` is loaded as base + peft adapter.

    python tests/scripts/check_export.py DIR [--tol 1e-4] [--modeling MODELING_DIR]

A LLaDA or Dream export (`model_type` llada / Dream) is read with that family's published
modeling code: the folder's own `*.py` (copied by the export from a base checkpoint that had them)
or MODELING_DIR (see reference_models.py), with each family's way of asking for causal and full
attention. Needs torch, transformers and (for an adapter folder) peft; exits 1 on a mismatch.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import reference_models  # noqa: E402


def load_model(d, modeling):
    """The exported model in f32, by its family's reference implementation."""
    mt = json.load(open(os.path.join(d, "config.json"))).get("model_type")
    if mt not in ("llada", "Dream"):
        return mt, AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    folder = d if any(f.endswith(".py") for f in os.listdir(d)) else modeling
    if folder is None:
        sys.exit(f"{d}: a {mt} export needs its modeling code: pass --modeling DIR")
    if mt == "llada":
        conf, mod = reference_models.llada(folder)
        cfg = conf.LLaDAConfig.from_pretrained(d)
        return mt, reference_models.llada_model(mod, cfg, load_file(os.path.join(d, "model.safetensors")))
    conf, mod = reference_models.dream(folder)
    m = mod.DreamModel(conf.DreamConfig.from_pretrained(d))
    state = load_file(os.path.join(d, "model.safetensors"))
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    m.load_state_dict(state, strict=True)
    return mt, m.eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--modeling", help="folder with the LLaDA or Dream modeling code (reference_models.py)")
    a = ap.parse_args()
    check = load_file(os.path.join(a.dir, "export_check.safetensors"))
    model_type, model = load_model(a.dir, a.modeling)
    adapter = os.path.join(a.dir, "adapter")
    if os.path.exists(os.path.join(adapter, "adapter_config.json")):
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict

        if model_type in ("llada", "Dream"):
            # no generation hooks in their modeling code: a plain PeftModel (no task type)
            cfg = LoraConfig.from_pretrained(adapter)
            cfg.task_type = None
            model = PeftModel(model, cfg)
            res = set_peft_model_state_dict(model, load_file(os.path.join(adapter, "adapter_model.safetensors")))
            if res.unexpected_keys:
                sys.exit(f"{adapter}: adapter weights peft did not place: {res.unexpected_keys[:4]}")
        else:
            model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    ids = check["ids"].to(torch.long)  # (1, L)
    L = ids.shape[1]
    worst = 0.0
    with torch.no_grad():
        causal = model(input_ids=ids, **reference_models.attention_kwargs(model_type, L, causal=True)).logits
        full = model(input_ids=ids, **reference_models.attention_kwargs(model_type, L, causal=False)).logits
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
