"""Write llm.c's gpt2_tokenizer.bin: python -m tools.export_tokenizer OUT

Byte-identical to what llm.c's train_gpt2.py write_tokenizer produces (version 2, 50257 tokens,
EOT 50256, 372,108 bytes), built from the offline GPT-2 encoding in reference/tokenizer.py.
"""

import argparse
import os

from reference import tokenizer
from reference.formats import write_tokenizer

GPT2_TOKENIZER_BYTES = 372_108


def export_tokenizer(path):
    enc = tokenizer.gpt2_encoding()
    write_tokenizer(path, [tokenizer.token_bytes(i) for i in range(enc.max_token_value + 1)], tokenizer.EOT)
    size = os.path.getsize(path)
    if size != GPT2_TOKENIZER_BYTES:
        raise RuntimeError(f"{path}: wrote {size} bytes, llm.c's gpt2_tokenizer.bin is {GPT2_TOKENIZER_BYTES}")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output path, e.g. gpt2_tokenizer.bin")
    args = parser.parse_args(argv)
    export_tokenizer(args.out)
    print(f"wrote {args.out} ({GPT2_TOKENIZER_BYTES:,} bytes)")


if __name__ == "__main__":
    main()
