"""The reference implementations of the families transformers does not ship (LLaDA, Dream), read
from their published modeling code in a folder the caller names (the project does not carry it):
`configuration_llada.py` + `modeling_llada.py`, or `configuration_dream.py` + `modeling_dream.py` +
`generation_utils.py`, as in the GSAI-ML/LLaDA-8B-Instruct and Dream-org/Dream-v0-Instruct-7B hub
repos or dllm's `dllm/pipelines/{llada,dream}/models/`. Used by make_family_fixtures.py and
check_export.py.
"""
import importlib.util
import os
import sys

import torch


def _package(name, folder, modules):
    """Import `modules` of `folder` as submodules of package `name` (they import each other relatively)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    sys.modules[name] = importlib.util.module_from_spec(spec)
    out = {}
    for module in modules:
        s = importlib.util.spec_from_file_location(f"{name}.{module}", os.path.join(folder, f"{module}.py"))
        m = importlib.util.module_from_spec(s)
        sys.modules[f"{name}.{module}"] = m
        s.loader.exec_module(m)
        out[module] = m
    return out


def llada(folder):
    """(configuration module, modeling module) of LLaDA."""
    m = _package("llada_ref", folder, ["configuration_llada", "modeling_llada"])
    return m["configuration_llada"], m["modeling_llada"]


def dream(folder):
    """(configuration module, modeling module) of Dream."""
    m = _package("dream_ref", folder, ["configuration_dream", "generation_utils", "modeling_dream"])
    return m["configuration_dream"], m["modeling_dream"]


def llada_model(mod, cfg, state=None):
    """A LLaDAModelLM of `cfg` on the CPU (its constructor would place it on CUDA), with `state`
    loaded strictly when given, else its own initialisation."""
    mc = mod.create_model_config_from_pretrained_config(cfg)
    mc.init_device = "cpu"
    m = mod.LLaDAModelLM(cfg, model=mod.LLaDAModel(mc, init_params=state is None))
    if state is not None:
        m.load_state_dict(state, strict=True)
    return m.eval()


def attention_kwargs(model_type, L, causal):
    """Forward arguments for causal or full attention over L positions, per family."""
    if model_type == "llada":
        # LLaDA ignores causality unless given an additive bias
        return {"attention_bias": torch.triu(torch.full((1, 1, L, L), torch.finfo(torch.float32).min), diagonal=1)} if causal else {}
    if model_type == "Dream":
        # Dream reads a 4-D boolean mask (True: may attend)
        return {"attention_mask": torch.tril(torch.ones(1, 1, L, L, dtype=torch.bool))} if causal else {}
    # transformers' LLaMA / Qwen: causal by default, a 4-D all-zero additive mask for full
    return {} if causal else {"attention_mask": torch.zeros(1, 1, L, L)}
