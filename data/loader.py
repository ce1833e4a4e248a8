"""
The one data loader, for every prepared dataset (shakespeare_char, shakespeare, c4).

A prepared dataset is a folder with meta.json and uint16 token shards:
    {"vocab_size": int,
     "splits": {"train": [{"file": "train.bin", "tokens": int, "sha256": str}, ...],
                "val": [...]},
     ...extra keys ("chars" for shakespeare_char)}

Batches are random windows of block_size+1 tokens, drawn uniformly over all
windows of all shards. Under DDP the processes share one seeded stream of global
batches and each takes its own slice: the ranks see different windows, and the
union of a step's micro-batches is the same whatever the number of processes, so
a 2-process run trains on exactly the data of a 1-process run with the same global
batch. The generator state goes in the checkpoint so a resumed run continues the
exact same stream.
"""
import json
import os

import numpy as np
import torch


def _run(data_dir, verb="run"):
    """How to (re)create data_dir, for error messages: "run `python data/<name>/prepare.py`"."""
    name = os.path.basename(os.path.normpath(data_dir))
    if name == "c4":  # the only prepare with options (and an --out): say where the shards come from
        return (f"{verb} `python data/c4/prepare.py --out={data_dir}` "
                f"(add --src=DIR to read local C4 json.gz shards instead of downloading)")
    if os.path.dirname(os.path.abspath(data_dir)) != os.path.dirname(os.path.abspath(__file__)):
        return f"{verb} the data/*/prepare.py that writes {data_dir}"   # a folder elsewhere
    return f"{verb} `python data/{name}/prepare.py`"


def meta(data_dir):
    """The parsed meta.json of a prepared dataset."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: dataset not prepared (no {path}): {_run(data_dir)}")
    try:
        with open(path) as f:
            m = json.load(f)
    except ValueError as e:
        m = {"error": str(e)}
    if not (isinstance(m, dict) and isinstance(m.get("vocab_size"), int) and isinstance(m.get("splits"), dict)):
        raise SystemExit(f"error: {path} is not a dataset manifest (no vocab_size/splits): {_run(data_dir, 're-run')}")
    if m.get("complete") is False:  # c4/prepare.py records its progress here while it runs
        raise SystemExit(f"error: {data_dir} is only partly prepared (interrupted?): re-run "
                         f"`python data/c4/prepare.py --out={data_dir}` with the same options; it resumes")
    return m


SCAN_TOKENS = 1 << 24


def check_ids(tokens, vocab_size, path, rerun):
    top = int(tokens.max())
    if top >= vocab_size:
        raise SystemExit(f"error: {path} contains token id {top} >= vocab_size {vocab_size}: "
                         f"wrong tokenizer or corrupt file; delete it and {rerun}")


def open_dataset(data_dir, split):
    """The shards of one split as a list of uint16 np.memmap arrays, checked against meta.json."""
    m, rerun = meta(data_dir), _run(data_dir, "re-run")
    entries = m["splits"].get(split)
    if not entries:
        raise SystemExit(f"error: {data_dir}/meta.json lists no '{split}' shards: {rerun}")
    shards = []
    for e in entries:
        path = os.path.join(data_dir, e["file"])
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} is missing: {rerun}")
        nbytes = os.path.getsize(path)
        if nbytes % 2:
            raise SystemExit(f"error: {path} has {nbytes} bytes, not a whole number of uint16 tokens "
                             f"(truncated?): delete it and {rerun}")
        if nbytes // 2 != e["tokens"]:
            raise SystemExit(f"error: {path} has {nbytes // 2} tokens but meta.json says {e['tokens']}: "
                             f"delete it and {rerun}")
        if nbytes == 0:
            continue  # nothing to sample from, and np.memmap can't map an empty file
        data = np.memmap(path, dtype=np.uint16, mode="r")
        # a wrong tokenizer or a corrupt file: scan small shards whole at open (a C4 shard, ~170M
        # tokens, would cost seconds in every process; Batches checks every batch it draws instead)
        if len(data) <= SCAN_TOKENS:
            check_ids(data, m["vocab_size"], path, rerun)
        shards.append(data)
    return shards


class Batches:
    """Endless random (x, y) batches; y is x shifted by one token."""

    def __init__(self, data_dir, split, block_size, batch_size, seed, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise SystemExit(f"error: rank {rank} is not in [0, world_size={world_size})")
        self.shards = open_dataset(data_dir, split)
        self.data_dir, self.vocab_size = data_dir, meta(data_dir)["vocab_size"]
        self.block_size, self.batch_size = block_size, batch_size
        shortest = min((len(s) for s in self.shards), default=0)
        if block_size + 1 > shortest:
            raise SystemExit(f"error: block_size {block_size} is larger than the data in {data_dir} "
                             f"({split}: the shortest shard has {shortest} tokens, a window needs "
                             f"block_size+1): use a smaller block_size")
        # number of windows per shard: drawing uniformly over all of them picks a
        # shard in proportion to its length
        self.n_windows = torch.tensor([len(s) - block_size for s in self.shards], dtype=torch.int64)
        self.ends = torch.cumsum(self.n_windows, 0)
        # one stream for all processes (see the module docstring); rank picks the slice
        self.rank, self.world_size = rank, world_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self):
        """(x, y): int64 CPU tensors of shape (batch_size, block_size)."""
        # draw every process's batch, keep ours: the stream does not depend on the number of
        # processes, only on how many micro-batches have been drawn in all
        draws = [torch.randint(0, int(self.ends[-1]), (self.batch_size,), generator=self.gen)
                 for _ in range(self.world_size)]
        k = draws[self.rank]
        shard = torch.searchsorted(self.ends, k, right=True)  # which shard window k falls in
        start = k - (self.ends - self.n_windows)[shard]        # and where in that shard
        xy = torch.stack([torch.from_numpy(self.shards[s][i:i + self.block_size + 1].astype(np.int64))
                          for s, i in zip(shard.tolist(), start.tolist())])
        if int(xy.max()) >= self.vocab_size:   # big shards are not scanned at open
            check_ids(xy.numpy(), self.vocab_size, f"a shard of {self.data_dir}", _run(self.data_dir, "re-run"))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    def state_dict(self):
        return {"generator": self.gen.get_state()}  # a uint8 tensor: fine for torch.load(weights_only=True)

    def load_state_dict(self, state):
        self.gen.set_state(state["generator"])


def fixed_batches(data_dir, split, block_size, batch_size, n_batches, seed=1234):
    """A fixed list of n_batches (x, y) batches (same windows every call): the validation set."""
    b = Batches(data_dir, split, block_size, batch_size, seed)
    return [b.next() for _ in range(n_batches)]
