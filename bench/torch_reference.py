"""PyTorch reference for `harness bench`: the same training steps with transformers + peft, SDPA,
fused AdamW, bf16, SmolLM2-135M shape (random init), seq 512.

Same work as the candle side: one forward over (B, 512) tokens, the LM head only on the scored rows
(ddm: masked response positions, read one position back with shift; AR: response positions),
CE in f32, weights 1/t (ddm, normalised by masked tokens) or 1 (AR, by response tokens), backward,
AdamW step. The ddm model runs full attention; `future_token_changes_pos0` checks it (changing the
last token must change position 0's output), and the run refuses to report a ddm number otherwise.

Usage: python bench/torch_reference.py [--quick] > torch.jsonl   (one JSON line per configuration)
"""
import json, sys, time
import torch, torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

QUICK = "--quick" in sys.argv
SEQ = 64 if QUICK else 512
BATCHES = [2] if QUICK else [16, 64]
STEPS, WARMUP = (2, 1) if QUICK else (10, 3)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float32


def build(full_attention, rank):
    if QUICK:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="sdpa")
    else:
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                          rms_norm_eps=1e-5, attn_implementation="sdpa")
    m = LlamaForCausalLM(cfg).to(DEV, DT)
    if rank:
        from peft import LoraConfig, get_peft_model
        m = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for mod in m.modules():
        if hasattr(mod, "is_causal"):
            mod.is_causal = not full_attention
    return m, cfg


def body(m):
    base = m.get_base_model() if hasattr(m, "get_base_model") else m
    return base.model, base.lm_head


@torch.no_grad()
def future_check(m, vocab):
    inner, head = body(m)
    x = torch.randint(3, vocab, (1, 32), device=DEV)
    y = x.clone(); y[0, -1] = (y[0, -1] + 1) % vocab
    a = inner(input_ids=x).last_hidden_state[0, 0].float(); b = inner(input_ids=y).last_hidden_state[0, 0].float()
    return bool((a - b).abs().max().item() > 0)


def step(m, opt, x, objective, vocab):
    inner, head = body(m)
    b, l = x.shape
    resp = torch.zeros(b, l, dtype=torch.bool, device=DEV); resp[:, l // 2:] = True
    if objective == "ddm":
        t = 1e-3 + (1 - 1e-3) * torch.rand(b, 1, device=DEV)
        masked = (torch.rand(b, l, device=DEV) < t) & resp
        h = inner(input_ids=torch.where(masked, torch.zeros_like(x), x)).last_hidden_state
        rows = masked[:, 1:].nonzero(as_tuple=True)           # target positions p = i + 1
        hs = h[:, :-1][rows]                                   # (N, D): outputs at p - 1
        ce = F.cross_entropy(head(hs).float(), x[:, 1:][rows], reduction="none")
        w = (1.0 / t).expand(b, l - 1)[rows]
        loss = (ce * w).sum() / max(ce.numel(), 1)
    else:
        h = inner(input_ids=x).last_hidden_state
        rows = resp[:, 1:].nonzero(as_tuple=True)
        ce = F.cross_entropy(head(h[:, :-1][rows]).float(), x[:, 1:][rows], reduction="none")
        loss = ce.mean()
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss


def bench(objective, rank, batch):
    torch.manual_seed(0)
    m, cfg = build(objective == "ddm", rank)
    ok = future_check(m, cfg.vocab_size)
    if ok != (objective == "ddm"):
        raise SystemExit(f"attention is not what the objective needs: future_token_changes_pos0={ok} for {objective}")
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=(DEV == "cuda"))
    x = torch.randint(3, cfg.vocab_size, (batch, SEQ), device=DEV)
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(WARMUP):
        step(m, opt, x, objective, cfg.vocab_size)
    if DEV == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        loss = step(m, opt, x, objective, cfg.vocab_size)
    if DEV == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / STEPS
    print(json.dumps(dict(impl="torch", objective=objective, lora_rank=rank, batch=batch, seq=SEQ, ms_per_step=dt * 1e3,
                          tokens_per_s=batch * SEQ / dt,
                          peak_mem_gib=(torch.cuda.max_memory_allocated() / 2**30) if DEV == "cuda" else 0.0,
                          future_token_changes_pos0=ok, trainable_params=sum(p.numel() for p in params), loss=loss.item())), flush=True)
    del m, opt
    if DEV == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    import transformers, peft
    print(json.dumps(dict(impl="torch-env", torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                          device=torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu")), flush=True)
    for objective in ["ddm", "ar"]:
        for rank in [16, 0]:
            for batch in BATCHES:
                try:
                    bench(objective, rank, batch)
                except torch.cuda.OutOfMemoryError as e:
                    print(json.dumps(dict(impl="torch", objective=objective, lora_rank=rank, batch=batch, seq=SEQ, error="out of memory")), flush=True)
                    torch.cuda.empty_cache()
