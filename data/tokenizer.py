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


def codec(tokenizer, where):
    """(encode, decode) for a tokenizer dict as checkpoints carry it: {'tokenizer': 'char', 'chars':
    ...} (token i is chars[i]) or {'tokenizer': 'gpt2'}. encode('') is [<|endoftext|>] for GPT-2
    (what a document starts after), and a character outside a character vocabulary is one line."""
    kind = tokenizer.get('tokenizer')
    if kind == 'char' and isinstance(tokenizer.get('chars'), str):
        chars = tokenizer['chars']
        stoi = {c: i for i, c in enumerate(chars)}

        def encode(text):
            unknown = sorted(set(text) - stoi.keys())
            if unknown:
                raise SystemExit(f"error: the text has characters the model's vocabulary lacks: "
                                 f"{', '.join(map(repr, unknown[:10]))}; use only characters of its "
                                 f"training text")
            return [stoi[c] for c in text]
        # an id past the vocabulary (a model wider than its data) prints as U+FFFD
        return encode, lambda ids: ''.join(chars[i] if i < len(chars) else '\ufffd' for i in ids)
    if kind == 'gpt2':
        enc = gpt2()
        encode = lambda text: enc.encode(text, allowed_special={'<|endoftext|>'}) if text else [enc.eot_token]
        return encode, lambda ids: enc.decode([i for i in ids if i < enc.n_vocab])
    raise SystemExit(f"error: {where} does not say which tokenizer it was trained with (a checkpoint from "
                     f"before checkpoints kept it, or from a dataset whose meta.json names none); "
                     f"train it again with the current train.py")


def byte_chars():
    """GPT-2's printable stand-in for each byte, as its vocab.json and merges.txt write tokens:
    printable Latin-1 bytes stand for themselves, the other 68 for the characters from U+0100 on."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    out, n = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


@functools.lru_cache(maxsize=None)
def vocab_and_merges(path=RANKS_FILE):
    """GPT-2's vocab.json (token text -> id) and merges.txt lines, derived from tiktoken's ranks, the
    files transformers' GPT2Tokenizer reads. tiktoken keeps only each token's rank; its merge is
    recovered by running BPE on the token's bytes with the merges ranked below it, which must end in
    exactly two pieces (their concatenation is the token)."""
    ranks = tiktoken.load.load_tiktoken_bpe(path)
    shown = byte_chars()
    text = lambda bs: ''.join(shown[b] for b in bs)
    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab['<|endoftext|>'] = EOT
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:   # merge the lowest-ranked adjacent pair, as BPE does
            found = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:]))
                     if ranks.get(a + b, rank) < rank]
            if not found:
                break
            i = min(found)[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise SystemExit(f"error: {path} is not a BPE ranks file (token {rank} has no merge); "
                             f"restore it with `git checkout -- data/gpt2.tiktoken`")
        merges.append(f"{text(parts[0])} {text(parts[1])}")
    return vocab, merges
