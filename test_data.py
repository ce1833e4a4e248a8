"""Tests for the data layer: tokenizer, prepares, loader. Run: python -m pytest -q test_data.py"""
import gzip
import hashlib
import io
import json
import os
import time

import numpy as np
import pytest
import tiktoken
import torch

import data.c4.prepare as c4_prep
import data.shakespeare.prepare as bpe_prep
import data.shakespeare_char.prepare as char_prep
from data import tokenizer
from data.loader import Batches, fixed_batches, meta, open_dataset


def error_of(fn, *args, **kwargs):
    """Run fn, expect SystemExit, return its one-line message."""
    with pytest.raises(SystemExit) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_pins():
    enc = tokenizer.gpt2()
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode("Hello, world!") == [15496, 11, 995, 0]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert tokenizer.gpt2() is enc  # cached


def test_tokenizer_fallback_is_the_repo_file(monkeypatch):
    def offline(name):
        raise ConnectionError("no internet")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    tokenizer.gpt2.cache_clear()
    try:
        t0 = time.time()
        enc = tokenizer.gpt2()
        assert time.time() - t0 < 5
    finally:
        tokenizer.gpt2.cache_clear()
    # the same ranks read directly, with tiktoken's own (rewritten) r50k pattern
    from tiktoken_ext.openai_public import r50k_pat_str
    ref = tiktoken.Encoding(name="ref", pat_str=r50k_pat_str,
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(tokenizer.RANKS_FILE),
                            special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    texts = ["hello world", "  leading and trailing spaces   ", "tabs\t\tand\n\n\nnewlines \n",
             "I'm, you're, we'll, they'd, it's: DON'T", "числа 12345 и émojis 🤖🎉", "a<|endoftext|>b",
             char_prep.read_corpus()[:20000]]
    for t in texts:
        assert enc.encode_ordinary(t) == ref.encode_ordinary(t)
        assert enc.decode(enc.encode_ordinary(t)) == t
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


# ----------------------------------------------------------------------------- shakespeare

def test_split_works():
    text = char_prep.read_corpus()
    works = char_prep.split_works(text)
    assert len(text) == 5057321 and len(set(text)) == 84
    assert len(works) == 42 and "\n\n\n".join(works) == text
    val = [char_prep.title(w) for i, w in enumerate(works) if char_prep.is_val(i)]
    assert val == ["THE LIFE OF KING HENRY V", "MACBETH", "THE RAPE OF LUCRECE", "TWELFTH NIGHT; OR, WHAT YOU WILL"]
    frac = sum(len(w) for i, w in enumerate(works) if char_prep.is_val(i)) / len(text)
    assert 0.05 < frac < 0.15


def test_shakespeare_prepares(tmp_path, monkeypatch):
    char_dir, bpe_dir = tmp_path / "shakespeare_char", tmp_path / "shakespeare"
    char_dir.mkdir(), bpe_dir.mkdir()
    monkeypatch.setattr(char_prep, "HERE", str(char_dir))
    monkeypatch.setattr(bpe_prep, "HERE", str(bpe_dir))
    char_prep.main()
    bpe_prep.main()
    text = char_prep.read_corpus()
    m = meta(char_dir)
    assert m["vocab_size"] == 84 and len(m["chars"]) == 84
    train, val = open_dataset(char_dir, "train")[0], open_dataset(char_dir, "val")[0]
    # each split is its works joined by the corpus' own separator: 42 works, 41 separators, 2 splits
    assert len(train) + len(val) == len(text) - len("\n\n\n")
    assert "".join(m["chars"][i] for i in val[:30]) == "THE LIFE OF KING HENRY V\n\nby W"
    enc = tokenizer.gpt2()
    val = open_dataset(bpe_dir, "val")[0]
    assert meta(bpe_dir)["vocab_size"] == 50257
    assert int((val == 50256).sum()) == 4 and val[-1] == 50256  # one end-of-text per held-out work
    assert enc.decode(val[:12].tolist()).startswith("THE LIFE OF KING HENRY V")
    x, y = Batches(bpe_dir, "train", 64, 4, seed=0).next()
    assert x.shape == y.shape == (4, 64)


# ----------------------------------------------------------------------------- c4

def write_c4_shards(src):
    """Two tiny train shards and one val shard in the real C4 schema and file names."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "déjà", "vu", "🤖", "<|endoftext|>", "\n", "12,345", "it's"]
    texts = {}
    for name in ("c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz",
                 "c4-validation.00000-of-00008.json.gz"):
        docs = [" ".join(rng.choice(words, size=rng.integers(1, 60))) for _ in range(40)]
        with gzip.open(src / name, "wt", encoding="utf-8") as f:
            for i, t in enumerate(docs):
                f.write(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z",
                                    "url": f"https://example.com/{i}"}) + "\n")
        texts[name] = docs
    return texts


def run_c4(src, out, workers=1):
    c4_prep.main([f"--src={src}", f"--out={out}", "--train_shards=2", "--val_shards=1", f"--workers={workers}"])


@pytest.fixture
def c4(tmp_path):
    src, out = tmp_path / "src", tmp_path / "c4"
    src.mkdir()
    texts = write_c4_shards(src)
    run_c4(src, out, workers=2)
    return src, out, texts


def test_c4_prepare(c4):
    src, out, texts = c4
    enc = tokenizer.gpt2()
    m = meta(out)
    assert m["vocab_size"] == 50257 and m["tokenizer"] == "gpt2" and m["complete"] is True
    assert [e["file"] for e in m["splits"]["train"]] == ["train/c4-train.00000-of-01024.bin",
                                                         "train/c4-train.00001-of-01024.bin"]
    assert [e["file"] for e in m["splits"]["val"]] == ["val/c4-validation.00000-of-00008.bin"]
    for e in m["splits"]["train"] + m["splits"]["val"]:
        name = os.path.basename(e["file"]).replace(".bin", ".json.gz")
        want = [t for doc in texts[name] for t in enc.encode_ordinary(doc) + [50256]]
        raw = (out / e["file"]).read_bytes()
        assert e["tokens"] == len(want) == len(raw) // 2
        assert np.frombuffer(raw, dtype=np.uint16).tolist() == want
        assert e["sha256"] == hashlib.sha256(raw).hexdigest()
    shards = open_dataset(out, "train")
    assert [len(s) for s in shards] == [e["tokens"] for e in m["splits"]["train"]]
    x, y = Batches(out, "train", 32, 8, seed=0).next()
    assert x.shape == (8, 32) and int(x.max()) < 50257


def test_c4_resume(c4, capsys):
    src, out, _ = c4
    before = {p: p.read_bytes() for p in out.rglob("*.bin")}
    meta_before = meta(out)
    old = 1_000_000_000
    for p in before:
        os.utime(p, (old, old))
    # interrupted in the middle of shard 1: its .bin never got renamed, a partial .tmp is left
    redo = out / "train" / "c4-train.00001-of-01024.bin"
    redo.unlink()
    (out / "train" / "c4-train.00001-of-01024.bin.tmp").write_bytes(b"\x01\x02\x03")
    capsys.readouterr()
    run_c4(src, out)
    printed = capsys.readouterr().out
    assert "2 shard(s) already done, 1 to do" in printed and "[1/1] train/c4-train.00001" in printed
    for p, content in before.items():
        assert p.read_bytes() == content
        assert (os.path.getmtime(p) == old) == (p != redo)  # finished shards were not rewritten
    assert not list(out.rglob("*.tmp")) and meta(out) == meta_before
    # a second run has nothing to do
    run_c4(src, out)
    assert "3 shard(s) already done, 0 to do" in capsys.readouterr().out


def test_c4_bad_inputs(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    msg = error_of(c4_prep.main, [f"--src={src}", f"--out={tmp_path / 'c4'}"])
    assert "c4-train.00000-of-01024.json.gz not found" in msg and "--src" in msg
    assert "--train_shards=2000" in error_of(c4_prep.main, ["--train_shards=2000", f"--out={tmp_path}"])

    def no_network(url, timeout=None):
        raise c4_prep.urllib.error.URLError("no internet")
    monkeypatch.setattr(c4_prep.urllib.request, "urlopen", no_network)
    msg = error_of(c4_prep.main, [f"--out={tmp_path / 'dl'}", "--workers=1"])
    assert "download of https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-train.00000-of-01024.json.gz failed" in msg
    # the interrupted download left a manifest saying "not complete": the loader refuses it
    assert "partly prepared" in error_of(open_dataset, tmp_path / "dl", "train")


# ----------------------------------------------------------------------------- loader

def make_dataset(d, shards, vocab_size=20000, split="train"):
    """A dataset folder in the meta.json format, from lists of token ids."""
    d.mkdir(exist_ok=True)
    entries = []
    for i, ids in enumerate(shards):
        name = f"{split}{i}.bin"
        np.asarray(ids, dtype=np.uint16).tofile(d / name)
        entries.append({"file": name, "tokens": len(ids), "sha256": ""})
    (d / "meta.json").write_text(json.dumps({"vocab_size": vocab_size, "splits": {split: entries}}))
    return d


def test_loader_windows(tmp_path):
    # token value = position, so a window's contents say exactly where it came from
    d = make_dataset(tmp_path / "ds", [np.arange(3000), np.arange(10000, 11000)])
    b = Batches(d, "train", block_size=16, batch_size=2000, seed=0)
    x, y = b.next()
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2000, 16)
    assert torch.equal(y, x + 1)  # y is x shifted by one, within one shard
    assert torch.equal(x[:, 1:], y[:, :-1])
    from_a = (x[:, 0] < 10000).float().mean().item()
    assert abs(from_a - (3000 - 16) / (3000 - 16 + 1000 - 16)) < 0.05  # shards in proportion to length
    assert int(x[:, 0].min()) <= 20 and int(y[:, -1].max()) >= 10990  # both ends are reachable


def test_loader_determinism(tmp_path):
    d = make_dataset(tmp_path / "ds", [np.arange(5000) % 777])
    batches = lambda b, n: [b.next() for _ in range(n)]  # noqa: E731
    same = lambda p, q: all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(p, q))  # noqa: E731
    a = batches(Batches(d, "train", 8, 4, seed=1), 3)
    assert same(a, batches(Batches(d, "train", 8, 4, seed=1), 3))
    assert not same(a, batches(Batches(d, "train", 8, 4, seed=2), 3))
    r1 = batches(Batches(d, "train", 8, 4, seed=1, rank=1, world_size=2), 3)
    assert not same(a, r1)
    # resume: the state goes through a weights_only checkpoint and the stream continues exactly
    b = Batches(d, "train", 8, 4, seed=1)
    batches(b, 5)
    buf = io.BytesIO()
    torch.save({"loader": b.state_dict()}, buf)
    rest = batches(b, 3)
    c = Batches(d, "train", 8, 4, seed=1)
    c.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["loader"])
    assert same(rest, batches(c, 3))
    v = fixed_batches(d, "train", 8, 4, n_batches=3)
    assert len(v) == 3 and same(v, fixed_batches(d, "train", 8, 4, n_batches=3))


def test_loader_bad_inputs(tmp_path):
    msg = error_of(open_dataset, tmp_path / "shakespeare_char", "train")
    assert "dataset not prepared" in msg and "`python data/shakespeare_char/prepare.py`" in msg
    msg = error_of(Batches, tmp_path / "c4", "train", 8, 2, seed=0)
    assert "python data/c4/prepare.py" in msg and "--src" in msg

    d = make_dataset(tmp_path / "ds", [np.arange(100), np.arange(50)])
    assert "no 'val' shards" in error_of(open_dataset, d, "val")
    msg = error_of(Batches, d, "train", block_size=50, batch_size=2, seed=0)
    assert f"block_size 50 is larger than the data in {d}" in msg
    Batches(d, "train", block_size=49, batch_size=2, seed=0)  # 50 tokens hold exactly one window of 49+1

    with open(d / "train1.bin", "ab") as f:
        f.write(b"\x00")  # a torn write: half a token
    msg = error_of(open_dataset, d, "train")
    assert "train1.bin" in msg and "not a whole number of uint16 tokens" in msg and "re-run" in msg
    with open(d / "train1.bin", "ab") as f:
        f.write(b"\x00")  # whole tokens again, but one more than meta.json says
    msg = error_of(open_dataset, d, "train")
    assert "train1.bin has 51 tokens but meta.json says 50" in msg

    d = make_dataset(tmp_path / "oov", [[1, 2, 3, 50257]], vocab_size=50257)
    msg = error_of(open_dataset, d, "train")
    assert "train0.bin" in msg and "token id 50257 >= vocab_size 50257" in msg
    (d / "meta.json").write_text("{not json")
    assert "not a dataset manifest" in error_of(meta, d)
