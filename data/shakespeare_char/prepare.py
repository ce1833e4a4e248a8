"""
Prepare the complete works of Shakespeare for character-level training.
Writes train.bin / val.bin (uint16 character ids) and meta.json next to this file.

    python data/shakespeare_char/prepare.py

Validation holds out whole works, not a slice of text: a model that has read
the first half of Hamlet can half-remember the second half, which flatters val loss.
"""
import gzip
import hashlib
import json
import os
import re
import sys

import numpy as np

# run as a script from anywhere: make the repo root importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from infra.files import write_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "shakespeare.txt.gz")
# works are joined with two blank lines, but "\n\n\n" also occurs inside works,
# so a work boundary is two blank lines followed by a title line and the byline
# (THE SONNETS has no blank line before its byline, hence the \n\n?)
WORK_SEP = re.compile(r"\n\n\n(?=[^\n]+\n\n?by William Shakespeare\n)")


def read_corpus():
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return f.read()


def split_works(text):
    """Split the corpus into works; "\\n\\n\\n".join(works) == text."""
    return WORK_SEP.split(text)


def is_val(i):
    """The fixed split rule: every 10th work (index 9, 19, 29, ...) is validation."""
    return i % 10 == 9


def title(work):
    return work.split("\n", 1)[0].strip()


def write_bin(path, ids):
    """Write uint16 ids to path atomically; return the manifest entry for meta.json."""
    data = np.asarray(ids, dtype=np.uint16).tobytes()
    write_atomic(path, lambda f: f.write(data))  # an interrupted run never leaves a finished-looking file
    return {"file": os.path.basename(path), "tokens": len(data) // 2,
            "sha256": hashlib.sha256(data).hexdigest()}


def write_json(path, obj):
    text = json.dumps(obj, indent=1).encode()
    write_atomic(path, lambda f: f.write(text))


def main():
    text = read_corpus()
    works = split_works(text)
    chars = "".join(sorted(set(text)))
    stoi = {c: i for i, c in enumerate(chars)}
    splits, val_titles = {}, [title(w) for i, w in enumerate(works) if is_val(i)]
    for split, want_val in (("train", False), ("val", True)):
        # keep the corpus' own formatting: works separated by two blank lines
        part = "\n\n\n".join(w for i, w in enumerate(works) if is_val(i) == want_val)
        splits[split] = [write_bin(os.path.join(HERE, f"{split}.bin"), [stoi[c] for c in part])]
    write_json(os.path.join(HERE, "meta.json"), {
        "vocab_size": len(chars), "tokenizer": "char", "chars": chars, "splits": splits,
        "split_rule": "work index % 10 == 9 -> val", "val_works": val_titles,
    })
    print(f"{len(text):,} characters, {len(chars)} distinct, {len(works)} works")
    print(f"val works: {', '.join(val_titles)}")
    for split, entries in splits.items():
        print(f"{split}: {entries[0]['tokens']:,} tokens")


if __name__ == "__main__":
    main()
