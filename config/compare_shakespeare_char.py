# The PC and HPR arms of compare.py (compare.py sets arm, base_ckpt, compression and max_iters, and
# with --lrs the learning rate). Same data, batch, schedule, clipping, decay and evaluation for both;
# each arm at its own learning rate.
dataset = 'shakespeare_char'
block_size = 128
batch_size = 32
grad_accum = 1
importance = 'magnitude'            # the authors' magnitude (pc.py)
residual = True
# optimizer and schedule: the authors' (llm-random/nano: torch's AdamW with its default betas, weight
# decay 0.1 on every trained tensor, P and LayerNorm gains included, clipping 1.0 over the trained
# tensors, cosine to a tenth of the peak); warmup 20 steps, as their 80 of a 4,001-step run
beta1 = 0.9
beta2 = 0.999
weight_decay = 0.1
decay_projections = True
decay_vectors = True
grad_clip = 1.0
warmup_iters = 20
eval_interval = 100
eval_iters = 20
log_interval = 10
# Each arm's learning rate: its best held-out rate after 1,000 steps, per base and level, of the sweep
#   python compare.py --levels=0.35,0.5,0.65,0.7,0.9 --budgets=1000 --lrs=2^-12,2^-11,2^-10,2^-9,2^-8,2^-7,2^-6,2^-5 --jobs=2 --out_dir=out/sweep
#   python compare.py --levels=0.35,0.5,0.65 --early=True --budgets=1000 --lrs=2^-11,2^-10,2^-9,2^-8,2^-7,2^-6,2^-5 --jobs=2 --out_dir=out/sweep
# (README: the sweep; every best is inside its grid). The 500-step runs use the same rates. A level
# between these takes the nearest one's rates; compare.py's early bases (<base_dir>_early, and the
# mid-schedule ckpt_early.pt) take the early base's, any other base (--base) the final base's.
_rates = {
    ('final', 'hpr'): {0.35: 2 ** -10, 0.5: 2 ** -9, 0.65: 2 ** -8, 0.7: 2 ** -8, 0.9: 2 ** -7},
    ('final', 'pc'): {0.35: 2 ** -11, 0.5: 2 ** -10, 0.65: 2 ** -10, 0.7: 2 ** -9, 0.9: 2 ** -7},
    ('early', 'hpr'): {0.35: 2 ** -7, 0.5: 2 ** -7, 0.65: 2 ** -7},
    ('early', 'pc'): {0.35: 2 ** -9, 0.5: 2 ** -9, 0.65: 2 ** -9},
}
_base = 'early' if 'early' in base_ckpt else 'final'
if (_base, arm) in _rates:
    _by_level = _rates[_base, arm]
    learning_rate = _by_level[min(_by_level, key=lambda level: abs(level - compression))]
min_lr = learning_rate / 10
