"""
Prepare C4 (allenai/c4, config "en") with GPT-2 BPE: one uint16 .bin per json.gz shard.

    python data/c4/prepare.py --train_shards=1 --val_shards=1 [--src=DIR] [--out=data/c4] [--workers=N]

Shards are read from --src (a folder holding c4-train.00000-of-01024.json.gz, ...),
or downloaded from Hugging Face into <out>/raw/ when no --src is given.
Writes <out>/train/*.bin, <out>/val/*.bin and the manifest <out>/meta.json.
Resumable: a shard whose .bin exists and is in the manifest is skipped, and every
file is written under a temporary name first, so a killed run loses only the
shards it was working on. One train shard is ~356k documents, ~170M tokens.
"""
import gzip
import hashlib
import json
import multiprocessing
import os
import sys
import time
import urllib.request
from types import SimpleNamespace

import numpy as np

# run as a script from anywhere: make the repo root importable
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.tokenizer import gpt2  # noqa: E402
from infra import settings  # noqa: E402
from infra.files import remove_stale_temporaries, write_atomic  # noqa: E402

# Options, as --key=value (infra/settings.parse's rules)
OPTIONS = dict(
    train_shards=1,              # the first N of the 1024 train shards
    val_shards=1,                # the first N of the 8 validation shards
    src='',                      # a folder with the json.gz shards ('': download them)
    out=os.path.join("data", "c4"),   # output folder
    workers=os.cpu_count() or 1,  # parallel processes (at most one per shard)
)

URL = "https://huggingface.co/datasets/allenai/c4/resolve/main/en/{}"
SHARDS = {"train": ("c4-train", 1024), "val": ("c4-validation", 8)}  # file prefix, shards in C4 en
FLUSH = 1 << 20  # tokens buffered per write: keeps a worker's memory small on 170M-token shards


def shard_name(split, i):
    prefix, n = SHARDS[split]
    return f"{prefix}.{i:05d}-of-{n:05d}.json.gz"


def bin_file(split, name):
    """The shard's .bin, relative to --out (the manifest's "file")."""
    return f"{split}/{name[:-len('.json.gz')]}.bin"


def fetch(name, src, raw):
    """Path to the json.gz shard: in --src, or downloaded into raw/ if not there yet."""
    if src:
        return os.path.join(src, name)
    path = os.path.join(raw, name)
    if not os.path.exists(path):
        url = URL.format(name)
        print(f"downloading {url}", flush=True)
        def download(f):
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    while chunk := r.read(1 << 22):
                        f.write(chunk)
            except (urllib.error.URLError, TimeoutError) as e:   # no network, HTTP errors, timeouts
                raise RuntimeError(f"error: download of {url} failed ({e}): check the network, or "
                                   f"download the shards yourself and pass --src=DIR") from None
        try:
            write_atomic(path, download)
        except SystemExit as e:   # write_atomic's line: the disk is full or the folder read-only
            raise RuntimeError(str(e.code))
    return path


def tokenize(job):
    """Worker: one json.gz shard -> one .bin of GPT-2 tokens, an end-of-text after every document."""
    split, name, src, out = job
    t0, enc = time.time(), gpt2()
    gz, rel = fetch(name, src, os.path.join(out, "raw")), bin_file(split, name)
    path = os.path.join(out, rel)
    sha, docs, buf = hashlib.sha256(), 0, []

    def flush(f):
        data = np.array(buf, dtype=np.uint16).tobytes()  # GPT-2 ids < 50257 fit in uint16
        f.write(data)
        sha.update(data)
        buf.clear()

    def write(f):
        nonlocal docs
        try:
            with gzip.open(gz, "rt", encoding="utf-8") as lines:
                for n, line in enumerate(lines, 1):  # {"text": ..., "timestamp": ..., "url": ...}
                    doc = json.loads(line)
                    if not isinstance(doc, dict):
                        raise ValueError(f"line {n} is a JSON {type(doc).__name__}, not an object with a 'text'")
                    text = doc["text"]
                    if not isinstance(text, str):
                        raise ValueError(f"line {n}: 'text' is a {type(text).__name__}, not a string")
                    buf.extend(enc.encode_ordinary(text))
                    buf.append(enc.eot_token)
                    docs += 1
                    if len(buf) >= FLUSH:
                        flush(f)
        except (OSError, EOFError) as e:   # a bad gzip: a reading error, not a writing one
            raise ValueError(f"cannot read it: {e}")
        flush(f)

    try:   # under a name unique to this process: a worker left running by a killed parent never collides
        write_atomic(path, write)
    except (ValueError, KeyError) as e:  # bad gzip, bad json, no "text", a text that is no string
        raise RuntimeError(f"error: failed on {gz} ({e!r}): if it is corrupt, delete it and re-run")
    except SystemExit as e:   # write_atomic's line: the disk is full or the folder read-only
        raise RuntimeError(str(e.code))
    entry = {"file": rel, "tokens": os.path.getsize(path) // 2, "sha256": sha.hexdigest()}
    return split, entry, docs, time.time() - t0


def write_meta(out, done, complete):
    meta = {"vocab_size": 50257, "tokenizer": "gpt2", "dataset": "allenai/c4 en", "complete": complete,
            "splits": {split: [done[split][k] for k in sorted(done[split])] for split in SHARDS}}
    text = json.dumps(meta, indent=1).encode()
    write_atomic(os.path.join(out, "meta.json"), lambda f: f.write(text))


def main(argv=None):
    args = SimpleNamespace(**settings.parse(sys.argv[1:] if argv is None else argv, OPTIONS,
                                            config_files=False, doc=__doc__))
    for split, n in (("train", args.train_shards), ("val", args.val_shards)):
        if not 0 <= n <= SHARDS[split][1]:
            raise SystemExit(f"error: --{split}_shards={n}: C4 en has {SHARDS[split][1]} {split} shards, "
                             f"pick 0..{SHARDS[split][1]}")
    if args.workers < 1:
        raise SystemExit(f"error: --workers={args.workers}: give 1 or more")
    if args.train_shards + args.val_shards == 0:
        raise SystemExit("error: --train_shards=0 and --val_shards=0: nothing to prepare")
    if args.src and not os.path.isdir(args.src):
        raise SystemExit(f"error: --src={args.src} is not a folder: point it at the C4 en json.gz files")

    # what is already done: in the old manifest, and its .bin is there with the right size
    old, meta_path = {}, os.path.join(args.out, "meta.json")
    try:
        with open(meta_path) as f:
            old = {e["file"]: e for entries in json.load(f)["splits"].values() for e in entries}
    except (OSError, ValueError, KeyError):  # no manifest yet (or a broken one): redo everything
        pass
    done, todo = {split: {} for split in SHARDS}, []
    for split, n in (("train", args.train_shards), ("val", args.val_shards)):
        for name in (shard_name(split, i) for i in range(n)):
            e, path = old.get(bin_file(split, name)), os.path.join(args.out, bin_file(split, name))
            if e and os.path.exists(path) and os.path.getsize(path) == 2 * e["tokens"]:  # finished before
                done[split][e["file"]] = e
            else:
                todo.append((split, name, args.src, args.out))
    missing = [j[1] for j in todo if args.src and not os.path.exists(os.path.join(args.src, j[1]))]
    if missing:  # fail now, not after hours of tokenizing the others
        raise SystemExit(f"error: {os.path.join(args.src, missing[0])} not found ({len(missing)} shard(s) missing): "
                         f"--src must be the folder with the C4 en json.gz shards")
    try:
        for d in ("train", "val") if args.src else ("train", "val", "raw"):
            os.makedirs(os.path.join(args.out, d), exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot create {args.out}/ ({e.strerror}): give --out a writable folder")
    for d in ("train", "val", "raw"):   # partial files of killed runs (a live worker's are kept)
        remove_stale_temporaries(os.path.join(args.out, d))

    workers = max(1, min(args.workers, len(todo)))
    print(f"{sum(map(len, done.values()))} shard(s) already done, {len(todo)} to do with {workers} worker(s)")
    gpt2()  # load the tokenizer once here: forked workers inherit it
    write_meta(args.out, done, complete=False)  # until every shard is in, the loader refuses this folder
    t0, total = time.time(), 0
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        for i, (split, e, docs, secs) in enumerate((pool.imap_unordered if pool else map)(tokenize, todo), 1):
            done[split][e["file"]] = e
            write_meta(args.out, done, complete=False)  # so a killed run keeps the finished shards
            total += e["tokens"]
            print(f"[{i}/{len(todo)}] {e['file']}: {docs:,} docs, {e['tokens']:,} tokens in {secs:.1f}s "
                  f"({e['tokens'] / secs / 1e6:.2f}M tok/s); {total / (time.time() - t0) / 1e6:.2f}M tok/s overall",
                  flush=True)
    except RuntimeError as e:
        raise SystemExit(str(e))
    finally:
        if pool:
            pool.terminate()
    write_meta(args.out, done, complete=True)
    for split in SHARDS:
        print(f"{split}: {len(done[split])} shard(s), {sum(e['tokens'] for e in done[split].values()):,} tokens")


if __name__ == "__main__":
    main()
