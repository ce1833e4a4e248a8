"""
transformers' configuration for this project's compressed GPT-2 (written by export.py next to
config.json; loaded with trust_remote_code=True). It is GPT-2's config with two widths made
independent of n_embd: the attention width n_head * head_dim and the MLP width n_inner. A model that
Projected Compression or hard pruning shrank keeps its base's attention width while n_embd shrinks,
which transformers' own GPT2Config cannot say.
"""
from transformers import PretrainedConfig


class GPTWidthsConfig(PretrainedConfig):
    model_type = 'gpt2_independent_widths'
    attribute_map = {'hidden_size': 'n_embd', 'num_hidden_layers': 'n_layer',
                     'num_attention_heads': 'n_head', 'max_position_embeddings': 'n_positions'}

    def __init__(self, vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 head_dim=64, n_inner=3072, bias=True, layer_norm_epsilon=1e-5,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.n_layer, self.n_head, self.head_dim, self.n_inner = n_layer, n_head, head_dim, n_inner
        self.bias, self.layer_norm_epsilon = bias, layer_norm_epsilon
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
