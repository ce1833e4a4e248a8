# The PC and HPR arms of compare.py (both arms use this file; compare.py sets arm, base_ckpt,
# compression and max_iters). Same data, batch, optimizer, schedule and evaluation for both.
dataset = 'shakespeare_char'
block_size = 128
batch_size = 32
grad_accum = 1
importance = 'magnitude'
residual = True
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 50
weight_decay = 0.1
eval_interval = 100
eval_iters = 20
log_interval = 10
