"""
The GPT-2 BPE tokenizer, as a tiktoken.Encoding.

tiktoken.get_encoding("gpt2") downloads its files on first use, which fails
offline. The same ranks are kept in the repo (data/gpt2.tiktoken), so when the
download can't be had we build the identical encoding from that file.
"""
import functools
import os
import threading

import tiktoken
import tiktoken.load

RANKS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2.tiktoken")
# GPT-2's pre-tokenization regex (tiktoken's r50k pattern is an equivalent, faster rewrite)
PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256
DOWNLOAD_TIMEOUT = 3.0  # seconds; tiktoken's download has no timeout and can hang behind a firewall


def from_file(path=RANKS_FILE):
    """Build the GPT-2 encoding from a tiktoken ranks file ("base64token rank" per line)."""
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} is missing: restore it with `git checkout -- data/gpt2.tiktoken`")
    ranks = tiktoken.load.load_tiktoken_bpe(path)
    return tiktoken.Encoding(name="gpt2", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)


def _download():
    """tiktoken.get_encoding("gpt2") in a daemon thread, or None if it fails or takes too long."""
    box = []

    def fetch():
        try:
            box.append(tiktoken.get_encoding("gpt2"))
        except Exception:  # offline, proxy, bad cache, ...: the repo file is just as good
            pass

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    t.join(DOWNLOAD_TIMEOUT)
    return box[0] if box else None


@functools.lru_cache(maxsize=None)
def gpt2():
    """The GPT-2 tiktoken.Encoding: tiktoken's own if it can be had, else built from data/gpt2.tiktoken."""
    enc = _download()
    return enc if enc is not None else from_file()
