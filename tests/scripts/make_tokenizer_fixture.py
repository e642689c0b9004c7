#!/usr/bin/env python3
"""Write tests/fixtures/smollm2-tokenizer.gguf: every KV metadata entry of a GGUF model, zero tensors.

Usage (from the repo root, in a venv with `pip install gguf`):
    python tests/scripts/make_tokenizer_fixture.py \
        models/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/smollm2-tokenizer.gguf

The fixture carries the tokenizer metadata (tokens, merges, token types, special ids, `pre`,
chat template) and the model hyper-parameters, so tokenizer code and llama.cpp's
`vocab_only=True` loader can use it without the 98 MB weights.
"""
import sys
from importlib.metadata import version

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def field_value(field):
    """The Python value of a reader field (scalar, string, or list of either)."""
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def main(src, dst):
    reader = GGUFReader(src)
    arch = field_value(reader.fields["general.architecture"])
    writer = GGUFWriter(dst, arch)  # writes general.architecture itself
    n = 0
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field_value(field), vtype, sub_type=sub)
        n += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{dst}: {n + 1} KV entries, 0 tensors (gguf {version('gguf')})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
