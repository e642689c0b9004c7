#!/usr/bin/env python3
"""Pin SmolLM2 token ids with an independent tokenizer: llama.cpp (via llama-cpp-python).

Usage (from the repo root, in a venv with `pip install llama-cpp-python`):
    python tests/scripts/pin_tokenizer_ids.py \
        models/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/smollm2-tokenizer.gguf

Loads each GGUF with vocab_only=True (tokenizer only, no weights), tokenizes the test strings
with add_bos=False and special=True (control tokens written in the text, e.g. <|im_start|>,
are parsed as their ids: the same mode as the harness's `Tok::encode`, where the
`tokenizers` crate always matches added special tokens), checks that the full model and the
fixture agree, and prints the Rust `PINNED` table for tests/tokenizer.rs. It also prints the
special=False ids of strings containing control-token text, for information.
"""
import re
import sys

import llama_cpp
from llama_cpp import Llama

# Keep in sync with PINNED in tests/tokenizer.rs (same order, same text).
STRINGS = [
    "The quick brown fox jumps over the lazy dog.",
    "Patient has eGFR 38 mL/min/1.73m² and HbA1c 6.4%; BP 142/91 mmHg, K+ 5.1 mmol/L.",
    "  leading and trailing spaces  ",
    "line one\nline two\n\n\tindented\r\nwindows   gaps",
    "Café naïve résumé — 日本語 😀 Ελληνικά ∑x² ≤ 10⁻³",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n",
    "Don't stop; it's 2024-11-28, isn't it? I'LL SEE you'RE 100% sure!!",
    "",
    " ",
    "\n\n",
    "fn main() { let x = vec![1, 2, 3]; }",
]


def tokenize(llm, text, special):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def main(full_path, fixture_path):
    full = Llama(model_path=full_path, vocab_only=True, verbose=False)
    fixture = Llama(model_path=fixture_path, vocab_only=True, verbose=False)
    print(f"// llama-cpp-python {llama_cpp.__version__}, vocab_only=True, add_bos=False, special=True")
    print(f"// n_vocab = {full.n_vocab()}, bos = {full.token_bos()}, eos = {full.token_eos()}")
    for text in STRINGS:
        ids = tokenize(full, text, True)
        ids_fixture = tokenize(fixture, text, True)
        assert ids == ids_fixture, (text, ids, ids_fixture)
        back = full.detokenize(ids, special=True).decode("utf-8")
        assert back == text, (text, back)
        lit = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        # unicode_escape writes \xNN for Latin-1; Rust wants \u{NN}.
        lit = re.sub(r"\\x([0-9a-f]{2})", r"\\u{\1}", lit)
        lit = re.sub(r"\\u([0-9a-f]{4})", r"\\u{\1}", lit)
        lit = re.sub(r"\\U000([0-9a-f]{5})", r"\\u{\1}", lit)
        print(f'    ("{lit}", &{ids}),')
    for text in STRINGS:
        if "<|" in text:
            print("// special=False:", repr(text[:40]), tokenize(full, text, False))
    print("// fixture and full model agree on all strings")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
