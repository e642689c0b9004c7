"""The loader at a real size: write a random checkpoint of a bench shape as a sharded Hugging Face
folder (bf16 safetensors, `model.safetensors.index.json`, the tiny test tokenizer), then time
`harness eval --base DIR` loading it onto the GPU and read the loader's own report line
(`model: N tensors, X GiB on Cuda in S s; peak host memory Y GiB`, see harness/src/model/load.rs)
into one JSON line.

    python bench/load_check.py BIN OUT.jsonl [--arch llama2-7b] [--dir /tmp/ckpt] [--shard-gb 5]

Needs torch and transformers (the checkpoint is written by transformers' `save_pretrained`, built on
the meta device and materialised on the GPU, so the script itself holds no full host copy).
"""
import argparse, json, os, re, shutil, subprocess, sys, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2-1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, rope_theta=130000.0,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0,
                      max_position_embeddings=4096, tie_word_embeddings=False),
}
ROOT = os.path.join(os.path.dirname(__file__), "..")
LINE = re.compile(r"model: (\d+) tensors, ([\d.]+) GiB on (.+?) in ([\d.]+) s; peak host memory ([\d.]+) GiB")


def parse(line):
    """The fields of the loader's report line, or None."""
    m = LINE.search(line)
    if not m:
        return None
    return dict(line=m[0], tensors=int(m[1]), placed_gib=float(m[2]), device=m[3], load_s=float(m[4]), peak_host_gib=float(m[5]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("out")
    ap.add_argument("--arch", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--dir", default="/tmp/load-check-ckpt")
    ap.add_argument("--shard-gb", type=float, default=5)
    ap.add_argument("--device", default="cuda", help="where the checkpoint is drawn (cuda; cpu for a check of the script)")
    a = ap.parse_args()
    t0 = time.time()
    cfg = LlamaConfig(rms_norm_eps=1e-5, torch_dtype="bfloat16", **SHAPES[a.arch])
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device=a.device).to(torch.bfloat16)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.fill_(1.0) if n.endswith("norm.weight") else p.normal_(0.0, 0.02)
    shutil.rmtree(a.dir, ignore_errors=True)
    model.save_pretrained(a.dir, safe_serialization=True, max_shard_size=f"{int(a.shard_gb * 1000)}MB")
    del model
    if a.device == "cuda":
        torch.cuda.empty_cache()
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(ROOT, "tests/fixtures/tiny-qwen2", f), a.dir)
    write_s = time.time() - t0
    shards = sorted(f for f in os.listdir(a.dir) if f.endswith(".safetensors"))
    disk = sum(os.path.getsize(os.path.join(a.dir, f)) for f in shards)
    cmd = [a.bin, "eval", "--base", a.dir, "--dataset", "clinical-rules:n_test=4", "--method", "likelihood",
           "--out", a.dir + "-eval", "--set", "data.max_len=2048", "--set", "eval.batch_size=4"]
    t1 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t1
    m = parse(p.stderr)
    row = {"arch": a.arch, "shards": len(shards), "checkpoint_gib": disk / 2**30, "write_s": write_s,
           "eval_wall_s": wall, "rc": p.returncode, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if m:
        row.update(m)
    else:
        row["error"] = (p.stderr.strip().splitlines() or ["no output"])[-1]
    print(json.dumps(row))
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    shutil.rmtree(a.dir, ignore_errors=True)
    return 0 if m else 1


if __name__ == "__main__":
    sys.exit(main())
