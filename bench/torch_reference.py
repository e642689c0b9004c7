"""PyTorch references for `harness bench`: the same training steps as the candle side, in two ways,
one JSON line per (impl, objective, LoRA rank, batch, seq):

* impl "torch": HF transformers `LlamaForCausalLM` + peft LoRA, SDPA, eager (what most users run);
* impl "torch-compile": a compact hand-written LLaMA (embedding, RMSNorm, rotate-half RoPE with the
  shape's theta, GQA attention through `F.scaled_dot_product_attention`, SwiGLU MLP, LM head (tied, or
  its own matrix for llama2-7b) applied to the scored rows only) with its own LoRA, each decoder block
  compiled with `torch.compile` (as torchtitan does: all blocks share one compiled graph, so compile
  time is paid once per shape) and the final norm + head + cross-entropy compiled as one more graph.
  What a performance-minded user runs.

Both: the SmolLM2-135M shape unless --arch names another (random init, drawn on the device in the
training dtype: throughput does not depend on the weights), **bf16 parameters
with fused AdamW** (the stronger bar: candle keeps f32 master copies of the trainable parameters and
updates those), LoRA rank r with alpha 2r on q, k, v, o, gate, up, down with the base frozen (A kaiming
uniform, B zero), or full fine-tuning (rank 0: every parameter trains, the tied embedding included).

The work of one step, as on the candle side: the response is the second half of each sequence.
ddm: t ~ U[1e-3, 1] per sequence, each response token masked (replaced by token 0) with probability t,
one forward pass with full attention (SDPA is_causal=False), shift (the output at p-1 predicts the token
at p), the head and an f32 cross-entropy on the masked rows only, weighted 1/t and normalised by the
number of masked tokens. ar: causal attention (is_causal=True), next-token cross-entropy on the response
rows. Then backward and one AdamW step. A ddm row is only reported when changing the last token changes
position 0's output (`future_token_changes_pos0`, checked on the model that was timed, compiled or not)
and an ar row only when it does not; otherwise the row is an error row.

--arch smollm2-1.7b | llama2-7b (the shapes of `harness bench --arch`; SmolLM2-1.7B: 24 layers, width
2048, 32 heads, tied; LLaMA-2-7B: 32 layers, width 4096, 32 heads, FFN 11008, vocab 32000, untied head,
theta 1e4): instead of the grid, a largest-batch search per impl at ddm, LoRA 16, seq 1024: batch 1,
2, 4, ... up to --max-batch (default 64) until a row fails (out of memory: the model and optimizer are
dropped, the CUDA cache emptied, and that impl's search stops), 2 warm-up and 3 timed steps by
default. --grid still runs exactly the rows it lists. --quick keeps the tiny shape (seq 32, batch at
most 4 in the search).

Fields: impl, arch, objective, lora_rank, batch, seq, ms_per_step, tokens_per_s (batch × seq / s),
peak_mem_gib (torch.cuda.max_memory_allocated; torch-compile: over the timed steps, torch: from the
first warm-up step on), compile_s (torch-compile: wall seconds of the warm-up steps, which compile;
torch: warmup_s), compiled_graphs (torch-compile: graphs dynamo built: one per decoder block shape and
autograd need, so 2 with LoRA, where block 0's input needs no gradient, and 1 for full fine-tuning, plus
the head), trainable_params, loss (last step), future_token_changes_pos0, mfu, device, steps.

MFU = 3 × forward matmul FLOPs per token × tokens/s / peak (989e12 dense bf16 on H100/H200), where
forward matmul FLOPs per token = 2 × (matmul parameters of the 30 layers + vocab × hidden for the head)
+ 2 × 2 × layers × seq × hidden (attention scores and their product with V), the same convention as
candle's `LlamaConfig::forward_flops_per_token`. The head is counted for every token for simplicity
(it only runs on the scored rows), and LoRA's own matmuls are not counted.

Errors (out of memory, a compile failure, a failed attention check) become one error row each; the
script goes on with the next configuration. Progress goes to stderr.

Usage:
  python bench/torch_reference.py [--quick] [--only eager|compile] [--steps N] [--warmup N]
                                  [--grid '[["ddm",16,64,512],["ar",0,16,512]]'] [--arch NAME]
                                  [--max-batch N] > torch.jsonl
  The grid is a JSON list of [objective, rank, batch, seq]; env GRID does the same, ONLY the same as
  --only (bench/run.sh passes its ARCH and MAX_BATCH as --arch and --max-batch). Default grid: ddm and ar × rank 16 and 0 × batch 16, 64 × seq 512, plus ddm × rank 16 and 0
  × batch 16, 64 × seq 160 (the study shape). --quick: a tiny model on CPU, seq 64, batch 2.
"""
import argparse, contextlib, gc, json, math, os, sys, time, traceback
import torch, torch.nn as nn, torch.nn.functional as F

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMOLLM2 = dict(vocab=49152, hidden=576, inter=1536, layers=30, heads=9, kv_heads=3, theta=1e5, eps=1e-5, tied=True, max_pos=8192)
TINY = dict(SMOLLM2, vocab=512, hidden=64, inter=128, layers=2, heads=4, kv_heads=2)
# the shapes of `harness bench --arch` (harness/src/bench.rs ARCHS); "big": measured by the
# largest-batch search at ddm, LoRA BIG_RANK, seq BIG_SEQ
ARCHS = {
    "smollm2-135m": dict(SMOLLM2, big=False),
    "smollm2-1.7b": dict(vocab=49152, hidden=2048, inter=8192, layers=24, heads=32, kv_heads=32, theta=1.3e5, eps=1e-5, tied=True,
                         max_pos=8192, big=True),
    "llama2-7b": dict(vocab=32000, hidden=4096, inter=11008, layers=32, heads=32, kv_heads=32, theta=1e4, eps=1e-5, tied=False,
                      max_pos=4096, big=True),
}
QUICK_ARCH = "tiny"
BIG_RANK, BIG_SEQ, BIG_WARMUP, BIG_STEPS = 16, 1024, 2, 3


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def peak_flops():
    if DEV != "cuda":
        return None
    n = torch.cuda.get_device_name(0).upper()
    return 989e12 if ("H100" in n or "H200" in n) else 312e12 if "A100" in n else None


def forward_flops_per_token(a, seq):
    d, f, kv = a["hidden"], a["inter"], a["kv_heads"] * (a["hidden"] // a["heads"])
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f  # q, o; k, v; gate, up, down
    return 2 * (a["layers"] * per_layer + a["vocab"] * d) + 2 * 2 * a["layers"] * seq * d


def batch_ladder(max_batch):
    """Batch sizes of the largest-batch search: 1, 2, 4, ... while at most max_batch."""
    out, b = [], 1
    while b <= max_batch:
        out.append(b); b *= 2
    return out


@contextlib.contextmanager
def on_device():
    """Build modules directly on DEV in DT (no host copy, no f32 detour: a 7B model builds in seconds)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        with torch.device(DEV):
            yield
    finally:
        torch.set_default_dtype(prev)


def default_grid(quick):
    if quick:
        return [[o, r, 2, 64] for o in ["ddm", "ar"] for r in [16, 0]]
    g = [[o, r, b, 512] for o in ["ddm", "ar"] for r in [16, 0] for b in [16, 64]]
    return g + [["ddm", r, b, 160] for r in [16, 0] for b in [16, 64]]


# ---------------------------------------------------------------------------------------------
# impl "torch": HF transformers + peft, eager


def hf_build(a, full_attention, rank):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=a["vocab"], hidden_size=a["hidden"], intermediate_size=a["inter"], num_hidden_layers=a["layers"],
                      num_attention_heads=a["heads"], num_key_value_heads=a["kv_heads"], rope_theta=a["theta"], max_position_embeddings=a["max_pos"],
                      tie_word_embeddings=a["tied"], rms_norm_eps=a["eps"], attn_implementation="sdpa")
    with on_device():
        m = LlamaForCausalLM(cfg)
    hf_check_build(m, a)
    if rank:
        from peft import LoraConfig, get_peft_model
        m = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS))
    for mod in m.modules():
        if hasattr(mod, "is_causal"):
            mod.is_causal = not full_attention
    base = m.get_base_model() if hasattr(m, "get_base_model") else m
    return m, base.model, base.lm_head


def hf_check_build(m, a):
    """The HF model has the shape asked for: sizes, head tied or not, RoPE theta, dtype and device."""
    c, inner = m.config, m.model
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", None))
    got = dict(vocab=c.vocab_size, hidden=c.hidden_size, inter=c.intermediate_size, layers=len(inner.layers), heads=c.num_attention_heads,
               kv_heads=c.num_key_value_heads, theta=theta, tied=m.lm_head.weight is inner.embed_tokens.weight, max_pos=c.max_position_embeddings)
    want = {k: a[k] for k in got}
    if got != want:
        raise RuntimeError(f"HF model built as {got}, not {want}")
    # the rotary table follows theta: inv_freq[1] = theta^(-2 / head_dim)
    hd = a["hidden"] // a["heads"]
    inv = getattr(getattr(inner, "rotary_emb", None), "inv_freq", None)
    if inv is not None and abs(inv[1].item() / a["theta"] ** (-2 / hd) - 1) > 1e-2:
        raise RuntimeError(f"HF rotary inv_freq[1] = {inv[1].item()}, not theta^(-2/{hd}) for theta {a['theta']}")
    bad = {str(p.dtype) + "@" + str(p.device) for p in m.parameters() if p.dtype != DT or p.device.type != DEV}
    if bad:
        raise RuntimeError(f"HF parameters not all {DT} on {DEV}: {bad}")


@torch.no_grad()
def hf_future_check(inner, vocab):
    x = torch.randint(3, vocab, (1, 32), device=DEV)
    y = x.clone(); y[0, -1] = (y[0, -1] + 1) % vocab
    a = inner(input_ids=x).last_hidden_state[0, 0].float(); b = inner(input_ids=y).last_hidden_state[0, 0].float()
    return bool((a - b).abs().max().item() > 0)


def hf_step(inner, head, opt, x, objective):
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


def bench_eager(a, objective, rank, batch, seq, steps, warmup):
    m = inner = head = params = opt = x = loss = None
    try:
        torch.manual_seed(0)
        m, inner, head = hf_build(a, objective == "ddm", rank)
        ok = hf_future_check(inner, a["vocab"])
        if ok != (objective == "ddm"):
            raise RuntimeError(f"attention is not what the objective needs: future_token_changes_pos0={ok} for {objective}")
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=(DEV == "cuda"))
        x = torch.randint(3, a["vocab"], (batch, seq), device=DEV)
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(warmup):
            hf_step(inner, head, opt, x, objective)
        sync()
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = hf_step(inner, head, opt, x, objective)
        sync()
        dt = (time.perf_counter() - t0) / steps
        return dict(ms_per_step=dt * 1e3, tokens_per_s=batch * seq / dt, warmup_s=warm_s,
                    peak_mem_gib=(torch.cuda.max_memory_allocated() / 2**30) if DEV == "cuda" else 0.0,
                    future_token_changes_pos0=ok, trainable_params=sum(p.numel() for p in params), loss=loss.item())
    finally:  # also after an out-of-memory error: nothing of this configuration outlives it
        del m, inner, head, params, opt, x, loss


# ---------------------------------------------------------------------------------------------
# impl "torch-compile": a hand-written LLaMA, one compiled graph per decoder block


class Linear(nn.Module):
    """y = x Wᵀ, plus (alpha / r) · B A x with alpha = 2r when rank > 0 (W frozen then)."""

    def __init__(self, fin, fout, rank):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin) * 0.02, requires_grad=rank == 0)
        self.rank = rank
        if rank:
            self.lora_a = nn.Parameter(torch.empty(rank, fin))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_b = nn.Parameter(torch.zeros(fout, rank))

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.rank:
            y = y + 2.0 * F.linear(F.linear(x, self.lora_a), self.lora_b)
        return y


def rms_norm(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


GQA_NATIVE = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class Block(nn.Module):
    def __init__(self, a, rank):
        super().__init__()
        d, hd = a["hidden"], a["hidden"] // a["heads"]
        self.h, self.kvh, self.hd, self.eps = a["heads"], a["kv_heads"], hd, a["eps"]
        self.attn_norm = nn.Parameter(torch.ones(d), requires_grad=rank == 0)
        self.mlp_norm = nn.Parameter(torch.ones(d), requires_grad=rank == 0)
        self.q, self.k, self.v = Linear(d, self.h * hd, rank), Linear(d, self.kvh * hd, rank), Linear(d, self.kvh * hd, rank)
        self.o = Linear(self.h * hd, d, rank)
        self.gate, self.up, self.down = Linear(d, a["inter"], rank), Linear(d, a["inter"], rank), Linear(a["inter"], d, rank)

    def forward(self, x, cos, sin, causal: bool):
        b, l, _ = x.shape
        h = rms_norm(x, self.attn_norm, self.eps)
        q = self.q(h).view(b, l, self.h, self.hd).transpose(1, 2)
        k = self.k(h).view(b, l, self.kvh, self.hd).transpose(1, 2)
        v = self.v(h).view(b, l, self.kvh, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if GQA_NATIVE:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        else:
            rep = self.h // self.kvh
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=causal)
        x = x + self.o(y.transpose(1, 2).reshape(b, l, self.h * self.hd))
        h = rms_norm(x, self.mlp_norm, self.eps)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, a, rank):
        super().__init__()
        self.a = a
        self.embed = nn.Parameter(torch.randn(a["vocab"], a["hidden"]) * 0.02, requires_grad=rank == 0)
        self.blocks = nn.ModuleList(Block(a, rank) for _ in range(a["layers"]))
        self.norm = nn.Parameter(torch.ones(a["hidden"]), requires_grad=rank == 0)
        # an untied LM head (llama2-7b) is its own frozen matrix under LoRA, as in peft
        self.lm_head = None if a["tied"] else nn.Parameter(torch.randn(a["vocab"], a["hidden"]) * 0.02, requires_grad=rank == 0)
        self._rope = {}

    def head_weight(self):
        return self.embed if self.lm_head is None else self.lm_head

    def rope(self, seq, device):
        if seq not in self._rope:
            hd = self.a["hidden"] // self.a["heads"]
            inv = 1.0 / (self.a["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
            f = torch.outer(torch.arange(seq, dtype=torch.float32, device=device), inv)
            f = torch.cat((f, f), dim=-1)
            self._rope[seq] = (f.cos().to(DT), f.sin().to(DT))
        return self._rope[seq]

    def hidden(self, ids, causal):
        """Final hidden states before the last norm, (B, L, D)."""
        cos, sin = self.rope(ids.shape[1], ids.device)
        x = F.embedding(ids, self.embed)
        for blk in self.blocks:
            x = blk(x, cos, sin, causal)
        return x


def head_loss(h, rows, tgt, w, norm_w, head_w, eps: float):
    """Σ w · CE over the scored rows: rows index (B·L) flattened outputs, w carries 1/t and 1/N."""
    hs = h.reshape(-1, h.shape[-1]).index_select(0, rows)
    logits = F.linear(rms_norm(hs, norm_w, eps), head_w).float()
    return (F.cross_entropy(logits, tgt, reduction="none") * w).sum()


class HostBatches:
    """The corruption of each step drawn on the host (as candle's objective does), sent without a sync."""

    def __init__(self, x, objective, seed=0):
        self.x, self.objective = x.cpu(), objective
        self.g = torch.Generator().manual_seed(seed)
        b, l = x.shape
        self.resp = torch.zeros(b, l, dtype=torch.bool); self.resp[:, l // 2:] = True
        if objective == "ar":
            self.fixed = self.pack(self.x, self.resp, torch.ones(b, 1))

    def pack(self, xin, masked, inv_t):
        b, l = xin.shape
        bi, p = masked.nonzero(as_tuple=True)                  # target positions p, predicted from p - 1
        rows = bi * l + p - 1
        n = rows.numel()
        w = inv_t[bi, 0] / n
        out = (xin, rows, self.x[bi, p], w.float())
        if DEV == "cuda":
            return tuple(t.pin_memory().to(DEV, non_blocking=True) for t in out)
        return out

    def next(self):
        if self.objective == "ar":
            return self.fixed
        b, l = self.x.shape
        t = 1e-3 + (1 - 1e-3) * torch.rand(b, 1, generator=self.g)
        masked = (torch.rand(b, l, generator=self.g) < t) & self.resp
        if masked.sum() < 2:  # keeps the head's row count symbolic (never 0 or 1); a negligible change in work
            masked[0, -2:] = True
        return self.pack(torch.where(masked, 0, self.x), masked, 1.0 / t)


def bench_compile(a, objective, rank, batch, seq, steps, warmup, mode):
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    st = {}  # everything of this configuration, released in `finally` (also after an out-of-memory error)
    try:
        return compile_run(st, a, objective, rank, batch, seq, steps, warmup, mode)
    finally:
        st.clear()
        torch._dynamo.reset()


def compile_run(st, a, objective, rank, batch, seq, steps, warmup, mode):
    torch.manual_seed(0)
    with on_device():
        m = st["model"] = Model(a, rank)
    for blk in m.blocks:
        blk.compile(fullgraph=True, mode=mode)
    head = torch.compile(head_loss, fullgraph=True, mode=mode)
    causal = objective == "ar"
    params = [p for p in m.parameters() if p.requires_grad]
    opt = st["opt"] = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=(DEV == "cuda"))
    x = torch.randint(3, a["vocab"], (batch, seq), device=DEV)
    data = HostBatches(x, objective)

    def one():
        xin, rows, tgt, w = data.next()
        if objective == "ddm":
            for t in (rows, tgt, w):
                torch._dynamo.mark_dynamic(t, 0)
        loss = head(m.hidden(xin, causal), rows, tgt, w, m.norm, m.head_weight(), a["eps"])
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        one()
    sync()
    compile_s = time.perf_counter() - t0
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one()
    sync()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    # full-attention check on the compiled model at the timed shape (no new graph: same shapes, grad mode)
    y = x.clone(); y[0, -1] = (y[0, -1] - 3 + 1) % (a["vocab"] - 3) + 3
    h = m.hidden(x, causal); ha = h[0, 0].detach().float(); del h
    h = m.hidden(y, causal); hb = h[0, 0].detach().float(); del h
    ok = bool((ha - hb).abs().max().item() > 0)
    if ok != (objective == "ddm"):
        raise RuntimeError(f"attention is not what the objective needs: future_token_changes_pos0={ok} for {objective}")
    graphs = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))
    return dict(ms_per_step=dt * 1e3, tokens_per_s=batch * seq / dt, compile_s=compile_s, peak_mem_gib=peak,
                future_token_changes_pos0=ok, trainable_params=sum(p.numel() for p in params), loss=loss.item(),
                compiled_graphs=graphs, compile_mode=mode or "default")


# ---------------------------------------------------------------------------------------------


def cleanup():
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


def run_row(impl, arch, arch_name, objective, rank, batch, seq, steps, warmup, args, peak, device):
    """One measurement as a JSON row (an error row on failure), printed; whether it ran."""
    name = "torch" if impl == "eager" else "torch-compile"
    key = dict(impl=name, arch=arch_name, objective=objective, lora_rank=rank, batch=batch, seq=seq)
    log(f"{name} {arch_name} {objective} r={rank} b={batch} seq={seq}: ...")
    try:
        if impl == "eager":
            r = bench_eager(arch, objective, rank, batch, seq, steps, warmup)
        else:
            r = bench_compile(arch, objective, rank, batch, seq, steps, warmup, args.compile_mode)
        mfu = 3 * forward_flops_per_token(arch, seq) * r["tokens_per_s"] / peak if peak else None
        row = dict(key, **r, mfu=mfu, device=device, steps=steps, warmup=warmup)
        log(f"  {r['ms_per_step']:.1f} ms/step, {r['tokens_per_s']:.0f} tokens/s, {r['peak_mem_gib']:.1f} GiB, "
            f"warm-up {r.get('compile_s', r.get('warmup_s', 0.0)):.1f} s")
    except Exception as e:  # out of memory, compile failure, failed check: an error row, then the next one
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        msg = "out of memory" if oom else f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:400]
        traceback.clear_frames(e.__traceback__)  # the frames' locals (tensors) go now, not with `e`
        row = dict(key, error=msg, device=device)
        log(f"  failed: {msg}")
    cleanup()
    print(json.dumps(row), flush=True)
    return "error" not in row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU, seq 64, batch 2")
    ap.add_argument("--grid", default=os.environ.get("GRID") or None, help="JSON list of [objective, rank, batch, seq] (env GRID)")
    ap.add_argument("--only", choices=["eager", "compile"], default=os.environ.get("ONLY") or None, help="one impl only (env ONLY)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; 2 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps before timing (default 3; 1 eager / 2 compiled with --quick)")
    ap.add_argument("--compile-mode", default=os.environ.get("COMPILE_MODE") or None, help="torch.compile mode (default: the default mode)")
    ap.add_argument("--arch", choices=list(ARCHS), default="smollm2-135m",
                    help="model shape; smollm2-1.7b and llama2-7b: a largest-batch search at ddm, LoRA 16, seq 1024")
    ap.add_argument("--max-batch", type=int, default=64, help="largest batch the search tries (default 64)")
    args = ap.parse_args()
    if args.quick and DEV == "cuda":
        log("--quick: running the tiny model on the GPU that is present")
    spec = ARCHS[args.arch]
    arch, arch_name = (TINY, QUICK_ARCH) if args.quick else (spec, args.arch)
    search = spec["big"] and not args.grid
    big_seq, max_batch = (32, min(args.max_batch, 4)) if args.quick else (BIG_SEQ, args.max_batch)
    grid = json.loads(args.grid) if args.grid else [] if search else default_grid(args.quick)
    for g in grid:
        if len(g) != 4 or g[0] not in ("ddm", "ar") or not all(isinstance(v, int) and v >= 0 for v in g[1:]):
            raise SystemExit(f"bad grid entry {g}: want [objective (ddm|ar), rank, batch, seq]")
    steps = args.steps or (BIG_STEPS if spec["big"] else 2 if args.quick else 10)
    impls = [i for i in ["eager", "compile"] if args.only in (None, i)]
    peak = peak_flops()
    import transformers, peft
    device = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    print(json.dumps(dict(impl="torch-env", arch=arch_name, torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                          device=device, dtype=str(DT), gqa="enable_gqa" if GQA_NATIVE else "repeat_kv", grid=grid, steps=steps,
                          batch_search=dict(objective="ddm", lora_rank=BIG_RANK, seq=big_seq, batches=batch_ladder(max_batch)) if search else None,
                          peak_flops=peak)), flush=True)
    if DEV == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    def warmup_of(impl):
        if args.warmup:
            return args.warmup
        if spec["big"]:
            return BIG_WARMUP
        return 3 if not args.quick else 1 if impl == "eager" else 2

    if search:
        for impl in impls:
            fit = None
            for batch in batch_ladder(max_batch):
                if not run_row(impl, arch, arch_name, "ddm", BIG_RANK, batch, big_seq, steps, warmup_of(impl), args, peak, device):
                    log(f"  stopping the {impl} search at batch {batch}")
                    break
                fit = batch
            log(f"{impl} {arch_name} ddm r={BIG_RANK} seq={big_seq}: largest batch that fit: {fit}")
        return
    for objective, rank, batch, seq in grid:
        for impl in impls:
            run_row(impl, arch, arch_name, objective, rank, batch, seq, steps, warmup_of(impl), args, peak, device)


if __name__ == "__main__":
    main()
