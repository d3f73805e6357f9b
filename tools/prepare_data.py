"""Tokenize a data set into llm.c's token files: python -m tools.prepare_data tinyshakespeare [OUTDIR]

tinyshakespeare: reference/data/tinyshakespeare.txt (char-rnn's input.txt) tokenized exactly as llm.c's
dev/data/tinyshakespeare.py does: every blank-line-separated section (one speaker's turn) is a document,
preceded by EOT; the whole text is encoded at once; the first 32,768 tokens are the val split and the
remaining 305,260 the train split. Writes OUTDIR/tiny_shakespeare_{val,train}.bin.
"""

import argparse
from pathlib import Path

from reference import tokenizer
from reference.formats import FormatError, read_tokens, write_tokens

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYSHAKESPEARE_TEXT = REPO_ROOT / "reference" / "data" / "tinyshakespeare.txt"
DEFAULT_TINYSHAKESPEARE_DIR = REPO_ROOT / "data" / "tinyshakespeare"
VAL_TOKENS, TRAIN_TOKENS = 32_768, 305_260
VAL_FILE, TRAIN_FILE = "tiny_shakespeare_val.bin", "tiny_shakespeare_train.bin"


def tinyshakespeare_tokens():
    """All of tiny Shakespeare as GPT-2 ids, val split first."""
    text = TINYSHAKESPEARE_TEXT.read_text(encoding="utf-8")
    text = tokenizer.ENDOFTEXT + text.replace("\n\n", "\n\n" + tokenizer.ENDOFTEXT)
    return tokenizer.encode(text)


def prepare_tinyshakespeare(outdir=DEFAULT_TINYSHAKESPEARE_DIR):
    """Writes the two splits into outdir; -> (val path, train path)."""
    tokens = tinyshakespeare_tokens()
    val, train = tokens[:VAL_TOKENS], tokens[VAL_TOKENS:]
    # the independent check: llm.c's script prints these two counts
    assert (len(val), len(train)) == (VAL_TOKENS, TRAIN_TOKENS), (len(val), len(train))
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_tokens(outdir / VAL_FILE, val)
    write_tokens(outdir / TRAIN_FILE, train)
    return outdir / VAL_FILE, outdir / TRAIN_FILE


def ensure_tinyshakespeare(outdir=DEFAULT_TINYSHAKESPEARE_DIR):
    """(val path, train path), preparing them first if either is missing or not the expected file."""
    outdir = Path(outdir)
    paths = outdir / VAL_FILE, outdir / TRAIN_FILE
    try:
        if tuple(read_tokens(p).size for p in paths) == (VAL_TOKENS, TRAIN_TOKENS):
            return paths
    except (FileNotFoundError, FormatError):
        pass
    return prepare_tinyshakespeare(outdir)


DATASETS = {"tinyshakespeare": (prepare_tinyshakespeare, DEFAULT_TINYSHAKESPEARE_DIR)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("outdir", nargs="?", help="default: data/<dataset>/ in the repository")
    args = parser.parse_args(argv)
    prepare, default_dir = DATASETS[args.dataset]
    for path in prepare(args.outdir or default_dir):
        print(f"wrote {read_tokens(path).size:,} tokens to {path}")


if __name__ == "__main__":
    main()
