"""PyTorch decoding references for `harness bench`'s decode rows (decode.jsonl), one JSON line each.

A SmolLM2-135M-shaped `LlamaForCausalLM` (random init, bf16, SDPA; eos never stops a row), prompts of
256 random tokens, 32 new tokens, batch 1, 16 and 64 (every prompt of a batch in one forward pass):

* impl "hf-generate-static": HF `generate`, greedy, `cache_implementation="static"` (on CUDA, transformers
  compiles the decoding step for a static cache on its own: the warm-up call pays for that);
* impl "hf-generate-dynamic": the same with the default dynamic cache, eager;
* impl "torch-diffusion-loop": a plain PyTorch LLaDA-style masked-diffusion sampler: a canvas of 32
  mask tokens (id 0) after the prompt, 32 steps, each one forward pass of the whole sequence with full
  attention and no cache, the head on the canvas rows only (`logits_to_keep`), shift (the logits at
  position i-1 predict position i), then in each row the most confident masked position (highest
  probability of its argmax token; new_tokens / steps positions per step) is committed.

Each call is timed after one untimed warm-up call on the same prompts, synchronised before and after;
tokens_per_s = generated tokens (batch × new_tokens) / wall seconds of the call (mean over --reps calls).
Fields: impl, batch, prompt_len, new_tokens, steps, nfe (forward passes per row; generate: one per new
token, the prompt pass included), tokens_per_s, wall_s, warmup_s, generated_tokens, device.

Usage: python bench/torch_decode.py [--quick] [--batches 1,16,64] [--reps 3] [--only generate|diffusion]
  --quick: a tiny config on CPU, prompt 16, 8 new tokens in 4 steps (as `harness bench --quick`), batch 1, 2.
"""
import argparse, gc, json, os, sys, time
import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float32


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def build(quick):
    from transformers import LlamaConfig, LlamaForCausalLM
    if quick:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="sdpa")
    else:
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                          rms_norm_eps=1e-5, attn_implementation="sdpa")
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(DEV, DT).eval()
    gc_ = m.generation_config
    gc_.eos_token_id, gc_.pad_token_id, gc_.bos_token_id = None, 0, None
    return m, cfg


def timed(f, reps):
    """(warm-up seconds, mean seconds per call, last result)."""
    t0 = time.perf_counter(); f(); sync(); warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f()
    sync()
    return warm, (time.perf_counter() - t0) / reps, out


def set_causal(m, causal):
    for mod in m.modules():
        if hasattr(mod, "is_causal"):
            mod.is_causal = causal


@torch.no_grad()
def full_attention_check(m, vocab):
    """Does position 0's output change when the last token changes?"""
    x = torch.randint(3, vocab, (1, 32), device=DEV)
    y = x.clone(); y[0, -1] = (y[0, -1] - 3 + 1) % (vocab - 3) + 3
    a, b = m(input_ids=x).logits[0, 0].float(), m(input_ids=y).logits[0, 0].float()
    return bool((a - b).abs().max().item() > 0)


@torch.no_grad()
def diffuse(m, ids, new, steps):
    b, p = ids.shape
    per_step = new // steps
    x = torch.cat([ids, torch.zeros(b, new, dtype=ids.dtype, device=ids.device)], 1)
    canvas = x[:, p:]                                          # a view: commits write into x
    masked = torch.ones(b, new, dtype=torch.bool, device=ids.device)
    for _ in range(steps):
        logits = m(input_ids=x, logits_to_keep=new + 1).logits[:, :-1].float()   # rows p-1 .. p+new-2
        top, tok = logits.max(-1)
        conf = (top - logits.logsumexp(-1)).masked_fill(~masked, float("-inf"))  # log-probability of the argmax
        j = conf.topk(per_step, dim=-1).indices
        canvas.scatter_(1, j, tok.gather(1, j))
        masked.scatter_(1, j, False)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default=os.environ.get("DECODE_BATCHES") or None, help="comma-separated batch sizes (env DECODE_BATCHES)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per row after the warm-up (default 3; 1 with --quick)")
    ap.add_argument("--only", choices=["generate", "diffusion"], default=None)
    args = ap.parse_args()
    prompt, new, steps = (16, 8, 4) if args.quick else (256, 32, 32)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 2] if args.quick else [1, 16, 64])
    reps = args.reps or (1 if args.quick else 3)
    assert new % steps == 0, "new tokens must be a multiple of the steps"
    m, cfg = build(args.quick)
    import transformers
    device = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    print(json.dumps(dict(impl="torch-decode-env", torch=torch.__version__, transformers=transformers.__version__, device=device,
                          dtype=str(DT), reps=reps)), flush=True)
    g = torch.Generator(device="cpu").manual_seed(2)
    prompts = {b: torch.randint(3, cfg.vocab_size, (b, prompt), generator=g).to(DEV) for b in batches}

    def emit(impl, b, nfe, st, warm=None, wall=None, gen=None, error=None):
        row = dict(impl=impl, batch=b, prompt_len=prompt, new_tokens=new, steps=st, nfe=nfe, device=device)
        if error is None:
            row.update(tokens_per_s=gen / wall, wall_s=wall, warmup_s=warm, generated_tokens=gen)
            log(f"{impl} b={b}: {gen / wall:.0f} tokens/s ({wall * 1e3:.1f} ms per call, warm-up {warm:.1f} s)")
        else:
            row["error"] = error
            log(f"{impl} b={b}: failed: {error}")
        print(json.dumps(row), flush=True)

    def err(e):
        return "out of memory" if isinstance(e, torch.cuda.OutOfMemoryError) else f"{type(e).__name__}: {str(e).strip()[:300]}"

    if args.only in (None, "generate"):
        set_causal(m, True)
        for b in batches:
            ids = prompts[b]
            for cache in ["static", "dynamic"]:
                impl = f"hf-generate-{cache}"
                kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
                if cache == "static":
                    kw["cache_implementation"] = "static"
                try:
                    with torch.no_grad():
                        warm, wall, out = timed(lambda: m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw), reps)
                    gen = (out.shape[1] - prompt) * b
                    if gen != new * b:
                        raise RuntimeError(f"generated {out.shape[1] - prompt} tokens per row, not {new}")
                    emit(impl, b, new, new, warm, wall, gen)
                except Exception as e:
                    emit(impl, b, new, new, error=err(e))
                gc.collect()
                if DEV == "cuda":
                    torch.cuda.empty_cache()
    if args.only in (None, "diffusion"):
        set_causal(m, False)
        full = full_attention_check(m, cfg.vocab_size)
        for b in batches:
            if not full:
                emit("torch-diffusion-loop", b, steps, steps, error="attention is not full: position 0 ignores the last token")
                continue
            try:
                warm, wall, out = timed(lambda: diffuse(m, prompts[b], new, steps), reps)
                emit("torch-diffusion-loop", b, steps, steps, warm, wall, out[:, prompt:].numel())
            except Exception as e:
                emit("torch-diffusion-loop", b, steps, steps, error=err(e))


if __name__ == "__main__":
    main()
