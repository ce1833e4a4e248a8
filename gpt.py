"""
A GPT-2 language model in one file, in the style of nanoGPT's model.py.

The only departure from GPT-2 is that the three widths are independent config fields: the residual
width `n_embd`, the attention width (`n_head` * `head_dim`) and the MLP hidden width `d_ff`. GPT-2
ties them together (head_dim = n_embd / n_head, d_ff = 4 * n_embd), but a compressed model made by
pc.py keeps the attention width of its base while its residual and MLP widths shrink, and it must
still be an ordinary GPT that trains, samples and saves like any other.

    python gpt.py        # the parameter counts of the paper's presets

Files (train.py's checkpoints, Hugging Face's layout) are infra/'s business: infra/checkpoint.py
reads and writes checkpoints, infra/hf.py pretrained GPT-2 (GPT.from_pretrained, GPT.save_pretrained).
"""
import math
from dataclasses import dataclass

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
                raise SystemExit(f"error: model config {name}={v!r} should be {'an' if want is int else 'a'} "
                                 f"{want.__name__}")
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
        model.safetensors), as transformers and save_pretrained write it (infra/hf.py)."""
        from infra import hf   # renaming and transposing tensors: not the model's business
        return hf.load_pretrained(name_or_dir, dropout)[0]

    def save_pretrained(self, out_dir, tokenizer=None):
        """This GPT as out_dir/model.safetensors + config.json, Hugging Face's GPT-2 layout (infra/hf.py);
        from_pretrained reads it back bit for bit."""
        from infra import hf
        return hf.save_pretrained(self, out_dir, tokenizer)

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


if __name__ == '__main__':
    # python gpt.py: the parameter counts of the paper's presets, as quoted in the README
    print('| preset | head | total | non-embedding | blocks | token emb. | position emb. | lm_head |')
    print('|---|---|---|---|---|---|---|---|')
    for name in PRESETS:
        for tied in (False, True):
            c = param_counts(preset(name, tie_embeddings=tied))
            print(f"| {name} | {'tied' if tied else 'untied'} | {c['total']:,} | {c['non_embedding']:,} | "
                  f"{c['blocks']:,} | {c['token_embedding']:,} | {c['position_embedding']:,} | {c['lm_head']:,} |")
