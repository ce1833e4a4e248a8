"""
A GPT-2 language model in one file, in the style of nanoGPT.

The only departure from GPT-2 is that the three widths are independent config fields: the residual
width `n_embd`, the attention width (`n_head` * `head_dim`) and the MLP hidden width `d_ff`. GPT-2
ties them together (head_dim = n_embd / n_head, d_ff = 4 * n_embd), but a compressed model made by
pc.py keeps the attention width of its base while its residual and MLP widths shrink, and it must
still be an ordinary GPT that trains, samples and saves like any other.

It reads train.py's checkpoints (load_gpt, load_base) and, with safetensors and huggingface_hub
installed (requirements-pretrained.txt), OpenAI's GPT-2 and folders in Hugging Face's GPT-2 layout
(GPT.from_pretrained), and writes that layout (GPT.save_pretrained).
"""
import glob
import hashlib
import importlib
import json
import math
import os
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024      # context length
    vocab_size: int = 50257     # GPT-2 BPE: 50256 merges + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768           # residual width D
    head_dim: int = 0           # 0 means n_embd // n_head (GPT-2's rule)
    d_ff: int = 0               # MLP hidden width F; 0 means 4 * n_embd (GPT-2's rule)
    bias: bool = True           # biases in Linear layers and LayerNorms
    tie_embeddings: bool = True # lm_head shares the token embedding matrix
    dropout: float = 0.0

    def __post_init__(self):
        # checked here, once, so that every way of building a model (train.py, a checkpoint, a
        # pretrained folder, pc.py) refuses a shape it cannot run instead of truncating it
        for name, f in self.__dataclass_fields__.items():
            v, want = getattr(self, name), f.type
            ok = type(v) is want or (want is float and type(v) is int)
            if not ok:
                raise SystemExit(f"error: model config {name}={v!r} should be a {want.__name__}")
        if not 0 <= self.dropout < 1:
            raise SystemExit(f"error: model config dropout={self.dropout} must be in [0, 1)")
        for k in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, k) <= 0:
                raise SystemExit(f"error: model config {k}={getattr(self, k)} must be positive")
        for k in ('head_dim', 'd_ff'):   # 0 means "GPT-2's rule" (below)
            if getattr(self, k) < 0:
                raise SystemExit(f"error: model config {k}={getattr(self, k)} must be positive "
                                 f"(or 0 for GPT-2's rule)")
        if self.head_dim == 0:
            if self.n_head > self.n_embd:
                raise SystemExit(f"error: n_head={self.n_head} is larger than n_embd={self.n_embd}: "
                                 f"use fewer heads or set head_dim")
            if self.n_embd % self.n_head:   # n_embd // n_head would silently drop the remainder
                raise SystemExit(f"error: n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                                 f"choose n_head dividing n_embd, or set head_dim")
            self.head_dim = self.n_embd // self.n_head
        if self.d_ff == 0:
            self.d_ff = 4 * self.n_embd


# The paper's two bases. Section 4.1 gives their layers and heads (16/16 and 24/24) and their names;
# the rest is this project's choice: GPT-2 widths (64 per head, d_ff = 4 * n_embd), the GPT-2
# vocabulary, context 512 and an untied head, which is how they reach their names: about 305M and
# 835M parameters (see param_counts and the README).
PRESETS = {
    '300m': dict(n_layer=16, n_head=16, n_embd=1024, d_ff=4096, block_size=512, vocab_size=50257,
                 tie_embeddings=False),
    '800m': dict(n_layer=24, n_head=24, n_embd=1536, d_ff=6144, block_size=512, vocab_size=50257,
                 tie_embeddings=False),
}


def preset(name, **overrides):
    if name not in PRESETS:
        raise SystemExit(f"error: unknown model preset '{name}'; choose one of {sorted(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


def param_counts(cfg):
    """Exact parameter counts of a GPT with this config, without building it (works for any size).
    Counts every trainable tensor once: a tied lm_head adds nothing, an untied one adds vocab x D.
    'total' is what the paper quotes (embeddings included); 'non_embedding' leaves out the token and
    position embeddings and the untied head."""
    D, A, Fw, V, L = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.d_ff, cfg.vocab_size, cfg.n_layer
    b = 1 if cfg.bias else 0
    ln = D * (1 + b)                                  # LayerNorm weight (+ bias)
    attn = D * 3 * A + b * 3 * A + A * D + b * D      # c_attn, c_proj
    mlp = D * Fw + b * Fw + Fw * D + b * D            # c_fc, c_proj
    c = dict(token_embedding=V * D, position_embedding=cfg.block_size * D,
             blocks=L * (2 * ln + attn + mlp), final_norm=ln,
             lm_head=0 if cfg.tie_embeddings else V * D)
    c['total'] = sum(c.values())
    c['non_embedding'] = c['total'] - c['token_embedding'] - c['position_embedding'] - c['lm_head']
    return c


def flops_per_token(cfg, seq_len=None):
    """Training FLOPs per token (forward + backward): 6 per matrix weight plus attention scores,
    as in the PaLM appendix. Embedding lookups cost nothing; the lm_head matmul does."""
    T = seq_len or cfg.block_size
    c = param_counts(cfg)
    matmul_params = c['blocks'] + cfg.vocab_size * cfg.n_embd
    return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        attn_width = cfg.n_head * cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * attn_width, bias=cfg.bias)
        self.c_proj = nn.Linear(attn_width, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.head_dim, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.d_ff, bias=cfg.bias)
        self.gelu = nn.GELU(approximate='tanh')   # a module, so pc.py can hook its output
        self.c_proj = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # one tensor, two uses; named_parameters() lists it once, as transformer.wte.weight
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):   # GPT-2: scale the residual writes by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size "
                             f"{self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None   # sampling needs the last position only
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Append max_new_tokens sampled tokens to idx (B, T). Samples in eval mode (no dropout),
        then gives every submodule back the mode the caller had it in."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            for _ in range(max_new_tokens):
                idx_cond = idx[:, -self.config.block_size:]
                logits, _ = self(idx_cond)
                logits = logits[:, -1, :] / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float('inf')
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
                idx = torch.cat((idx, idx_next), dim=1)
        finally:
            for m, training in modes:
                m.training = training
        return idx

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """OpenAI's GPT-2 by name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: from the Hugging Face
        Hub, cached) or a local folder in Hugging Face's GPT-2 layout (config.json +
        model.safetensors), as transformers and save_pretrained write it."""
        return load_pretrained(name_or_dir, dropout)[0]

    def save_pretrained(self, out_dir, tokenizer=None):
        """Write out_dir/model.safetensors and out_dir/config.json (each atomically) in Hugging
        Face's GPT-2 layout; from_pretrained reads them back bit for bit. When the widths fit
        transformers' GPT-2 (attention width = n_embd, biases), the folder also loads in
        transformers' GPT2LMHeadModel; otherwise its model_type is gpt.py's own, which transformers
        refuses. `tokenizer` is kept in config.json: {'tokenizer': 'char', 'chars': ...} or
        {'tokenizer': 'gpt2'}."""
        st = _optional('safetensors.torch')
        tensors = {}
        for name, t in self.state_dict().items():
            if name == 'lm_head.weight' and self.config.tie_embeddings:
                continue   # one tensor, stored once under its embedding's name, as transformers does
            t = t.detach().cpu()
            tensors[name] = (t.t() if name.endswith(CONV1D) else t).contiguous()
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"error: could not create {out_dir} ({e.strerror or e}); write to another folder")
        # as bytes, written by write_atomic: a full disk is then an OSError like any other
        weights = st.save(tensors, metadata={'format': 'pt'})
        write_atomic(os.path.join(out_dir, 'model.safetensors'), lambda f: f.write(weights))
        text = json.dumps(hf_config(self.config, tokenizer), indent=2) + '\n'
        write_atomic(os.path.join(out_dir, 'config.json'), lambda f: f.write(text.encode()))
        return out_dir

    def estimate_mfu(self, tokens_per_sec, peak_flops, seq_len=None):
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak."""
        return flops_per_token(self.config, seq_len) * tokens_per_sec / peak_flops


def adamw(named_params, lr, weight_decay, betas, device_type, decays=lambda name, p: p.dim() >= 2):
    """AdamW with weight decay on matrices only (embeddings included, as in nanoGPT); vectors
    (biases, LayerNorm gains) are not decayed. Takes (name, tensor) pairs and a rule, so pc.py can
    reuse it for its own parameters."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [dict(params=[p for n, p in named if decays(n, p)], weight_decay=weight_decay),
              dict(params=[p for n, p in named if not decays(n, p)], weight_decay=0.0)]
    fused = device_type == 'cuda'   # the fused kernel is the fastest on CUDA
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


# ------------------------------------------------------------------------------------------------
# Checkpoints written by train.py: torch.save of a dict, read with weights_only=True

def load_checkpoint(path, map_location='cpu'):
    """Read a checkpoint written by train.py, with one clear line for the usual mistakes."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint '{path}' does not exist; train one with train.py "
                         f"or check the path")
    try:   # memory-mapped: under torchrun the processes share one copy in the page cache
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:   # truncated file, a non-torch file, a pickle with code in it
        raise SystemExit(f"error: '{path}' is not a readable checkpoint ({type(e).__name__}); "
                         f"point at a .pt file written by train.py")
    if not isinstance(ckpt, dict) or 'model_args' not in ckpt or 'model' not in ckpt:
        raise SystemExit(f"error: '{path}' is not a checkpoint written by train.py")
    return ckpt


def gpt_from_state(cfg, state, where):
    """The GPT of `cfg` holding exactly the tensors of `state` (torch names and layout), on their
    device. Built on the meta device, so a big model is neither randomly initialised nor held
    twice; a state that does not fit the config is one line naming the first tensors that differ."""
    with torch.device('meta'):
        model = GPT(cfg)
    want = {k: v.shape for k, v in model.state_dict().items()}
    problems = ([f"missing {k}" for k in sorted(want.keys() - state.keys())] +
                [f"unexpected {k}" for k in sorted(state.keys() - want.keys())] +
                [f"{k} is {tuple(state[k].shape)}, not {tuple(want[k])}" for k in sorted(want.keys() & state.keys())
                 if state[k].shape != want[k]])
    if problems:
        raise SystemExit(f"error: the weights of {where} do not fit its config: "
                         f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}")
    model.load_state_dict(state, assign=True)
    if cfg.tie_embeddings:   # assign made lm_head its own Parameter: tie it again
        model.lm_head.weight = model.transformer.wte.weight
    return model


def gpt_from_checkpoint(ckpt, path):
    """The plain GPT in a checkpoint dict read by load_checkpoint (a base, HPR or merged model)."""
    if ckpt.get('kind', 'gpt') != 'gpt':
        merged = os.path.join(os.path.dirname(path), 'merged.pt')
        raise SystemExit(f"error: '{path}' is a {ckpt['kind']} training checkpoint, not a GPT; "
                         f"load the merged model written next to it ({merged})")
    args = ckpt['model_args']
    if not isinstance(args, dict) or set(args) - set(GPTConfig.__dataclass_fields__):
        raise SystemExit(f"error: '{path}' holds no GPT config (model_args): point at a checkpoint "
                         f"written by train.py")
    return gpt_from_state(GPTConfig(**args), ckpt['model'], f"'{path}'")


def load_gpt(path, map_location='cpu'):
    """A plain GPT from a train.py checkpoint (a base, an HPR run, or a merged PC model)."""
    return gpt_from_checkpoint(load_checkpoint(path, map_location), path)


def write_atomic(path, write):
    """Call write(f) on a temporary file beside `path`, make it durable, then rename it over `path`.
    A crash, a power loss or a full disk at any point leaves the previous file as it was: the
    rename happens only once the bytes are on disk, and the temporary file is removed on failure."""
    tmp = f"{path}.{os.getpid()}.tmp"   # unique to this writer: two processes never share one
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())         # data on disk before any name points at it
        os.replace(tmp, path)
    except BaseException as e:           # Ctrl-C included: never leave a stray temporary file
        try:
            os.remove(tmp)
        except OSError:
            pass
        # full disk, read-only or missing folder, permissions (torch.save reports a failed write as a
        # RuntimeError raised while handling the OSError)
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e, RuntimeError) and \
            isinstance(e.__context__, OSError) and not e.__suppress_context__ else None
        if cause is not None:
            raise SystemExit(f"error: could not write {path} ({cause.strerror or cause}); free some disk "
                             f"space or write to another folder (the previous file, if any, is unchanged)")
        raise
    if os.name == 'posix':               # make the rename itself durable
        try:
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:                  # some file systems cannot sync a folder; the file is synced
            pass


def remove_stale_temporaries(folder, pattern='*.tmp'):
    """Remove the temporary files (`<name>.<pid>.tmp`) that writers killed mid-write left in folder.
    A writer still alive (another process's pid) keeps its own."""
    for tmp in glob.glob(os.path.join(glob.escape(folder), pattern)):
        pid = tmp.rsplit('.', 2)[-2]
        try:
            if pid.isdigit():
                os.kill(int(pid), 0)   # raises if no such process
                continue
        except ProcessLookupError:
            pass
        except PermissionError:        # alive, someone else's
            continue
        os.remove(tmp)


def save_atomic(obj, path):
    """torch.save through write_atomic: a crash or a full disk mid-save keeps the previous file.
    (torch.save into a Python file, not a path: then a full disk is an OSError, not a RuntimeError.)"""
    write_atomic(path, lambda f: torch.save(obj, f))


def gpt_checkpoint(model, **extra):
    """The dict a plain GPT is saved as; load_gpt reads it back."""
    raw = getattr(model, 'module', model)   # unwrap DDP
    raw = getattr(raw, '_orig_mod', raw)    # unwrap torch.compile
    return dict(kind='gpt', model_args=asdict(raw.config), model=raw.state_dict(), **extra)


def file_sha256(*paths):
    """sha256 of the files' bytes, in order (one file: its usual sha256)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Pretrained and exported models: Hugging Face's GPT-2 layout, a folder with config.json and
# model.safetensors. Its tensor names are this file's (transformers saves "transformer.h.0.attn.
# c_attn.weight"; OpenAI's files on the Hub leave out "transformer."), but its four Conv1D matrices
# are stored (in, out), the transpose of nn.Linear's weight. safetensors and huggingface_hub are
# imported only here, so training needs neither (requirements-pretrained.txt).

PRETRAINED = {name: f'openai-community/{name}' for name in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')}
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# model_type of an export that transformers' GPT-2 class cannot hold (attention width != n_embd,
# or no biases): an unknown type, so transformers refuses it instead of misreading it
WIDTHS_MODEL_TYPE = 'gpt2_independent_widths'
GPT2_VOCAB = 50257


def hf_compatible(cfg):
    """Whether transformers' GPT2LMHeadModel can hold this GPT: attention width = n_embd, biases."""
    return cfg.bias and cfg.n_head * cfg.head_dim == cfg.n_embd


def _optional(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"error: pretrained models and exports need safetensors and huggingface_hub "
                         f"({module} is missing): pip install -r requirements-pretrained.txt")


def hf_config(cfg, tokenizer=None):
    """config.json for a GPT: Hugging Face's GPT-2 keys, plus gpt.py's own (head_dim, bias,
    tokenizer), which transformers keeps as unused attributes."""
    ok = hf_compatible(cfg)
    conf = dict(
        model_type='gpt2' if ok else WIDTHS_MODEL_TYPE,
        **({'architectures': ['GPT2LMHeadModel']} if ok else {}),
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
        activation_function='gelu_pytorch_tanh',   # nn.GELU(approximate='tanh'), what this file runs
        layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_embeddings,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        head_dim=cfg.head_dim, bias=cfg.bias, tokenizer=dict(tokenizer or {}))
    if (tokenizer or {}).get('tokenizer') == 'gpt2':
        conf.update(bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1)   # <|endoftext|>
    return conf


def config_from_hf(conf, where, dropout=0.0):
    """GPTConfig from a config.json in the layout above. What a GPT-2 config can say and this GPT
    cannot compute is refused, rather than loaded into a model that computes something else.
    dropout is a training setting, not part of the weights: 0.0 unless asked (as nanoGPT)."""
    kind = conf.get('model_type')
    if kind not in ('gpt2', WIDTHS_MODEL_TYPE):
        raise SystemExit(f"error: {where} holds a model_type={kind!r} model; gpt.py reads GPT-2 "
                         f"(model_type 'gpt2') and its own exports only")
    for key, allowed, default in (('activation_function', ('gelu_new', 'gelu_pytorch_tanh'), 'gelu_new'),
                                  ('layer_norm_epsilon', (1e-5,), 1e-5),
                                  ('scale_attn_weights', (True,), True),
                                  ('scale_attn_by_inverse_layer_idx', (False,), False),
                                  ('add_cross_attention', (False,), False)):
        if conf.get(key, default) not in allowed:
            raise SystemExit(f"error: {where} has {key}={conf[key]!r}, which gpt.py's GPT-2 does not "
                             f"compute (it computes {key}={allowed[0]!r})")
    own = kind == WIDTHS_MODEL_TYPE   # head_dim and bias mean something only in gpt.py's own exports
    return GPTConfig(block_size=conf.get('n_positions', 1024), vocab_size=conf.get('vocab_size', GPT2_VOCAB),
                     n_layer=conf.get('n_layer', 12), n_head=conf.get('n_head', 12),
                     n_embd=conf.get('n_embd', 768), head_dim=conf.get('head_dim', 0) if own else 0,
                     d_ff=conf.get('n_inner') or 0, bias=conf.get('bias', True) if own else True,
                     tie_embeddings=conf.get('tie_word_embeddings', True), dropout=dropout)


def _download(name):
    """The Hub snapshot folder of a pretrained name (huggingface_hub's cache: downloaded once)."""
    hub = _optional('huggingface_hub')
    try:
        return hub.snapshot_download(PRETRAINED[name], allow_patterns=[
            'config.json', 'model.safetensors', 'model.safetensors.index.json', 'model-*.safetensors'])
    except Exception as e:   # no network and not in the cache, a proxy, a full disk, ...
        raise SystemExit(f"error: could not get {name} from the Hugging Face Hub ({type(e).__name__}); "
                         f"without network, run `hf download {PRETRAINED[name]} config.json "
                         f"model.safetensors --local-dir {name}` on a machine with one and pass that folder")


def _weight_files(folder):
    single = os.path.join(folder, 'model.safetensors')
    index = os.path.join(folder, 'model.safetensors.index.json')
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):   # sharded, as transformers saves big models
        with open(index) as f:
            return [os.path.join(folder, name) for name in sorted(set(json.load(f)['weight_map'].values()))]
    if os.path.isfile(os.path.join(folder, 'pytorch_model.bin')):
        raise SystemExit(f"error: '{folder}' has pytorch_model.bin, no model.safetensors: load it in "
                         f"transformers and save_pretrained it again (that writes safetensors)")
    runs = sorted(f for f in os.listdir(folder) if f.endswith('.pt'))   # a train.py run's folder?
    raise SystemExit(f"error: '{folder}' has no model.safetensors: not a model folder in Hugging Face's layout"
                     + (f"; for a checkpoint in it, pass the file ({', '.join(runs)})" if runs else ""))


def load_pretrained(name_or_dir, dropout=0.0):
    """(GPT, where) from a folder in Hugging Face's GPT-2 layout (or one written by save_pretrained)
    or a pretrained name: gpt2, gpt2-medium, gpt2-large, gpt2-xl. where = dict(source=the folder's
    absolute path, files=its weight files, tokenizer=as load_base gives it); no hashing here, so
    sampling from gpt2-xl does not read its 6 GB twice (load_base hashes)."""
    if os.path.isdir(name_or_dir):
        folder = name_or_dir
    elif name_or_dir in PRETRAINED:
        folder = _download(name_or_dir)
    else:
        raise SystemExit(f"error: '{name_or_dir}' is neither a model folder (config.json + "
                         f"model.safetensors) nor a pretrained name ({', '.join(PRETRAINED)})")
    st = _optional('safetensors.torch')
    where = f"'{folder}'"
    try:
        with open(os.path.join(folder, 'config.json')) as f:
            conf = json.load(f)
    except FileNotFoundError:
        runs = sorted(f for f in os.listdir(folder) if f.endswith('.pt'))   # a train.py run's folder?
        raise SystemExit(f"error: {where} has no config.json: not a model folder in Hugging Face's layout"
                         + (f"; for a checkpoint in it, pass the file ({', '.join(runs)})" if runs else ""))
    except ValueError as e:   # bad JSON or bad UTF-8
        raise SystemExit(f"error: {where}/config.json is not valid JSON ({type(e).__name__})")
    if not isinstance(conf, dict):
        raise SystemExit(f"error: {where}/config.json is not a model config")
    cfg = config_from_hf(conf, where, dropout)
    files = _weight_files(folder)
    state = {}
    for path in files:
        try:
            state.update(st.load_file(path))
        except Exception as e:   # truncated or not a safetensors file
            raise SystemExit(f"error: '{path}' is not a readable safetensors file ({type(e).__name__})")
    ours = {}
    for k, t in state.items():
        if k.endswith(('.attn.bias', '.attn.masked_bias')):
            continue   # the causal-mask buffers older transformers saved; not weights
        name = k if k.startswith('transformer.') or k == 'lm_head.weight' else 'transformer.' + k
        t = t.to(torch.float32)   # a half-precision file trains and samples in float32, as every GPT here
        ours[name] = t.t().contiguous() if name.endswith(CONV1D) else t
    if cfg.tie_embeddings and 'transformer.wte.weight' in ours:   # one tensor, stored once
        ours['lm_head.weight'] = ours['transformer.wte.weight']
    model = gpt_from_state(cfg, ours, where)
    tokenizer = conf.get('tokenizer')
    if not isinstance(tokenizer, dict):   # a GPT-2 from elsewhere: its vocabulary says which
        tokenizer = {'tokenizer': 'gpt2'} if cfg.vocab_size == GPT2_VOCAB else {}
    return model, dict(source=os.path.abspath(folder), files=files, tokenizer=tokenizer)


def load_base(spec, map_location='cpu'):
    """(GPT, info) from anything a base can be: a train.py checkpoint (.pt: a base, HPR or merged
    model), a model folder (Hugging Face's GPT-2 layout, or written by save_pretrained) or a
    pretrained name (gpt2, gpt2-medium, gpt2-large, gpt2-xl).
    info = dict(source=absolute path of the .pt or folder the weights came from (for a name: its
    folder in the Hub cache), sha256=of the weights file (the .pt or model.safetensors;
    shards: of their bytes in order),
    tokenizer={'tokenizer': 'char', 'chars': ...} or {'tokenizer': 'gpt2'}, {} when unknown)."""
    spec = str(spec)
    if os.path.isfile(spec) or spec.endswith('.pt'):
        ckpt = load_checkpoint(spec, map_location)
        model = gpt_from_checkpoint(ckpt, spec)
        tokenizer = ckpt.get('tokenizer')
        return model, dict(source=os.path.abspath(spec), sha256=file_sha256(spec),
                           tokenizer=tokenizer if isinstance(tokenizer, dict) else {})
    if not os.path.isdir(spec) and spec not in PRETRAINED:
        raise SystemExit(f"error: '{spec}' is no checkpoint (.pt), model folder (config.json + "
                         f"model.safetensors) or pretrained name ({', '.join(PRETRAINED)})")
    model, where = load_pretrained(spec)
    return model.to(map_location), dict(source=where['source'], sha256=file_sha256(*where['files']),
                                        tokenizer=where['tokenizer'])



def base_sha256(spec):
    """What load_base(spec) gives as info['sha256'], without building the model: a cheap check that
    a base has not changed (a name is resolved in the Hub cache, downloaded only if missing)."""
    spec = str(spec)
    if os.path.isfile(spec) or spec.endswith('.pt'):
        if not os.path.isfile(spec):
            raise SystemExit(f"error: checkpoint '{spec}' does not exist")
        return file_sha256(spec)
    if os.path.isdir(spec):
        return file_sha256(*_weight_files(spec))
    if spec in PRETRAINED:
        return file_sha256(*_weight_files(_download(spec)))
    raise SystemExit(f"error: '{spec}' is no checkpoint (.pt), model folder (config.json + "
                     f"model.safetensors) or pretrained name ({', '.join(PRETRAINED)})")

if __name__ == '__main__':
    # python gpt.py: the parameter counts of the paper's presets, as quoted in the README
    print('| preset | head | total | non-embedding | blocks | token emb. | position emb. | lm_head |')
    print('|---|---|---|---|---|---|---|---|')
    for name in PRESETS:
        for tied in (False, True):
            c = param_counts(preset(name, tie_embeddings=tied))
            print(f"| {name} | {'tied' if tied else 'untied'} | {c['total']:,} | {c['non_embedding']:,} | "
                  f"{c['blocks']:,} | {c['token_embedding']:,} | {c['position_embedding']:,} | {c['lm_head']:,} |")
