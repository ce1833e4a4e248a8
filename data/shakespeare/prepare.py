"""
Prepare the complete works of Shakespeare with GPT-2 BPE tokens.
Same corpus and same held-out works as data/shakespeare_char; one end-of-text
token after every work, like the document boundaries GPT-2 was trained with.
Writes train.bin / val.bin (uint16) and meta.json next to this file.

    python data/shakespeare/prepare.py
"""
import os
import sys

# run as a script from anywhere: make the repo root importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.shakespeare_char.prepare import read_corpus, split_works, is_val, title, write_bin, write_json  # noqa: E402
from data.tokenizer import gpt2  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    enc = gpt2()
    works = split_works(read_corpus())
    splits, val_titles = {}, [title(w) for i, w in enumerate(works) if is_val(i)]
    for split, want_val in (("train", False), ("val", True)):
        ids = []
        for i, w in enumerate(works):
            if is_val(i) == want_val:
                ids += enc.encode_ordinary(w) + [enc.eot_token]
        splits[split] = [write_bin(os.path.join(HERE, f"{split}.bin"), ids)]
    write_json(os.path.join(HERE, "meta.json"), {
        "vocab_size": enc.n_vocab, "tokenizer": "gpt2", "splits": splits,
        "split_rule": "work index % 10 == 9 -> val", "val_works": val_titles,
    })
    print(f"{len(works)} works, val works: {', '.join(val_titles)}")
    for split, entries in splits.items():
        print(f"{split}: {entries[0]['tokens']:,} tokens")


if __name__ == "__main__":
    main()
