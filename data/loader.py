"""
The one data loader, for every prepared dataset (shakespeare_char, shakespeare, c4).

A prepared dataset is a folder with meta.json and uint16 token shards:
    {"vocab_size": int,
     "splits": {"train": [{"file": "train.bin", "tokens": int, "sha256": str}, ...],
                "val": [...]},
     ...extra keys ("chars" for shakespeare_char)}

Batches are windows of block_size+1 tokens read without replacement: an epoch
visits every window of every shard once, in a seeded random order. Under DDP the
processes read one stream of micro-batches and each takes its own: the ranks' windows
are disjoint, and a step covers the same windows whatever the number of processes,
so a 2-process run trains on exactly the data of a 1-process run with the same
global batch. The position in the stream goes in the checkpoint so a resumed run
continues exactly where it stopped.
"""
import hashlib
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
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.dirname(os.path.abspath(data_dir)) != here:
        return f"{verb} the data/*/prepare.py that writes {data_dir}"   # a folder elsewhere
    if not os.path.isfile(os.path.join(here, name, "prepare.py")):   # a name no prepare.py makes
        known = sorted(d for d in os.listdir(here) if os.path.isfile(os.path.join(here, d, "prepare.py")))
        return f"no data/{name}/prepare.py makes it: the datasets are {', '.join(known)} (or a folder path)"
    return f"{verb} `python data/{name}/prepare.py`"


def meta(data_dir):
    """The parsed meta.json of a prepared dataset."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: dataset not prepared (no {path}): {_run(data_dir)}")
    try:
        with open(path) as f:
            m = json.load(f)
    except (ValueError, OSError) as e:   # not JSON, not a file
        m = {"error": str(e)}
    if not (isinstance(m, dict) and type(m.get("vocab_size")) is int and 0 < m["vocab_size"] <= 2 ** 16
            and isinstance(m.get("splits"), dict)):   # (uint16 shards: at most 65,536 token ids)
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
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("tokens"), int)):
            raise SystemExit(f"error: {data_dir}/meta.json: '{split}' entry {i} has no file name and token "
                             f"count: {rerun}")
        path = os.path.join(data_dir, e["file"])
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} is missing (or not a file): {rerun}")
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
        # a wrong tokenizer or a corrupt file: scan and hash small shards whole at open (a C4 shard,
        # ~170M tokens, would cost seconds in every process; Batches checks every batch it draws instead)
        if len(data) <= SCAN_TOKENS:
            check_ids(data, m["vocab_size"], path, rerun)
            if e.get("sha256") and hashlib.sha256(data.tobytes()).hexdigest() != e["sha256"]:
                raise SystemExit(f"error: {path} does not match the sha256 in meta.json (changed or "
                                 f"corrupt): delete it and {rerun}")
        shards.append(data)
    return shards


class Batches:
    """Endless (x, y) batches; y is x shifted by one token.

    Each epoch cuts every shard into windows of block_size+1 tokens, from a random offset and one
    after the other (neighbours share one token, so every token is a target once), and visits all
    of them in a random order, batch_size at a time (a last, partial micro-batch is skipped); the
    next epoch draws a new offset and order. The micro-batches of all epochs form one stream;
    call k of process `rank` takes micro-batch k * world_size + rank of it."""

    def __init__(self, data_dir, split, block_size, batch_size, seed, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise SystemExit(f"error: rank {rank} is not in [0, world_size={world_size})")
        self.shards = open_dataset(data_dir, split)
        self.data_dir, self.vocab_size = data_dir, meta(data_dir)["vocab_size"]
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size = rank, world_size
        shortest = min((len(s) for s in self.shards), default=0)
        if block_size + 1 > shortest:
            raise SystemExit(f"error: block_size {block_size} is larger than the data in {data_dir} "
                             f"({split}: the shortest shard has {shortest} tokens, a window needs "
                             f"block_size+1): use a smaller block_size")
        fewest = sum((len(s) - block_size) // block_size for s in self.shards)   # at the worst offset
        if fewest < world_size * batch_size:
            raise SystemExit(f"error: {data_dir} ({split}) holds {fewest} windows of {block_size + 1} "
                             f"tokens, fewer than one micro-batch per process ({world_size} x "
                             f"{batch_size}): use a smaller batch_size or block_size")
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.drawn = 0, 0   # drawn: micro-batches of the stream read from this epoch
        self._start_epoch()

    def _start_epoch(self):
        """Draw this epoch's offset and window order; remember the generator state they came from."""
        self.epoch_gen_state = self.gen.get_state()
        T = self.block_size
        self.offset = int(torch.randint(0, T, (1,), generator=self.gen))
        self.n_windows = torch.tensor([(len(s) - 1 - self.offset) // T for s in self.shards])
        self.ends = torch.cumsum(self.n_windows, 0)   # window w lies in the first shard whose end > w
        n = int(self.ends[-1])
        self.order = torch.randperm(n, generator=self.gen, dtype=torch.int32 if n < 2**31 else torch.int64)
        self.per_epoch = n // self.batch_size         # micro-batches in this epoch

    def _next_epoch(self):
        self.drawn -= self.per_epoch
        self.epoch += 1
        self._start_epoch()

    @property
    def epochs(self):
        """Epochs read so far, fractional: the log's measure of how much of the data was seen."""
        return self.epoch + self.drawn / self.per_epoch

    def next(self):
        """(x, y): int64 CPU tensors of shape (batch_size, block_size)."""
        k = self.drawn + self.rank            # this process's micro-batch, counted in this epoch
        self.drawn += self.world_size
        if k >= self.per_epoch:               # it is in the next epoch (a lower rank's is not)
            k -= self.per_epoch
            self._next_epoch()
        B, T = self.batch_size, self.block_size
        w = self.order[k * B:(k + 1) * B].long()
        shard = torch.searchsorted(self.ends, w, right=True)
        start = self.offset + (w - (self.ends - self.n_windows)[shard]) * T
        xy = torch.stack([torch.from_numpy(self.shards[s][i:i + T + 1].astype(np.int64))
                          for s, i in zip(shard.tolist(), start.tolist())])
        if int(xy.max()) >= self.vocab_size:   # big shards are not scanned at open
            check_ids(xy.numpy(), self.vocab_size, f"a shard of {self.data_dir}", _run(self.data_dir, "re-run"))
        if self.drawn >= self.per_epoch:      # this call used up the epoch, for every process alike
            self._next_epoch()
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    def state_dict(self):
        # tensors and ints only: fine for torch.load(weights_only=True)
        return {"epoch": self.epoch, "drawn": self.drawn, "epoch_generator": self.epoch_gen_state}

    def load_state_dict(self, state):
        self.gen.set_state(state["epoch_generator"])
        self._start_epoch()   # the same offset and order as when the epoch began
        self.epoch, self.drawn = state["epoch"], state["drawn"]


def fixed_batches(data_dir, split, block_size, batch_size, n_batches, seed=1234):
    """A fixed list of n_batches (x, y) batches (same windows every call): the validation set."""
    b = Batches(data_dir, split, block_size, batch_size, seed)
    return [b.next() for _ in range(n_batches)]
