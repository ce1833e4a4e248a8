# The embedded-default base: a character-level GPT on the complete works of Shakespeare, sized so
# that 2 CPU cores train it to 40 tokens per parameter in about 6 minutes (the paper finds PC's
# advantage over hard pruning on well-trained bases, so the base sees many tokens per parameter):
# 356,064 parameters, 14.2M tokens, 3,478 steps of 32 x 128 characters, about 0.1 s each here.
#   python data/shakespeare_char/prepare.py
#   python train.py config/base_shakespeare_char.py
arm = 'base'
out_dir = 'out/base_shakespeare_char'
dataset = 'shakespeare_char'
block_size = 128
batch_size = 32
grad_accum = 1
n_layer = 3
n_head = 3
n_embd = 96
dropout = 0.0
tokens_per_param = 40.0
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 100
eval_interval = 500
eval_iters = 20
log_interval = 100
early_ckpt_frac = 0.25    # also keep the base at a quarter of its tokens (ckpt_early.pt)
