# HPR (hard pruning with retraining: the kept slices, trained as an ordinary GPT),
# the paper's 800M base at 50% compression on C4: n_embd 1536 -> 960, d_ff 6144 -> 3840
# (multiples of 64), 835,135,488 -> 415,832,832 parameters, 50.2% removed.
# Tokens per step: 16 sequences x 512 tokens x grad_accum 32 = 262,144. The paper's token budgets:
#    1.25B tokens: --max_tokens=1250000000  (4,769 steps, about 0.3 h on 8 H100s at 40% MFU)
#     2.5B tokens: --max_tokens=2500000000  (9,537 steps, about 0.5 h on 8 H100s at 40% MFU)
#       5B tokens: --max_tokens=5000000000  (19,074 steps, about 1.1 h on 8 H100s at 40% MFU)
#     7.5B tokens: --max_tokens=7500000000  (28,611 steps, about 1.6 h on 8 H100s at 40% MFU)
#      10B tokens: --max_tokens=10000000000  (38,147 steps, about 2.1 h on 8 H100s at 40% MFU)
#   torchrun --standalone --nproc_per_node=8 train.py config/hpr_800m_50.py --max_tokens=2500000000
# The base is config/base_800m.py (ckpt.pt: 80 tokens/param; ckpt_early.pt: 20).
arm = 'hpr'
out_dir = 'out/hpr_800m_50'
dataset = 'c4'
base_ckpt = 'out/base_800m/ckpt.pt'
compression = 0.5
width_multiple = 64
importance = 'magnitude'
block_size = 512
batch_size = 16
grad_accum = 32
max_tokens = 2500000000
learning_rate = 1e-04
min_lr = 1e-05
warmup_iters = 500
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 1000
eval_iters = 100
log_interval = 50
compile = True
