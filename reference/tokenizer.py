"""GPT-2's BPE tokenizer (tiktoken's "gpt2" encoding), built offline from the files in data/gpt2-encoding/.

tiktoken.get_encoding("gpt2") would download vocab.bpe and encoder.json; here the same two files ship with
the repository and their sha256 (SHA256SUMS, the hashes tiktoken itself pins) is checked before use.
"""

from contextlib import contextmanager
import functools
import hashlib
import os
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from reference.formats import FormatError

ENCODING_DIR = Path(__file__).resolve().parent / "data" / "gpt2-encoding"
EOT = 50256
ENDOFTEXT = "<|endoftext|>"
VOCAB_SIZE = 50257
# tiktoken_ext/openai_public.py r50k_pat_str: GPT-2's pre-tokenizer regex, in tiktoken's faster equivalent form
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _checked_paths():
    """{name: path} of the encoding files, each verified against SHA256SUMS."""
    sums_path = ENCODING_DIR / "SHA256SUMS"
    expected = {}
    for line in sums_path.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            expected[name] = digest
    paths = {}
    for name in ("vocab.bpe", "encoder.json"):
        path = ENCODING_DIR / name
        if name not in expected:
            raise FormatError(sums_path, name, f"has no sha256 for {name}")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected[name]:
            raise FormatError(path, "sha256", f"sha256 is {actual}, expected {expected[name]} (from {sums_path})")
        paths[name] = str(path)
    return paths


@contextmanager
def _tiktoken_cache_disabled():
    """tiktoken copies every file it reads into a cache directory unless TIKTOKEN_CACHE_DIR is empty."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken.Encoding equal to tiktoken.get_encoding("gpt2"), from local files only."""
    paths = _checked_paths()
    with _tiktoken_cache_disabled():
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"]
        )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT},
    )


def encode(text):
    """str -> list of ids; "<|endoftext|>" in the text becomes EOT, as in llm.c's data scripts."""
    return gpt2_encoding().encode(text, allowed_special={ENDOFTEXT})


def decode(ids):
    """ids -> str (byte sequences that are not valid UTF-8 become U+FFFD)."""
    return gpt2_encoding().decode([int(i) for i in ids])


def token_bytes(i):
    """The raw bytes of token i (what llm.c's gpt2_tokenizer.bin stores for it)."""
    return gpt2_encoding().decode_single_token_bytes(int(i))
