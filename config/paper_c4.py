# The paper's experiments on C4 (section 4.1, Table 1, appendix A.2) with GPT-2 blocks: both bases
# (300M, 800M), each trained to 80 and to 20 tokens per parameter, and PC and HPR from each at 35,
# 50 and 65% compression. Every number of the grid is in this file; the command line chooses:
#   --preset=300m | 800m          the base size (always)
#   --arm=base | pc | hpr         (default base)
#   --tokens_per_param=20         the 20:1 base: its own run with its own full schedule (arm=base)
#   --compression=0.35|0.5|0.65   the fraction of the base's parameters removed (arms)
#   --max_tokens=2500000000       the arm's retraining tokens (the paper's 1.25B to 10B; default 2.5B)
#   --base_ckpt=out/paper_300m_base20/ckpt.pt   race from the 20:1 base (default: the 80:1 one)
# For example, the 300M rows of Table 1 at 50% after 2.5B tokens:
#   python data/c4/prepare.py --train_shards=163 --val_shards=1     (163 shards hold 24.4B tokens; 446 for 800M)
#   torchrun --standalone --nproc_per_node=8 train.py config/paper_c4.py --preset=300m
#   torchrun --standalone --nproc_per_node=8 train.py config/paper_c4.py --preset=300m --arm=pc --compression=0.5
#   torchrun --standalone --nproc_per_node=8 train.py config/paper_c4.py --preset=300m --arm=hpr --compression=0.5
#
# Where each number comes from: [P] the paper; [A] the authors' runs (github.com/llm-random/nano:
# configs/_trainer/llama.yaml, configs/pc_project/llmr_{300,800}_{comp,prune}.yaml, main.py,
# src/core/schedulers.py, src/projected_compression/compression.py); [O] this project's choice.
# Departures from the authors' runs: GPT-2 blocks (learned positions, biases, GELU, LayerNorm with
# bias, d_ff = 4 n_embd) where theirs are rotary, bias-free, ReLU [O: this project reimplements PC for
# GPT-2]; warmup from lr/(w+1) where theirs starts at a tenth of the peak; the bases' own recipe
# (theirs is not in their nano configs).
#
# Sizes (gpt.param_counts; untied head, so the bases reach their names) and lengths on 8 H100s at
# 40% MFU (gpt.flops_per_token, 989 TFLOP/s each); 262,144 tokens per step:
#   base    layers/heads  n_embd  d_ff  parameters    80:1 tokens, steps, hours   20:1 tokens, steps, hours
#   300m    16/16 [P]     1024    4096  304,992,256   24.4B, 93,077, 3.5          6.1B, 23,270, 0.9
#   800m    24/24 [P]     1536    6144  835,135,488   66.8B, 254,864, 28.0        16.7B, 63,716, 7.0
#   compressed  n_embd/d_ff  parameters   removed   the authors' label      hours at 1.25/2.5/5/7.5/10B tokens
#   300m 35%    768/3072     203,590,656  33.2%     none given [O]          0.12/0.24/0.48/0.72/0.96
#   300m 50%    640/2560     159,181,312  47.8%     "50" [A]                0.09/0.19/0.38/0.57/0.76
#   300m 65%    480/1920     109,567,872  64.1%     "35" [A]                0.07/0.13/0.27/0.40/0.54
#   800m 35%    1152/4608    541,444,608  35.2%     "65" [A]                0.34/0.69/1.37/2.06/2.74
#   800m 50%    960/3840     415,832,832  50.2%     "50" [A]                0.27/0.53/1.07/1.60/2.13
#   800m 65%    768/3072     304,376,832  63.6%     "35" [A]                0.20/0.40/0.80/1.20/1.60
# The authors label a width by the share of parameters it keeps (their "35" keeps 36%: 65% compression).
# Steps per budget: 4,769 / 9,537 / 19,074 / 28,611 / 38,147.
if preset not in ('300m', '800m'):
    raise SystemExit("error: config/paper_c4.py needs --preset=300m or --preset=800m")
if arm not in ('base', 'pc', 'hpr'):
    raise SystemExit(f"error: config/paper_c4.py: --arm={arm} is not an arm; give --arm=base, pc or hpr")
dataset = 'c4'                      # [P]
block_size = 512                    # [A] sequence_length
batch_size = 16                     # 16 x 512 x 32 = 262,144 tokens per step: [A] batch_size 512 x 512
grad_accum = 32
grad_clip = 1.0                     # [A] gradient_clipping; PC's norm counts P and R, as theirs
weight_decay = 0.1                  # [A]
eval_interval = 1000                # [O]
eval_iters = 100                    # [O]
log_interval = 50                   # [O]
compile = True                      # [O]
if arm == 'base':
    out_dir = f"out/paper_{preset}_base{tokens_per_param or 80:g}"
    tokens_per_param = tokens_per_param or 80.0     # [P] 80:1 and 20:1 (--tokens_per_param=20)
    learning_rate = 6e-4 if preset == '300m' else 3e-4   # [O] GPT-3's rates for these sizes
    min_lr = learning_rate / 10     # [O]
    warmup_iters = 2000             # [O]
    beta2 = 0.95                    # [O] GPT-3's
else:
    base_ckpt = base_ckpt or f"out/paper_{preset}_base80/ckpt.pt"
    max_tokens = max_tokens or 2_500_000_000
    out_dir = f"{base_ckpt.rsplit('/', 1)[0]}_{arm}{round(compression * 100)}_{max_tokens / 1e9:g}B"
    # widths: pc.compressed_config takes the width on this grid closest to the compression; these
    # land on the authors' widths (the table above) [A]
    width_multiple = 32 if (preset, compression) == ('300m', 0.65) else 64
    importance = 'magnitude'        # [A] their magnitude (pc.py); which importance file each of
                                    # their runs loaded is not in the configs (see README)
    residual = True                 # [P] the residual R
    beta2 = 0.999                   # [A] torch's AdamW default
    warmup_iters = 80               # [A] 80 steps, at every length
    decay_projections = True        # [A] their AdamW decays every trained tensor:
    decay_vectors = True            # P, R, LayerNorm gains
    # learning rates per arm and level [A]: HPR 2^-12 at "50", 2^-11 at "35" (and at "20"); no HPR
    # rate for "65" (35% compression): the "50" rate [O]; PC: "probably near 2^-14" (llmr_800_comp.yaml)
    _rates = {'hpr': {0.35: 2 ** -12, 0.5: 2 ** -12, 0.65: 2 ** -11}, 'pc': {0.35: 2 ** -14, 0.5: 2 ** -14, 0.65: 2 ** -14}}
    if compression not in _rates.get(arm, {}):
        raise SystemExit(f"error: config/paper_c4.py has rates for --compression=0.35, 0.5 and 0.65 only")
    learning_rate = _rates[arm][compression]
    min_lr = learning_rate / 10     # [A] final_lr_fraction 0.1
