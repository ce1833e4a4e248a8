# The PC and HPR arms of compare.py (compare.py sets arm, base_ckpt, compression and max_iters, and
# with --lrs the learning rate). Same data, batch, schedule, clipping, decay and evaluation for both.
dataset = 'shakespeare_char'
block_size = 128
batch_size = 32
grad_accum = 1
importance = 'magnitude'
residual = True
# optimizer and schedule: the authors' (llm-random/nano: torch's AdamW defaults, weight decay 0.1,
# clipping 1.0, cosine to a tenth of the peak); warmup 20 steps, as their 80 of a 4,001-step run
beta1 = 0.9
beta2 = 0.999
weight_decay = 0.1
decay_projections = True
decay_vectors = True
grad_clip = 1.0
warmup_iters = 20
learning_rate = 1e-3
min_lr = learning_rate / 10
eval_interval = 100
eval_iters = 20
log_interval = 10
