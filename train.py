"""
Train a GPT: a base from scratch (arm=base), or a compressed model from a base checkpoint by
Projected Compression (arm=pc) or by hard pruning and retraining (arm=hpr).

    python train.py config/base_shakespeare_char.py
    python train.py config/compare_shakespeare_char.py --arm=pc --max_iters=1000 \
        --base_ckpt=out/base_shakespeare_char/ckpt.pt --out_dir=out/pc_char
    torchrun --standalone --nproc_per_node=4 train.py config/pc_300m_50.py

Settings: the defaults below, then a config file (plain Python assignments), then --key=value.
On CUDA: bf16 autocast, optional torch.compile, nccl; on CPU: float32, gloo. Under torchrun every
process trains on its slice of each global batch and DDP averages the gradients.
"""
import ast
import difflib
import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gpt
import pc
from data.loader import Batches, fixed_batches, meta

# ------------------------------------------------------------------------------------------------
# Defaults. Every name here can be set by a config file or --key=value; nothing else can.
arm = 'base'                # base | pc | hpr
out_dir = 'out'
init_from = 'scratch'       # scratch | resume (continue out_dir/ckpt.pt exactly)
# data
dataset = 'shakespeare_char'  # a prepared folder: a name under data/, or a path
block_size = 128            # tokens per sequence
batch_size = 32             # sequences per micro-batch per process
grad_accum = 1              # micro-batches per optimizer step, over all processes together
# model (arm=base): a preset ('300m', '800m') or the fields below
preset = ''
n_layer = 4
n_head = 4
n_embd = 128
d_ff = 0                    # 0: 4 * n_embd
bias = True
tie_embeddings = True
dropout = 0.0
# compression (arm=pc and arm=hpr)
base_ckpt = ''              # checkpoint of the base written by arm=base
compression = 0.5           # fraction of the base's parameters to remove; 0 to give widths instead
compressed_n_embd = 0       # explicit compressed widths (used when compression=0)
compressed_d_ff = 0
width_multiple = 1          # compressed n_embd is a multiple of this (64 suits GPUs)
importance = 'magnitude'    # magnitude | magnitude_scaled | activation | activation_gelu | random (pc.py)
importance_batches = 8      # calibration batches for importance=activation*
residual = True             # PC: train the residual R in W_c = P_out W P_in + R
pc_naive = False            # PC: recompute W_c in every micro-batch (slow; for checks and bench)
proj_dtype = 'auto'         # PC: dtype of the frozen base and of the projection matmuls (P, R and their
                            # optimizer state stay float32). auto: float32 on CPU (exact: step 0 is HPR
                            # bit for bit), bfloat16 on CUDA (half the base's memory, tensor-core speed;
                            # W_c is then rounded as autocast rounds HPR's weights in its matmuls)
# length: give exactly one
max_iters = 0
max_tokens = 0
tokens_per_param = 0.0      # the paper's bases: 20 and 80 tokens per parameter
stop_iter = 0               # stop at this iteration (with a checkpoint) without changing the schedule
# optimizer: AdamW, linear warmup then cosine decay to min_lr
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.1          # on matrices: the base's and HPR's, PC's residuals R
decay_projections = False   # PC: also decay the projections P
decay_vectors = False       # also decay vectors (biases, LayerNorm gains)
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# evaluation, logging, checkpoints
eval_interval = 250
eval_iters = 20             # fixed validation batches
log_interval = 10
early_ckpt_frac = 0.0       # also keep ckpt_early.pt at this fraction of training (0: don't)
# system
device = 'auto'             # auto | cpu | cuda
compile = False             # torch.compile the trained GPT (CUDA)
peak_flops = 0.0            # hardware FLOP/s for MFU; 0: 989e12 on an H100, 312e12 on other CUDA, none on CPU
seed = 1337
PROJ_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith('_') and isinstance(v, (bool, int, float, str))}
# ------------------------------------------------------------------------------------------------


def parse_args(argv):
    """Defaults, then config files (paths, in order), then --key=value overrides; unknown keys are
    errors. A config file runs with every setting so far as its globals, the command line's
    included, so it can choose by them (`if arm == 'pc': ...`); the command line still wins."""
    cfg = dict(DEFAULTS)
    def checked(key, value, where):
        if key not in cfg:
            close = difflib.get_close_matches(key, cfg, n=1)
            raise SystemExit(f"error: unknown config key '{key}' in {where}"
                             + (f"; did you mean '{close[0]}'?" if close else ""))
        want = type(DEFAULTS[key])
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise SystemExit(f"error: {key}={value!r} in {where} should be a {want.__name__}")
        return value
    overrides, files = {}, []
    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise SystemExit(f"error: '{arg}' should look like --{key}=value")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string
            overrides[key] = checked(key, value, 'the command line')
        else:
            files.append(arg)
    for path in files:
        if not os.path.isfile(path):
            raise SystemExit(f"error: config file '{path}' not found (see config/ for examples)")
        before = {**cfg, **overrides}
        ns = dict(before)
        try:
            exec(open(path).read(), ns)
        except Exception as e:
            raise SystemExit(f"error: config file '{path}' fails to run: {type(e).__name__}: {e}")
        for key, value in ns.items():
            assigned = key not in before or type(value) is not type(before[key]) or value != before[key]
            if assigned and not key.startswith('_') and isinstance(value, (bool, int, float, str)):
                cfg[key] = checked(key, value, path)
    cfg.update(overrides)
    return cfg


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def load_projected(path, map_location='cpu'):
    """The ProjectedGPT saved in a PC run's checkpoint, rebuilt over the base it names."""
    ckpt = gpt.load_checkpoint(path, map_location)
    if ckpt.get('kind') != 'pc':
        raise SystemExit(f"error: '{path}' is not a PC checkpoint; use gpt.load_gpt for a plain GPT")
    if not os.path.isfile(ckpt['base_ckpt']) or file_sha256(ckpt['base_ckpt']) != ckpt['base_sha256']:
        raise SystemExit(f"error: the base {ckpt['base_ckpt']} that '{path}' was trained from is "
                         f"missing or has changed")
    base = gpt.load_gpt(ckpt['base_ckpt'], map_location)
    projected = pc.ProjectedGPT(base, ckpt['keep'], residual=ckpt['config']['residual'],
                                proj_dtype=PROJ_DTYPES[ckpt['proj_dtype']])
    projected.load_state_dict(ckpt['model'])   # its GPT matrices were saved as the current W_c
    return projected


def lr_at(it, c, total):
    """The learning rate of step `it` (0 .. total-1): linear warmup to learning_rate, reached at
    it = warmup_iters, then cosine decay to min_lr, reached at the last step, it = total - 1."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    progress = min(1.0, (it - c.warmup_iters) / max(1, total - 1 - c.warmup_iters))
    return c.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


def decays(name, p, c):
    """Which trained tensors AdamW decays (gpt.adamw's rule): every matrix (the base's and HPR's, PC's
    residuals R), PC's projections P only with decay_projections, vectors only with decay_vectors."""
    if p.dim() < 2:
        return c.decay_vectors
    return c.decay_projections or not name.endswith(('.p_in', '.p_out'))


@torch.no_grad()
def evaluate(model, batches, device, ctx):
    model.eval()
    losses = []
    for x, y in batches:
        with ctx:
            losses.append(model(x.to(device), y.to(device))[1].float())
    model.train()
    return torch.stack(losses).mean().item()


def ranks_agree(params, world):
    """True if every process holds bitwise the same values: compares a float64 fingerprint."""
    fp = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                      for p in params]).flatten()
    every = [torch.empty_like(fp) for _ in range(world)]
    dist.all_gather(every, fp)
    return all(torch.equal(every[0], f) for f in every[1:])


def leave_group():
    """Leave together: a process that tears down its gloo threads while another still talks to it
    (rank 0 merging and saving, say) can abort at exit."""
    dist.barrier()
    dist.destroy_process_group()


def train(cfg):
    """Run one training job; returns a summary dict (also printed)."""
    c = SimpleNamespace(**cfg)   # attribute access: c.batch_size
    if c.arm not in ('base', 'pc', 'hpr'):
        raise SystemExit(f"error: unknown arm '{c.arm}'; use base, pc or hpr")
    if c.init_from not in ('scratch', 'resume'):
        raise SystemExit(f"error: init_from='{c.init_from}' should be scratch or resume")
    if c.proj_dtype not in ('auto', *PROJ_DTYPES):
        raise SystemExit(f"error: proj_dtype='{c.proj_dtype}' should be auto or one of {sorted(PROJ_DTYPES)}")
    for key in ('block_size', 'batch_size', 'grad_accum', 'eval_interval', 'eval_iters', 'log_interval'):
        if cfg[key] <= 0:
            raise SystemExit(f"error: {key}={cfg[key]} must be positive")
    for key in ('max_iters', 'max_tokens', 'tokens_per_param', 'stop_iter'):
        if cfg[key] < 0:
            raise SystemExit(f"error: {key}={cfg[key]} must not be negative")
    if not 0 <= c.early_ckpt_frac < 1:
        raise SystemExit(f"error: early_ckpt_frac={c.early_ckpt_frac} must be in [0, 1)")
    if c.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f"error: device='{c.device}' but this machine has no CUDA GPU; use --device=auto")

    # ---- processes and device ----
    ddp = int(os.environ.get('RANK', -1)) != -1
    dev = ('cuda' if torch.cuda.is_available() else 'cpu') if c.device == 'auto' else c.device
    world = int(os.environ.get('WORLD_SIZE', 1))
    if c.grad_accum % world:
        raise SystemExit(f"error: grad_accum={c.grad_accum} must be a multiple of the {world} processes")
    if ddp:
        rank = int(os.environ['RANK'])
        if dev == 'cuda':
            dev = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(dev)
        dist.init_process_group(backend='nccl' if dev.startswith('cuda') else 'gloo')
    else:
        rank, world = 0, 1
    master = rank == 0
    accum = c.grad_accum // world
    device_type = 'cuda' if dev.startswith('cuda') else 'cpu'
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if device_type == 'cuda' else nullcontext()
    if device_type == 'cuda':   # as nanoGPT: float32 matmuls (W_c with proj_dtype=float32) on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    proj_dtype = c.proj_dtype if c.proj_dtype != 'auto' else 'bfloat16' if device_type == 'cuda' else 'float32'
    torch.manual_seed(c.seed)
    data_dir = (c.dataset if os.sep in c.dataset else
                os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', c.dataset))
    data_meta = meta(data_dir)
    vocab = data_meta['vocab_size']
    # how token ids map to text, kept in every checkpoint so sample.py needs no dataset folder:
    # {'tokenizer': 'char', 'chars': '...'} or {'tokenizer': 'gpt2'} ({} for a dataset that says nothing)
    tokenizer = {k: data_meta[k] for k in ('tokenizer', 'chars') if k in data_meta}
    ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    log_path = os.path.join(c.out_dir, 'metrics.jsonl')
    say = print if master else (lambda *a, **k: None)

    # ---- the model being trained ----
    resume = gpt.load_checkpoint(ckpt_path) if c.init_from == 'resume' else None
    if resume is not None and resume['config']['arm'] != c.arm:
        raise SystemExit(f"error: {ckpt_path} is an arm={resume['config']['arm']} run; "
                         f"resume it with --arm={resume['config']['arm']}")
    projected, keep, base_info = None, None, {}
    if resume is not None:   # the settings that shape the model must be the checkpoint's
        shape_keys = (('dataset', 'block_size', 'preset', 'n_layer', 'n_head', 'n_embd', 'd_ff', 'bias',
                       'tie_embeddings') if c.arm == 'base' else
                      ('dataset', 'block_size', 'compression', 'compressed_n_embd', 'compressed_d_ff',
                       'width_multiple', 'importance', 'residual'))
        changed = [f"{k}={cfg[k]!r} (checkpoint: {resume['config'][k]!r})" for k in shape_keys
                   if resume['config'].get(k) != cfg[k]]
        if c.arm == 'pc' and resume.get('proj_dtype') != proj_dtype:
            changed.append(f"proj_dtype={proj_dtype!r} (checkpoint: {resume.get('proj_dtype')!r})")
        if changed:
            raise SystemExit(f"error: {ckpt_path} was trained with other model settings: "
                             f"{', '.join(changed)}; resume with the checkpoint's settings")
    if c.arm == 'base':
        if resume is not None:
            mcfg = gpt.GPTConfig(**resume['model_args'])
        elif c.preset:
            mcfg = gpt.preset(c.preset, block_size=c.block_size, dropout=c.dropout)
        else:
            mcfg = gpt.GPTConfig(block_size=c.block_size, vocab_size=vocab, n_layer=c.n_layer,
                                 n_head=c.n_head, n_embd=c.n_embd, d_ff=c.d_ff, bias=c.bias,
                                 tie_embeddings=c.tie_embeddings, dropout=c.dropout)
        model = gpt.GPT(mcfg)
    else:
        if not c.base_ckpt:
            raise SystemExit(f"error: arm={c.arm} needs base_ckpt=<checkpoint of a base run>")
        base = gpt.load_gpt(c.base_ckpt, map_location=dev)   # importance and pruning run on dev
        base_info = dict(base_ckpt=os.path.abspath(c.base_ckpt), base_sha256=file_sha256(c.base_ckpt))
        if resume is not None and resume.get('base_sha256') != base_info['base_sha256']:
            raise SystemExit(f"error: base checkpoint {c.base_ckpt} is not the one {ckpt_path} was "
                             f"trained from ({resume.get('base_ckpt')}); pass that one as base_ckpt")
        if c.block_size > base.config.block_size:
            raise SystemExit(f"error: block_size={c.block_size} is larger than the base model's "
                             f"context ({base.config.block_size}); use --block_size<={base.config.block_size}")
        if resume is not None:
            keep = resume['keep']
        else:   # same scores for both arms: same base, method, seed and calibration batches
            widths = dict(compression=c.compression or None, n_embd=c.compressed_n_embd or None,
                          d_ff=c.compressed_d_ff or None, multiple_of=c.width_multiple)
            small, achieved = pc.compressed_config(base.config, **widths)
            calib = (fixed_batches(data_dir, 'train', c.block_size, c.batch_size,
                                   c.importance_batches, seed=c.seed)
                     if c.importance == 'activation' else None)
            keep = pc.select(pc.importance(base, c.importance, calib, seed=c.seed),
                             small.n_embd, small.d_ff)
            say(f"compressing to n_embd={small.n_embd}, d_ff={small.d_ff}: "
                f"{achieved:.1%} of the base's parameters removed (asked {c.compression or 'widths'})")
        if c.arm == 'hpr':
            model = pc.hard_prune(base, keep)
        else:
            projected = pc.ProjectedGPT(base, keep, residual=c.residual,
                                        proj_dtype=PROJ_DTYPES[proj_dtype])
            model = projected.gpt
        del base
        mcfg = model.config
    if c.block_size > mcfg.block_size:
        raise SystemExit(f"error: block_size={c.block_size} is larger than the model's context "
                         f"({mcfg.block_size})")
    if vocab > mcfg.vocab_size:
        raise SystemExit(f"error: dataset {c.dataset} has {vocab} token ids but the model only "
                         f"{mcfg.vocab_size}; pick a matching dataset")
    model.to(dev)
    saved_module = projected if projected is not None else model   # what the checkpoint holds
    if resume is not None:
        saved_module.load_state_dict(resume['model'])
    if projected is not None:
        named = projected.named_trainable()
    else:
        named = list(model.named_parameters())
    optimizer = gpt.adamw(named, c.learning_rate, c.weight_decay, (c.beta1, c.beta2), device_type,
                          decays=lambda n, p: decays(n, p, c))
    params = [p for _, p in named]
    n_trainable = sum(p.numel() for p in params)
    n_model = gpt.param_counts(mcfg)['total']

    # ---- what runs the micro-batches: the plain GPT (PC's cost-free step) or naive PC ----
    if c.pc_naive and c.arm == 'pc':
        if ddp:
            raise SystemExit("error: pc_naive=True is for single-process checks; drop it under torchrun")
        runner = projected
    else:
        runner = torch.compile(model) if c.compile else model
        if ddp:
            runner = DDP(runner, device_ids=[int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None)

    # ---- data and length ----
    train_batches = Batches(data_dir, 'train', c.block_size, c.batch_size, c.seed, rank, world)
    val_batches = fixed_batches(data_dir, 'val', c.block_size, c.batch_size, c.eval_iters, seed=c.seed + 1)
    tokens_per_iter = c.batch_size * c.block_size * c.grad_accum
    lengths = {k: cfg[k] for k in ('max_iters', 'max_tokens', 'tokens_per_param') if cfg[k]}
    if len(lengths) != 1:
        raise SystemExit(f"error: give exactly one of max_iters, max_tokens, tokens_per_param (now: "
                         f"{', '.join(f'{k}={v}' for k, v in lengths.items()) or 'none'}); "
                         f"set the others to 0, e.g. --tokens_per_param=0")
    total = (c.max_iters or math.ceil((c.max_tokens or c.tokens_per_param * n_model) / tokens_per_iter))
    say(f"arm={c.arm}: model {n_model:,} params ({n_trainable:,} trained), {world} process(es) on "
        f"{dev}, {tokens_per_iter:,} tokens/iter, {total} iters = {total * tokens_per_iter:,} tokens "
        f"({total * tokens_per_iter / n_model:.1f} per model parameter)")

    it, best_val = 0, float('inf')
    if resume is not None:
        it, best_val = resume['iter'], resume['best_val']
        if it > total:
            raise SystemExit(f"error: {ckpt_path} is at iter {it}, past this run's length ({total} "
                             f"iters); give the length it was trained with")
        optimizer.load_state_dict(resume['optimizer'])
        train_batches.load_state_dict(resume['loader'])
        torch.set_rng_state(resume['rng'])
        if device_type == 'cuda' and 'cuda_rng' in resume:
            torch.cuda.set_rng_state(resume['cuda_rng'])
    if master:
        os.makedirs(c.out_dir, exist_ok=True)
        # a resumed run rewrites the log from its checkpoint on, so the log holds one history
        old = open(log_path).read().splitlines() if resume is not None and os.path.exists(log_path) else []
        # (the train record at `it` is the step before the checkpoint; the eval at `it` runs again)
        kept = [l for l in old if (r := json.loads(l))['iter'] < it or (r['iter'] == it and r['kind'] == 'train')]
        with open(log_path, 'w') as f:
            f.writelines(l + '\n' for l in kept)

    def log(record):
        if record['kind'] == 'train':
            say(f"iter {record['iter']}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                f"{record['ms_per_iter']:.1f} ms/iter, {record['tok_per_s']:,.0f} tok/s"
                + (f", mfu {record['mfu']:.1%}" if 'mfu' in record else ''))
        else:
            say(f"iter {record['iter']}: " + ', '.join(f"{k.replace('_', ' ')} {v:.4f}"
                                                       for k, v in record.items() if 'loss' in k))
        if master:
            with open(log_path, 'a') as f:
                f.write(json.dumps(record) + '\n')

    def save(path):
        if master:
            ckpt = dict(kind='pc' if projected is not None else 'gpt', model_args=asdict(mcfg),
                        model=saved_module.state_dict(), optimizer=optimizer.state_dict(), iter=it,
                        best_val=best_val, config=dict(cfg), tokenizer=tokenizer, loader=train_batches.state_dict(),
                        rng=torch.get_rng_state(), keep=keep, proj_dtype=proj_dtype, **base_info,
                        **({'cuda_rng': torch.cuda.get_rng_state()} if device_type == 'cuda' else {}))
            gpt.save_atomic(ckpt, path)

    stop = c.stop_iter if c.stop_iter > it else -1   # a stop already reached is no stop
    peak = c.peak_flops or (0.0 if device_type == 'cpu' else
                            989e12 if 'H100' in torch.cuda.get_device_name() else 312e12)
    loss_sum, loss_steps, train_time = torch.zeros((), device=dev), 0, 0.0
    early_iter = int(c.early_ckpt_frac * total) if c.early_ckpt_frac else -1
    while True:
        if projected is not None and not c.pc_naive:
            projected.materialize()   # W_c for this step, once (also what evaluation sees)
        if it % c.eval_interval == 0 or it == total or it == early_iter or it == stop:
            val = evaluate(model if not c.pc_naive else projected, val_batches, dev, ctx)
            best_val = min(best_val, val)
            record = dict(kind='eval', iter=it, tokens=it * tokens_per_iter, val_loss=val)
            if ddp:   # every process must hold the same trained tensors (projections included)
                record['ranks_agree'] = ranks_agree(params, world)
            log(record)
            save(ckpt_path)
            if it == early_iter:
                save(os.path.join(c.out_dir, 'ckpt_early.pt'))
        if it >= total or it == stop:
            break

        t0 = time.time()   # time the training step only, not evaluation or checkpoints
        lr = lr_at(it, c, total)
        for group in optimizer.param_groups:
            group['lr'] = lr
        step_loss = torch.zeros((), device=dev)
        for micro in range(accum):
            if ddp:   # average gradients across processes on the last micro-batch only
                runner.require_backward_grad_sync = micro == accum - 1
            x, y = train_batches.next()
            with ctx:
                _, loss = runner(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
            (loss / accum).backward()
            step_loss += loss.detach() / accum
        if projected is not None and not c.pc_naive:
            projected.backward_projections()   # dL/dW_c -> dL/dP, dL/dR, once per step
        if ddp:   # every process must see a bad step, or the others would wait for it forever
            dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)
            step_loss /= world
        if not torch.isfinite(step_loss):
            if master and os.path.exists(ckpt_path):
                msg = f"; the last good checkpoint {ckpt_path} is kept"
            else:
                msg = ""
            raise SystemExit(f"error: non-finite loss at iter {it}{msg}; lower learning_rate or "
                             f"check the data")
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += step_loss
        it += 1
        loss_steps += 1
        train_time += time.time() - t0   # exact: the finiteness check above waited for the step

        if it % c.log_interval == 0 or it == total or it == stop:
            dt = train_time / loss_steps
            record = dict(kind='train', iter=it, tokens=it * tokens_per_iter,
                          loss=loss_sum.item() / loss_steps, steps=loss_steps, lr=lr,
                          ms_per_iter=1000 * dt, tok_per_s=tokens_per_iter / dt)
            if peak:
                record['mfu'] = model.estimate_mfu(tokens_per_iter / dt, peak, seq_len=c.block_size)
            log(record)
            loss_sum.zero_()
            loss_steps, train_time = 0, 0.0

    if it == stop and it < total:
        say(f"stopped at iter {it} of {total}; continue with --init_from=resume")
        if ddp:
            del runner
            leave_group()
        return dict(arm=c.arm, out_dir=c.out_dir, iters=it, stopped=True)
    summary = dict(arm=c.arm, out_dir=c.out_dir, iters=it, tokens=it * tokens_per_iter,
                   val_loss=val, params=n_model, trainable_params=n_trainable,
                   model_args=asdict(mcfg), **base_info)
    if projected is not None and it == total:
        merged = projected.merge()
        merged_val = evaluate(merged, val_batches, dev, ctx)
        log(dict(kind='merged', iter=it, tokens=it * tokens_per_iter, val_loss=val,
                 merged_val_loss=merged_val))
        if master:
            gpt.save_atomic(gpt.gpt_checkpoint(merged, config=dict(cfg), tokenizer=tokenizer),
                            os.path.join(c.out_dir, 'merged.pt'))
        summary['merged_val_loss'] = merged_val
    if master:   # written last: its presence says the run finished (compare.py reuses it)
        summary['config'] = dict(cfg)
        tmp = os.path.join(c.out_dir, 'summary.json.tmp')
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, os.path.join(c.out_dir, 'summary.json'))
    if ddp:
        del runner   # DDP's reducer uses the process group: release it before the group goes
        leave_group()
    return summary


if __name__ == '__main__':
    summary = train(parse_args(sys.argv[1:]))
    if int(os.environ.get('RANK', 0)) == 0:
        print(json.dumps(summary))
