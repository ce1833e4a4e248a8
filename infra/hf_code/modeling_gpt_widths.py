"""
transformers' model class for this project's compressed GPT-2 (written by export.py next to
config.json; loaded with AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)).

It computes what gpt.py's GPT computes, restated here because transformers loads this file on its
own, without the project: pre-LayerNorm blocks, causal attention of n_head heads of head_dim each,
a tanh-GELU MLP of n_inner, learned positions. The tensors are the ones in model.safetensors, under
gpt.py's names; the four matrices GPT-2 stores as Conv1D are (in, out), as GPT-2's files hold them.
No key/value cache: generate() recomputes the whole context at every step, as gpt.py's does. A
padded batch (attention_mask with zeros, e.g. left padding for generate) is computed as transformers'
GPT-2 computes it in generate(): positions count real tokens only (unless position_ids are given),
and no token attends to padding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_gpt_widths import GPTWidthsConfig


class InOut(nn.Module):
    """x @ weight + bias with weight stored (in, out), as GPT-2's Conv1D stores it."""
    def __init__(self, n_in, n_out, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x):
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.head_dim
        self.c_attn = InOut(c.n_embd, 3 * c.n_head * c.head_dim, c.bias)
        self.c_proj = InOut(c.n_head * c.head_dim, c.n_embd, c.bias)

    def forward(self, x, mask=None):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.head_dim, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = InOut(c.n_embd, c.n_inner, c.bias)
        self.c_proj = InOut(c.n_inner, c.n_embd, c.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate='tanh'))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.attn = Attention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x, mask=None):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class GPTWidthsForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GPTWidthsConfig
    base_model_prefix = 'transformer'
    _no_split_modules = ['Block']
    _tied_weights_keys = {'lm_head.weight': 'transformer.wte.weight'}

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.n_positions, c.n_embd),
            h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):   # only for tensors a folder lacks; loading overwrites the rest
        if isinstance(module, (nn.Embedding, nn.Linear, InOut)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, InOut) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.transformer.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, **kwargs):
        T = input_ids.shape[1]
        if T > self.config.n_positions:
            raise ValueError(f"sequence length {T} exceeds n_positions={self.config.n_positions}")
        pos, mask = torch.arange(T, device=input_ids.device), None
        if attention_mask is not None and not bool(attention_mask.all()):   # padding
            real = attention_mask.bool()
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)                  # a real token's position
            causal = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=real.device)         # (a pad sees itself: no empty row)
            mask = ((causal & real[:, None, None, :]) | eye)                 # (B, 1, T, T)
        if position_ids is not None:   # as generate() passes them
            pos = position_ids
        x = self.transformer.wte(input_ids) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x, mask)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if labels is not None:   # labels = input_ids, shifted here, as transformers' GPT-2 does
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # no cache: the whole context every step (gpt.py's generate does the same); positions from
        # the mask, in forward
        return dict(input_ids=input_ids, attention_mask=attention_mask)
