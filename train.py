"""
Train a GPT: a base from scratch (arm=base), or a compressed model from a base checkpoint by
Projected Compression (arm=pc) or by hard pruning and retraining (arm=hpr).

    python train.py config/base_shakespeare_char.py
    python train.py config/compare_shakespeare_char.py --arm=pc --max_iters=1000 \
        --base_ckpt=out/base_shakespeare_char/ckpt.pt --out_dir=out/pc_char
    torchrun --standalone --nproc_per_node=4 train.py config/pc_300m_50.py

Settings: the defaults below, then a config file (plain Python assignments), then --key=value.
On CUDA: bf16 autocast, TF32, optional torch.compile, nccl; on CPU: float32, gloo. Under torchrun
every process trains on its own micro-batches of each global batch and DDP averages the gradients.
For PC each process also owns a share of the projections: it pushes dL/dW_c into its own P and R,
steps them, and sends the new W_c to the others (see share_out and share_weights), so the
projection work and memory are divided by the number of processes.

The file reads top to bottom: settings; the schedule, losses and evaluation; the processes and
what they exchange; checkpoints; building a run; one training step; the loop (train).
"""
import ast
import ctypes
import difflib
import glob
import hashlib
import json
import math
import os
import sys
import signal
import time
import uuid
from contextlib import nullcontext
from datetime import timedelta
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import gpt
import pc
from data.loader import Batches, fixed_batches, meta

# ------------------------------------------------------------------------------------------------
# Defaults. Every name here can be set by a config file or --key=value; nothing else can.
arm = 'base'                # base | pc | hpr
out_dir = 'out'
init_from = 'scratch'       # scratch | resume (continue out_dir/ckpt.pt exactly) | a pretrained GPT-2 for
                            # arm=base to train on (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a model folder)
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
head_dim = 0                # 0: n_embd // n_head (GPT-2's rule)
d_ff = 0                    # 0: 4 * n_embd
bias = True
tie_embeddings = True
dropout = 0.0
# compression (arm=pc and arm=hpr)
base_ckpt = ''              # the base: a checkpoint written by arm=base, a model folder, or gpt2* (gpt.load_base)
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
# distillation (arm=pc and arm=hpr): loss = (1 - alpha) CE + alpha T^2 KL(base || student), on the
# frozen base's logits (the teacher)
distill_alpha = 0.0
distill_temperature = 1.0
# evaluation, logging, checkpoints
eval_interval = 250
eval_iters = 20             # fixed validation batches
log_interval = 10
early_ckpt_frac = 0.0       # also keep ckpt_early.pt at this fraction of training (0: don't)
# system
device = 'auto'             # auto | cpu | cuda | cuda:N
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
        except SystemExit as e:   # the config's own one line, or a bare exit
            if str(e.code).startswith('error: '):
                raise
            raise SystemExit(f"error: config file '{path}' fails to run: SystemExit: {e}")
        except Exception as e:
            raise SystemExit(f"error: config file '{path}' fails to run: {type(e).__name__}: {e}")
        for key, value in ns.items():
            assigned = key not in before or type(value) is not type(before[key]) or value != before[key]
            # a setting of any type (a stray comma makes a tuple); other names only if they look like
            # settings (a config may keep helpers: modules, functions, tables)
            if assigned and not key.startswith('_') and (key in DEFAULTS or isinstance(value, (bool, int, float, str))):
                cfg[key] = checked(key, value, path)
    cfg.update(overrides)
    return cfg


# What the numeric settings must be, checked before any work.
POSITIVE = ('block_size', 'batch_size', 'grad_accum', 'eval_interval', 'eval_iters', 'log_interval',
            'importance_batches', 'width_multiple', 'learning_rate', 'distill_temperature')
NOT_NEGATIVE = ('max_iters', 'max_tokens', 'tokens_per_param', 'stop_iter', 'warmup_iters', 'compressed_n_embd',
                'compressed_d_ff', 'min_lr', 'weight_decay', 'grad_clip', 'peak_flops', 'head_dim', 'seed')
MODEL_SHAPE = ('n_layer', 'n_head', 'n_embd', 'head_dim', 'd_ff', 'bias', 'tie_embeddings')   # or a preset
BELOW_ONE = ('beta1', 'beta2', 'dropout', 'early_ckpt_frac', 'compression')   # in [0, 1)
CHOICES = dict(arm=('base', 'pc', 'hpr'), importance=pc.METHODS, proj_dtype=('auto', *PROJ_DTYPES))


def check_settings(cfg):
    """One line for the first impossible setting, before any work; the settings as attributes."""
    for keys, ok, rule in ((POSITIVE, lambda v: v > 0, 'be positive'),
                           (NOT_NEGATIVE, lambda v: v >= 0, 'not be negative'),
                           (BELOW_ONE, lambda v: 0 <= v < 1, 'be in [0, 1)')):
        for key in keys:
            if not ok(cfg[key]):
                why = (": the fraction of the base's parameters to remove (0: give compressed_n_embd or "
                       "compressed_d_ff)" if key == 'compression' else '')
                raise SystemExit(f"error: {key}={cfg[key]} must {rule}{why}")
    for key, value in cfg.items():
        if type(value) is float and not math.isfinite(value):
            raise SystemExit(f"error: {key}={value} must be a finite number")
    if cfg['seed'] >= 2 ** 63:
        raise SystemExit(f"error: seed={cfg['seed']} must be below 2**63")
    if cfg['preset'] and any(cfg[k] != DEFAULTS[k] for k in MODEL_SHAPE):
        shape = ', '.join(f"{k}={cfg[k]}" for k in MODEL_SHAPE if cfg[k] != DEFAULTS[k])
        raise SystemExit(f"error: preset={cfg['preset']!r} sets the model's shape, and so does {shape}: "
                         f"give one or the other")
    if cfg['stop_iter'] and cfg['max_iters'] and cfg['stop_iter'] > cfg['max_iters']:
        raise SystemExit(f"error: stop_iter={cfg['stop_iter']} is after the run's end (max_iters="
                         f"{cfg['max_iters']})")
    if not 0 <= cfg['distill_alpha'] <= 1:
        raise SystemExit(f"error: distill_alpha={cfg['distill_alpha']} must be in [0, 1]")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise SystemExit(f"error: {key}={cfg[key]!r} is not one of {', '.join(allowed)}")
    if cfg['init_from'] not in ('scratch', 'resume', *gpt.PRETRAINED) and not os.path.isdir(cfg['init_from']):
        raise SystemExit(f"error: init_from={cfg['init_from']!r} is not scratch, resume, a pretrained name "
                         f"({', '.join(gpt.PRETRAINED)}) or a model folder")
    if cfg['init_from'] not in ('scratch', 'resume') and cfg['arm'] != 'base':
        raise SystemExit(f"error: init_from={cfg['init_from']!r} continues training a pretrained model with "
                         f"arm=base; to compress it, pass it as base_ckpt")
    if cfg['min_lr'] > cfg['learning_rate']:
        raise SystemExit(f"error: min_lr={cfg['min_lr']} is above learning_rate={cfg['learning_rate']}")
    dev = cfg['device']
    if not (dev in ('auto', 'cpu') or dev == 'cuda' or dev.startswith('cuda:')):
        raise SystemExit(f"error: device='{dev}' is not supported; use auto, cpu or cuda (cuda:N)")
    if dev.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f"error: device='{dev}' but this machine has no CUDA GPU; use --device=auto")
    lengths = {k: cfg[k] for k in ('max_iters', 'max_tokens', 'tokens_per_param') if cfg[k]}
    if len(lengths) != 1:
        raise SystemExit(f"error: give exactly one of max_iters, max_tokens, tokens_per_param (now: "
                         f"{', '.join(f'{k}={v}' for k, v in lengths.items()) or 'none'}); "
                         f"set the others to 0, e.g. --tokens_per_param=0")
    if cfg['distill_alpha'] and cfg['arm'] == 'base':
        raise SystemExit("error: distillation needs a teacher: use it with arm=pc or arm=hpr (the base is the teacher)")
    return SimpleNamespace(**cfg)


# ------------------------------------------------------------------------------------------------
# The schedule, the loss, evaluation

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


def distilled(ce, logits, teacher_logits, alpha, temperature):
    """(1 - alpha) CE + alpha T^2 KL(teacher || student), both softened by T, averaged over tokens.
    T^2 keeps the gradient's scale independent of T (Hinton et al.)."""
    T = temperature
    student = F.log_softmax(logits.float().view(-1, logits.size(-1)) / T, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().view(-1, logits.size(-1)) / T, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction='batchmean')
    return (1 - alpha) * ce + alpha * T * T * kl


@torch.no_grad()
def evaluate(model, batches, device, ctx):
    model.eval()
    losses = []
    for x, y in batches:
        with ctx:
            losses.append(model(x.to(device), y.to(device))[1].float())
    model.train()
    return torch.stack(losses).mean().item()


# ------------------------------------------------------------------------------------------------
# Processes: torchrun's ranks, the projections each one owns, and what they exchange

def start_processes(c):
    """(rank, world, device): one process, or this process's place under torchrun (nccl on CUDA,
    gloo on CPU)."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    dev = ('cuda' if torch.cuda.is_available() else 'cpu') if c.device == 'auto' else c.device
    if c.grad_accum % world:
        raise SystemExit(f"error: grad_accum={c.grad_accum} must be a multiple of the {world} processes")
    if 'RANK' not in os.environ:
        return 0, 1, dev
    if dev.startswith('cuda:'):
        raise SystemExit(f"error: device={dev} under torchrun: use device=cuda, each process takes the "
                         f"GPU of its LOCAL_RANK")
    die_with_launcher()
    if dev == 'cuda':
        dev = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(dev)
    # nccl for CUDA tensors, gloo for the few CPU ones (settings, fingerprints)
    dist.init_process_group(backend='cpu:gloo,cuda:nccl' if dev.startswith('cuda') else 'gloo',
                            timeout=timedelta(minutes=10))
    return int(os.environ['RANK']), world, dev


def die_with_launcher():
    """Ask Linux to kill this process when torchrun, its parent, dies (even by SIGKILL): no worker
    is left behind holding a GPU."""
    if sys.platform.startswith('linux'):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:   # the launcher died before the request was in place
            os._exit(1)


def leave_group():
    """Leave together: a process that tears down its gloo threads while another still talks to it
    (rank 0 merging and saving, say) can abort at exit."""
    dist.barrier()
    dist.destroy_process_group()


def projection_bytes(cost, base_bytes=4):
    """Bytes one matrix's projection holds (pc.projection_costs' counts): its frozen base slice and
    what the backward saves, in the projection dtype (base_bytes: 4 float32, 2 bfloat16: then a copy of
    the second matmul's P too); P and R in float32 with gradients and AdamW's two moments (16 B each)."""
    saved = cost['inter'] + (cost['second_p'] if base_bytes < 4 else 0)
    return base_bytes * (cost['frozen'] + saved) + 16 * (cost['p'] + cost['r'])


def share_out(costs, world, base_bytes=4):
    """{matrix name: the process that owns its projection}, in the order of `costs`. The matrices go
    out largest FLOPs first, each to the process whose larger load grows least: its share of all the
    projection FLOPs, or of all the projection bytes (base slice, P and R with their gradients and
    AdamW moments, the saved intermediate). FLOPs alone would leave the processes holding the big
    embedding slices with far more memory than the others."""
    flops = {n: c['fwd'] + c['bwd'] for n, c in costs.items()}
    nbytes = {n: projection_bytes(c, base_bytes) for n, c in costs.items()}
    F, B = sum(flops.values()), sum(nbytes.values())
    load_f, load_b, owner = [0] * world, [0] * world, {}
    for name in sorted(flops, key=lambda n: -flops[n]):   # sorted is stable: ties keep the given order
        k = min(range(world), key=lambda k: max((load_f[k] + flops[name]) / F, (load_b[k] + nbytes[name]) / B))
        owner[name] = k
        load_f[k], load_b[k] = load_f[k] + flops[name], load_b[k] + nbytes[name]
    return {n: owner[n] for n in costs}


def share_weights(model, owner, rank, world):
    """Send every W_c from the process that owns it to all the others, so every process starts the
    step with the same compressed GPT: one broadcast per process, of all its matrices in one flat
    buffer. This is all PC adds to DDP's traffic: each process receives the W_c it does not own,
    less than one copy of the compressed matrices per step."""
    params = dict(model.named_parameters())
    for src in range(world):
        mats = [params[n] for n, k in owner.items() if k == src]
        if src == rank:
            flat = torch.cat([m.detach().reshape(-1) for m in mats])
        else:
            flat = torch.empty(sum(m.numel() for m in mats), device=mats[0].device)
        dist.broadcast(flat, src)
        if src != rank:
            for m, part in zip(mats, flat.split([m.numel() for m in mats])):
                m.data = part.view_as(m)   # the matrix is its slice of the buffer: no second copy


def clip_gradients(sharded, replicated, max_norm, world, longest=0):
    """torch's clip_grad_norm_ over every trained tensor of every process: the norm of the
    per-tensor gradient norms. Each process contributes its own share of P and R (their norms are
    all it sends, a few floats, padded to `longest`, the most any process has); the replicated
    tensors (DDP's) are counted once. With one process this is clip_grad_norm_ itself, bit for bit."""
    norms = lambda ps: [torch.linalg.vector_norm(p.grad) for p in ps if p.grad is not None]
    mine = norms(sharded)
    if world > 1 and longest:   # (base and HPR have no share: nothing to gather)
        dev = replicated[0].device
        mine = torch.stack(mine) if mine else torch.zeros(0, device=dev)
        padded = torch.cat([mine, mine.new_zeros(longest - len(mine))])   # zeros add nothing
        every = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(every, padded)
        mine = list(torch.cat(every))
    total = torch.linalg.vector_norm(torch.stack(mine + norms(replicated)))
    torch.nn.utils.clip_grads_with_norm_(sharded + replicated, max_norm, total)


def ranks_agree(params, world):
    """True if every process holds bitwise the same tensors (a sha256 of their bytes, compared)."""
    every = [None] * world
    dist.all_gather_object(every, fingerprint(list(params)))
    return len(set(every)) == 1


def fingerprint(value):
    """sha256 of settings, tensors, and dicts and lists of them."""
    h = hashlib.sha256()
    def feed(v):
        if torch.is_tensor(v):
            h.update(f"{v.dtype}{tuple(v.shape)}".encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            for k in sorted(v):
                feed(k)
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                feed(x)
        else:
            h.update(repr(v).encode())
    feed(value)
    return h.hexdigest()


def agree(items, world):
    """Stop every process with the same one line unless they all hold the same `items` (name ->
    value): a run whose processes start from different settings, data or checkpoints would drift
    apart silently, or hang in a collective."""
    if world == 1:
        return
    mine = {k: fingerprint(v) for k, v in items.items()}
    every = [None] * world
    dist.all_gather_object(every, mine)
    differ = [k for k in mine if any(e[k] != mine[k] for e in every)]
    if differ:
        raise SystemExit(f"error: the {world} processes disagree on {', '.join(differ)}: start them all "
                         f"with the same settings, data, base and out_dir")


# ------------------------------------------------------------------------------------------------
# Checkpoints. `ckpt.pt` holds everything but PC's projections: settings, iteration, data position,
# RNG, the kept dimensions, the replicated tensors (a base's or HPR's whole model; PC's vectors) and
# their AdamW state, keyed by name. Each process writes its own P and R (and their AdamW state) to a
# file of its own, named after the iteration, before process 0 writes `ckpt.pt`, which names those
# files: an interruption at any point leaves the previous checkpoint whole.

def optimizer_state(optimizer, named):
    """AdamW's state keyed by tensor name, so a run resumes with any split of the projections."""
    state = optimizer.state_dict()['state']
    by_param = {id(p): n for n, p in named}
    order = [p for g in optimizer.param_groups for p in g['params']]
    return {by_param[id(p)]: state[i] for i, p in enumerate(order) if i in state}


def load_optimizer_state(optimizer, named, saved):
    """Give AdamW back its state by tensor name. A checkpoint written before the first step has none.
    Every tensor is copied: read from a memory-mapped file, AdamW would update it in place there."""
    if not saved:
        return
    by_param = {id(p): n for n, p in named}
    order = [p for g in optimizer.param_groups for p in g['params']]
    missing = [by_param[id(p)] for p in order if by_param[id(p)] not in saved]
    if missing:
        raise SystemExit(f"error: the checkpoint has no optimizer state for {missing[0]} (and "
                         f"{len(missing) - 1} more): it was written by another kind of run")
    sd = optimizer.state_dict()
    sd['state'] = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in saved[by_param[id(p)]].items()}
                   for i, p in enumerate(order)}
    optimizer.load_state_dict(sd)   # moves each to its tensor's device, as torch does


def save_checkpoint(r, path):
    """Write the run's state to `path`, PC's projections each process's own file beside it; never
    non-finite weights, so the last good checkpoint is not replaced by a broken one."""
    named = dict(r.named)
    mine = {n: p.detach() for n, p in named.items() if n.startswith('proj.')}   # PC: this process's P, R
    rest = r.model.state_dict() if r.projected is None else \
        {n: p.detach() for n, p in named.items() if not n.startswith('proj.')}
    checked_ = [*mine.values(), *rest.values(), *r.model.parameters()]   # PC: W_c too (P W P can overflow)
    finite = torch.tensor([float(all(torch.isfinite(t).all() for t in checked_))], device=r.dev)
    if r.world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        raise SystemExit(f"error: non-finite weights at iter {r.it}; {path} is not replaced (it holds "
                         f"the last good state); lower learning_rate or check the data")
    opt = optimizer_state(r.optimizer, r.named)
    token = [uuid.uuid4().hex]   # names this checkpoint in ckpt.pt and in every share of it
    if r.world > 1:
        dist.broadcast_object_list(token, src=0)
    shards = write_shards(r, path, mine, {n: v for n, v in opt.items() if n in mine}, token[0]) if r.projected else []
    if r.master:
        write_main(r, path, rest, {n: v for n, v in opt.items() if n not in mine}, shards, token[0])


def write_shards(r, path, tensors, optim, token):
    """Every process writes its own P and R (and their AdamW state) to `<path>.<iter>.<k>of<n>`; the
    names of all of them, once every one is on disk."""
    shards = [f"{os.path.basename(path)}.{r.it}.{k}of{r.world}" for k in range(r.world)]
    gpt.save_atomic(dict(model=tensors, optimizer=optim, saved=token), os.path.join(r.c.out_dir, shards[r.rank]))
    if r.world > 1:
        dist.barrier()        # every share is on disk before ckpt.pt names it
    return shards


def write_main(r, path, model, optim, shards, token):
    """Process 0 writes `path` itself, naming the shares (with their sizes), then removes older
    checkpoints' shares."""
    sizes = [os.path.getsize(os.path.join(r.c.out_dir, s)) for s in shards]
    gpt.save_atomic(dict(
        kind='pc' if r.projected is not None else 'gpt', model_args=asdict(r.model.config),
        model=model, optimizer=optim, shards=shards, shard_bytes=sizes, owner=r.owner, iter=r.it,
        best_val=r.best_val, config=dict(r.cfg), tokenizer=r.tokenizer, loader=r.train_batches.state_dict(),
        rng=torch.get_rng_state(), keep=r.keep, proj_dtype=r.proj_dtype, saved=token,
        pending=dict(loss=r.loss_sum.item(), steps=r.loss_steps, time=r.train_time), **r.base_info,
        **({'cuda_rng': torch.cuda.get_rng_state()} if r.device_type == 'cuda' else {})), path)
    for old in glob.glob(glob.escape(path) + '.*of*'):
        if os.path.basename(old) not in shards:
            os.remove(old)


def load_shards(ckpt, path, names):
    """The saved P and R (and their AdamW state) of the matrices `names`, from whichever process's
    file holds each; files are memory-mapped, so only these tensors are read."""
    folder, model, optim, files = os.path.dirname(path), {}, {}, {}
    for name in names:
        k = ckpt['owner'][name]
        if k not in files:
            file = os.path.join(folder, ckpt['shards'][k])
            broken = f"error: {file}, a part of {path}, is missing, incomplete or from another checkpoint; " \
                     f"start the run again without init_from=resume"
            if not os.path.isfile(file) or os.path.getsize(file) != ckpt['shard_bytes'][k]:
                raise SystemExit(broken)
            try:
                files[k] = torch.load(file, map_location='cpu', weights_only=True, mmap=True)
            except Exception:
                raise SystemExit(broken)
            if not isinstance(files[k], dict) or files[k].get('saved') != ckpt['saved']:
                raise SystemExit(broken)
        prefix = f"proj.{name.replace('.', '_')}."
        model.update({n: t for n, t in files[k]['model'].items() if n.startswith(prefix)})
        optim.update({n: s for n, s in files[k]['optimizer'].items() if n.startswith(prefix)})
    return model, optim


def load_projected(path, map_location='cpu'):
    """The ProjectedGPT of a PC run's checkpoint, rebuilt over the base it names (all projections
    in this process), with its W_c materialized."""
    ckpt = gpt.load_checkpoint(path, map_location)
    if ckpt.get('kind') != 'pc':
        raise SystemExit(f"error: '{path}' is not a PC checkpoint; use gpt.load_gpt for a plain GPT")
    if not os.path.exists(ckpt['base_ckpt']) or gpt.base_sha256(ckpt['base_ckpt']) != ckpt['base_sha256']:
        raise SystemExit(f"error: the base {ckpt['base_ckpt']} that '{path}' was trained from is "
                         f"missing or has changed")
    base, _ = gpt.load_base(ckpt['base_ckpt'], map_location)
    projected = pc.ProjectedGPT(base, ckpt['keep'], residual=ckpt['config']['residual'],
                                proj_dtype=PROJ_DTYPES[ckpt['proj_dtype']])
    shares, _ = load_shards(ckpt, path, projected.names)
    trained = dict(projected.named_trainable())
    with torch.no_grad():
        for n, t in {**ckpt['model'], **shares}.items():
            trained[n].copy_(t)
    projected.materialize(with_graph=False)
    return projected


# ------------------------------------------------------------------------------------------------
# Building a run: processes, data, the model (and for PC its owned projections), optimizer, state

@dataclass
class Run:
    """Everything the loop needs, as setup() builds it, in one place."""
    c: SimpleNamespace              # the settings, as attributes (c.batch_size)
    cfg: dict                       # the same, as given: what checkpoints and summaries record
    rank: int                       # this process under torchrun (0 alone)
    world: int                      # the number of processes
    dev: str                        # 'cpu', 'cuda:<local rank>'
    device_type: str = ''           # 'cpu' or 'cuda'
    ctx: object = None              # bf16 autocast on CUDA, nothing on CPU
    proj_dtype: str = ''            # the frozen base's and the projection matmuls' dtype, resolved
    accum: int = 1                  # this process's micro-batches per step
    tokenizer: dict = None          # how ids map to text, kept in every checkpoint
    ckpt_path: str = ''
    log_path: str = ''
    # the model
    model: object = None            # the GPT being trained (PC: the compressed GPT, matrices = W_c)
    projected: object = None        # PC: pc.ProjectedGPT, this process's share of the projections
    teacher: object = None          # distillation: the frozen base, in eval mode
    keep: dict = None               # the kept dimensions (PC, HPR)
    owner: dict = None              # PC: {matrix name: the process that owns its projection}
    base_info: dict = None          # PC, HPR: the base's path and sha256
    runner: object = None           # what runs the micro-batches: the model, compiled, under DDP
    # training
    named: list = None              # (name, tensor) of everything this process's AdamW updates
    optimizer: object = None
    sharded: list = None            # PC: this process's P and R (the others hold theirs)
    replicated: list = None         # the trained tensors every process holds (DDP's)
    longest_share: int = 0          # PC: the most P and R tensors any process holds
    n_model: int = 0                # parameters of the model trained (what the length counts)
    n_trainable: int = 0            # tensors' elements trained, over all processes
    train_batches: object = None
    val_batches: list = None
    tokens_per_iter: int = 0
    total: int = 0                  # optimizer steps of the whole run
    stop: int = -1                  # stop_iter, or -1
    early_iter: int = -1            # where ckpt_early.pt is kept, or -1
    peak: float = 0.0               # one GPU's peak FLOP/s, for MFU (0: none)
    # where it stands
    it: int = 0
    best_val: float = float('inf')
    val: float = None
    loss_sum: object = None         # training losses since the last log record (a tensor, no sync)
    loss_steps: int = 0
    train_time: float = 0.0

    @property
    def master(self):
        return self.rank == 0

    def say(self, *a, **k):
        if self.master:
            print(*a, **k)


# dense bf16 FLOP/s of one GPU, for MFU (peak_flops=... for others)
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def setup(cfg):
    """The Run: settings checked, processes joined and in agreement, data, model, optimizer, and
    where the run stands (fresh, or from its checkpoint)."""
    c = check_settings(cfg)
    rank, world, dev = start_processes(c)
    agree(dict(settings=cfg), world)   # first: every later collective depends on the settings
    r = Run(c=c, cfg=cfg, rank=rank, world=world, dev=dev, accum=c.grad_accum // world,
            device_type='cuda' if dev.startswith('cuda') else 'cpu')
    r.ctx = torch.autocast(r.device_type, dtype=torch.bfloat16) if r.device_type == 'cuda' else nullcontext()
    if r.device_type == 'cuda':   # as nanoGPT: float32 matmuls (W_c with proj_dtype=float32) on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    r.proj_dtype = c.proj_dtype if c.proj_dtype != 'auto' else 'bfloat16' if r.device_type == 'cuda' else 'float32'
    if r.master:
        check_writable(c.out_dir)
    torch.manual_seed(c.seed)
    data_dir = (c.dataset if os.sep in c.dataset else
                os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', c.dataset))
    data_meta = meta(data_dir)
    # how token ids map to text, kept in every checkpoint so sample.py needs no dataset folder:
    # {'tokenizer': 'char', 'chars': '...'} or {'tokenizer': 'gpt2'} ({} for a dataset that says nothing)
    r.tokenizer = {k: data_meta[k] for k in ('tokenizer', 'chars') if k in data_meta}
    r.ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    r.log_path = os.path.join(c.out_dir, 'metrics.jsonl')
    resume = gpt.load_checkpoint(r.ckpt_path) if c.init_from == 'resume' else None
    if resume is not None:
        check_resume(r, resume)
    build_model(r, resume, data_dir, data_meta['vocab_size'])

    r.named = r.projected.named_trainable() if r.projected is not None else list(r.model.named_parameters())
    r.optimizer = gpt.adamw(r.named, c.learning_rate, c.weight_decay, (c.beta1, c.beta2), r.device_type,
                            decays=lambda n, p: decays(n, p, c))
    r.sharded = [p for n, p in r.named if n.startswith('proj.')]
    r.replicated = [p for n, p in r.named if not n.startswith('proj.')]
    r.n_model = gpt.param_counts(r.model.config)['total']
    r.n_trainable, r.longest_share = sum(p.numel() for _, p in r.named), len(r.sharded)
    if r.world > 1 and r.projected is not None:   # over every process: P and R elements, tensors
        n = torch.tensor([r.n_trainable - sum(p.numel() for p in r.replicated), len(r.sharded)], device=dev)
        every = [torch.empty_like(n) for _ in range(world)]
        dist.all_gather(every, n)
        r.n_trainable = sum(int(e[0]) for e in every) + sum(p.numel() for p in r.replicated)
        r.longest_share = max(int(e[1]) for e in every)

    if c.pc_naive and c.arm == 'pc':   # what runs the micro-batches: naive PC, or the plain GPT
        if world > 1:
            raise SystemExit("error: pc_naive=True is for single-process checks; drop it under torchrun")
        r.runner = r.projected
    else:
        r.runner = torch.compile(r.model) if c.compile else r.model
        if world > 1:
            r.runner = DDP(r.runner, device_ids=[int(os.environ['LOCAL_RANK'])] if r.device_type == 'cuda' else None)

    r.train_batches = Batches(data_dir, 'train', c.block_size, c.batch_size, c.seed, rank, world)
    r.val_batches = fixed_batches(data_dir, 'val', c.block_size, c.batch_size, c.eval_iters, seed=c.seed + 1)
    r.tokens_per_iter = c.batch_size * c.block_size * c.grad_accum
    r.total = (c.max_iters or math.ceil((c.max_tokens or c.tokens_per_param * r.n_model) / r.tokens_per_iter))
    r.loss_sum = torch.zeros((), device=dev)
    if resume is not None:
        restore(r, resume)
    agree(dict(iteration=r.it, base=r.base_info.get('base_sha256'), kept_dimensions=r.keep,
               data_position=r.train_batches.state_dict(), checkpoint=(resume or {}).get('saved')), world)
    r.stop = c.stop_iter if c.stop_iter > r.it else -1   # a stop already reached is no stop
    r.early_iter = int(c.early_ckpt_frac * r.total) if c.early_ckpt_frac else -1
    gpu = torch.cuda.get_device_name() if r.device_type == 'cuda' else ''
    r.peak = c.peak_flops or next((f for name, f in PEAK_FLOPS.items() if name in gpu), 0.0)
    start_log(r, resume)
    r.say(f"arm={c.arm}: model {r.n_model:,} params ({r.n_trainable:,} trained), {world} process(es) on "
          f"{dev}, {r.tokens_per_iter:,} tokens/iter, {r.total} iters = {r.total * r.tokens_per_iter:,} tokens "
          f"({r.total * r.tokens_per_iter / r.n_model:.1f} per model parameter)")
    return r


def check_writable(folder):
    """One line now, not a traceback at the first checkpoint, if out_dir cannot be a writable
    folder. Nothing is created yet: a run refused later leaves no trace."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        why = 'is a file' if not os.path.isdir(existing) else 'is read-only'
        raise SystemExit(f"error: out_dir={folder} cannot be written: {existing} {why}; pick another out_dir")


def check_tokenizer(model_tokenizer, data_tokenizer, model_name, dataset):
    """A model trained on one tokenizer's ids cannot read another's: refuse when both are known."""
    if model_tokenizer and data_tokenizer and model_tokenizer != data_tokenizer:
        what = lambda t: t['tokenizer'] + (f" ({len(t.get('chars', ''))} characters)" if 'chars' in t else '')
        raise SystemExit(f"error: {model_name} reads {what(model_tokenizer)} tokens but dataset {dataset} is "
                         f"{what(data_tokenizer)} tokens; prepare the data with the model's tokenizer "
                         f"(GPT-2 BPE: data/shakespeare, data/c4)")


# what a resume may change: where it writes and logs, how it runs; nothing that changes what it computes
RESUME_MAY_CHANGE = ('out_dir', 'init_from', 'stop_iter', 'eval_interval', 'log_interval', 'early_ckpt_frac',
                     'device', 'compile', 'peak_flops', 'base_ckpt')   # (the base's sha256 is checked)


def check_resume(r, resume):
    """A resume continues the same run: same arm and every setting that shapes what it computes."""
    c, cfg = r.c, r.cfg
    if resume['config']['arm'] != c.arm:
        raise SystemExit(f"error: {r.ckpt_path} is an arm={resume['config']['arm']} run; "
                         f"resume it with --arm={resume['config']['arm']}")
    changed = [f"{k}={cfg[k]!r} (checkpoint: {resume['config'].get(k)!r})" for k in cfg
               if k not in RESUME_MAY_CHANGE and resume['config'].get(k) != cfg[k]]
    if c.arm == 'pc' and resume.get('proj_dtype') != r.proj_dtype:
        changed.append(f"proj_dtype={r.proj_dtype!r} (checkpoint: {resume.get('proj_dtype')!r})")
    if changed:
        raise SystemExit(f"error: {r.ckpt_path} was trained with other settings: "
                         f"{', '.join(changed)}; resume with the checkpoint's settings")


def build_model(r, resume, data_dir, vocab):
    """r.model (the GPT being trained), r.projected (PC's projections, this process's share),
    r.teacher (the frozen base, when distilling), r.keep, r.owner, r.base_info."""
    c = r.c
    r.owner, r.base_info = {}, {}
    if c.arm == 'base':
        pretrained = None
        if resume is not None:
            mcfg = gpt.GPTConfig(**resume['model_args'])
        elif c.init_from != 'scratch':   # a pretrained GPT-2, trained further, as nanoGPT does
            pretrained, where = gpt.load_pretrained(c.init_from, dropout=c.dropout)
            check_tokenizer(where['tokenizer'], r.tokenizer, c.init_from, c.dataset)
            mcfg = pretrained.config
        elif c.preset:
            mcfg = gpt.preset(c.preset, block_size=c.block_size, dropout=c.dropout)
        else:
            mcfg = gpt.GPTConfig(block_size=c.block_size, vocab_size=vocab, n_layer=c.n_layer,
                                 n_head=c.n_head, n_embd=c.n_embd, head_dim=c.head_dim, d_ff=c.d_ff,
                                 bias=c.bias, tie_embeddings=c.tie_embeddings, dropout=c.dropout)
        r.model = pretrained if pretrained is not None else gpt.GPT(mcfg)
    else:
        if not c.base_ckpt:
            raise SystemExit(f"error: arm={c.arm} needs base_ckpt=<checkpoint of a base run>")
        base, info = gpt.load_base(c.base_ckpt, map_location=r.dev)   # importance and pruning run on dev
        check_tokenizer(info['tokenizer'], r.tokenizer, c.base_ckpt, c.dataset)
        r.base_info = dict(base_ckpt=info['source'], base_sha256=info['sha256'])
        if resume is not None and resume.get('base_sha256') != r.base_info['base_sha256']:
            raise SystemExit(f"error: base checkpoint {c.base_ckpt} is not the one {r.ckpt_path} was "
                             f"trained from ({resume.get('base_ckpt')}); pass that one as base_ckpt")
        if c.block_size > base.config.block_size:
            raise SystemExit(f"error: block_size={c.block_size} is larger than the base model's "
                             f"context ({base.config.block_size}); use --block_size<={base.config.block_size}")
        r.keep = resume['keep'] if resume is not None else choose_dimensions(r, base, data_dir)
        if c.distill_alpha:   # the teacher: the frozen base, in eval mode (PC's projections share its memory)
            r.teacher = base.eval().requires_grad_(False)
        if c.arm == 'hpr':
            r.model = pc.hard_prune(base, r.keep, dropout=c.dropout)
        else:
            shapes = {n: tuple(w.shape) for n, w in base.named_parameters() if w.dim() == 2}
            costs = pc.projection_costs(shapes, len(r.keep['D']), r.keep['F'].shape[1])
            r.owner = share_out(costs, r.world, base_bytes=PROJ_DTYPES[r.proj_dtype].itemsize)
            owned = {n for n, k in r.owner.items() if k == r.rank}
            r.projected = pc.ProjectedGPT(base, r.keep, residual=c.residual, dropout=c.dropout,
                                          proj_dtype=PROJ_DTYPES[r.proj_dtype], owned=owned)
            r.model = r.projected.gpt
        del base
    if c.block_size > r.model.config.block_size:
        raise SystemExit(f"error: block_size={c.block_size} is larger than the model's context "
                         f"({r.model.config.block_size})")
    if vocab > r.model.config.vocab_size:
        raise SystemExit(f"error: dataset {c.dataset} has {vocab} token ids but the model only "
                         f"{r.model.config.vocab_size}; pick a matching dataset")
    r.model.to(r.dev)


def choose_dimensions(r, base, data_dir):
    """The kept dimensions, the same for both arms: same base, importance, seed and calibration
    batches. Process 0 computes them and sends them to the others (GPU kernels need not give every
    process the same bits)."""
    c = r.c
    widths = dict(compression=c.compression or None, n_embd=c.compressed_n_embd or None,
                  d_ff=c.compressed_d_ff or None, multiple_of=c.width_multiple)
    small, achieved = pc.compressed_config(base.config, **widths)
    keep = [None]
    if r.master:
        calib = (fixed_batches(data_dir, 'train', c.block_size, c.batch_size, c.importance_batches,
                               seed=c.seed) if c.importance.startswith('activation') else None)
        keep = [pc.select(pc.importance(base, c.importance, calib, seed=c.seed), small.n_embd, small.d_ff)]
    if r.world > 1:
        dist.broadcast_object_list(keep, src=0)
    r.say(f"compressing to n_embd={small.n_embd}, d_ff={small.d_ff}: "
          f"{achieved:.1%} of the base's parameters removed (asked {c.compression or 'widths'})")
    return keep[0]


def restore(r, resume):
    """Continue exactly where the checkpoint stopped: weights, AdamW state, data position, RNG, the
    not yet logged training losses."""
    if resume['iter'] > r.total:
        raise SystemExit(f"error: {r.ckpt_path} is at iter {resume['iter']}, past this run's length "
                         f"({r.total} iters); give the length it was trained with")
    saved_opt = dict(resume['optimizer'])
    with torch.no_grad():
        if r.projected is None:
            r.model.load_state_dict(resume['model'])
        else:
            shares, shares_opt = load_shards(resume, r.ckpt_path, r.projected.names)
            saved_opt.update(shares_opt)
            trained = dict(r.named)
            for n, t in {**resume['model'], **shares}.items():
                if n in trained:
                    trained[n].copy_(t)
    load_optimizer_state(r.optimizer, r.named, saved_opt)
    r.it, r.best_val = resume['iter'], resume['best_val']
    r.train_batches.load_state_dict(resume['loader'])
    torch.set_rng_state(resume['rng'])
    if r.device_type == 'cuda' and 'cuda_rng' in resume:
        torch.cuda.set_rng_state(resume['cuda_rng'])
    r.loss_sum += resume['pending']['loss']
    r.loss_steps, r.train_time = resume['pending']['steps'], resume['pending']['time']


def start_log(r, resume):
    """Open out_dir for this run (process 0): claim it, so that no second run writes there at the
    same time; remove a finished run's summary.json and merged.pt at once (their presence means
    'finished', and this run is not, yet), and what killed writers left; keep the log up to the
    checkpoint a resume continues from."""
    if not r.master:
        return
    out = r.c.out_dir
    try:
        os.makedirs(out, exist_ok=True)
        claim(out)
        gpt.remove_stale_temporaries(out)
        for stale in ('summary.json', 'merged.pt'):
            if os.path.exists(os.path.join(out, stale)):
                os.remove(os.path.join(out, stale))
        old = open(r.log_path).read().splitlines() if resume is not None and os.path.exists(r.log_path) else []
        kept = []
        for line in old:   # up to the checkpoint: the train record at `it` is the step before it
            try:
                rec = json.loads(line)
                if rec['iter'] < r.it or (rec['iter'] == r.it and rec['kind'] == 'train'):
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue   # a line torn by a kill (or not a record): the run logs that step again
        with open(r.log_path, 'w') as f:
            f.writelines(line + '\n' for line in kept)
    except OSError as e:
        raise SystemExit(f"error: cannot write to out_dir={out} ({e.strerror}); pick a writable folder")


def claim(out_dir):
    """Create out_dir/.lock holding this process's pid, or stop if a live run holds it."""
    lock = os.path.join(out_dir, '.lock')
    try:
        holder = int(open(lock).read())
        os.kill(holder, 0)   # raises if it is gone
        if holder != os.getpid():
            raise SystemExit(f"error: another run (process {holder}) is writing to out_dir={out_dir}; "
                             f"wait for it or pick another out_dir")
    except (OSError, ValueError):   # no lock, an unreadable one, or its run is gone
        pass
    text = str(os.getpid()).encode()
    gpt.write_atomic(lock, lambda f: f.write(text))


def release(out_dir):
    try:
        os.remove(os.path.join(out_dir, '.lock'))
    except OSError:
        pass


def log(r, record):
    if record['kind'] == 'train':
        r.say(f"iter {record['iter']}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
              f"{record['ms_per_iter']:.1f} ms/iter, {record['tok_per_s']:,.0f} tok/s"
              + (f", mfu {record['mfu']:.1%}" if 'mfu' in record else ''))
    else:
        r.say(f"iter {record['iter']}: " + ', '.join(f"{k.replace('_', ' ')} {v:.4f}"
                                                     for k, v in record.items() if 'loss' in k))
    if r.master:
        try:
            with open(r.log_path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as e:   # out_dir removed or full while the run goes on
            raise SystemExit(f"error: cannot write {r.log_path} ({e.strerror}); the last checkpoint is kept")


# ------------------------------------------------------------------------------------------------
# One optimizer step, and the loop

def train_step(r):
    """One optimizer step: the micro-batches through the plain (compressed) GPT, DDP averaging the
    gradients at the last one; PC's dL/dW_c into this process's P and R, once; clip; AdamW."""
    c = r.c
    lr = lr_at(r.it, c, r.total)
    for group in r.optimizer.param_groups:
        group['lr'] = lr
    step_loss = torch.zeros((), device=r.dev)
    for micro in range(r.accum):
        if r.world > 1:   # average gradients across processes on the last micro-batch only
            r.runner.require_backward_grad_sync = micro == r.accum - 1
        if c.dropout:   # dropout masks follow the micro-batch, not the process that runs it
            torch.manual_seed(c.seed + 1 + (r.it * r.accum + micro) * r.world + r.rank)
        x, y = (t.to(r.dev, non_blocking=True) for t in r.train_batches.next())
        with r.ctx:
            logits, loss = r.runner(x, y)
            if c.distill_alpha:
                loss = distilled(loss, logits, r.teacher(x, y)[0], c.distill_alpha, c.distill_temperature)
        (loss / r.accum).backward()
        step_loss += loss.detach() / r.accum
    if r.projected is not None and not c.pc_naive:
        r.projected.backward_projections()   # dL/dW_c -> dL/dP, dL/dR, once per step
    if r.world > 1:   # every process must see a bad step, or the others would wait for it forever
        dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)
        step_loss /= r.world
    if not torch.isfinite(step_loss):
        raise SystemExit(f"error: non-finite loss at iter {r.it}; the last good checkpoint "
                         f"{r.ckpt_path} is kept; lower learning_rate or check the data")
    if c.grad_clip:
        clip_gradients(r.sharded, r.replicated, c.grad_clip, r.world, r.longest_share)
    r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    r.loss_sum += step_loss
    r.loss_steps += 1
    r.it += 1
    return lr


def train(cfg):
    """Run one training job; returns a summary dict (also printed)."""
    r = setup(cfg)
    c = r.c
    while True:
        t0 = time.time()   # a step's time: building and sharing W_c, the micro-batches, the update
        last = r.it >= r.total or r.it == r.stop
        if r.projected is not None and not c.pc_naive:
            r.projected.materialize(with_graph=not last)   # this process's W_c, once (evaluation sees it too)
            if r.world > 1:
                share_weights(r.model, r.owner, r.rank, r.world)
        if r.it % c.eval_interval == 0 or last or r.it == r.early_iter:
            t_eval = time.time()
            evaluate_and_save(r)
            t0 += time.time() - t_eval   # evaluation and checkpoints are not the step's
        if last:
            break
        lr = train_step(r)
        r.train_time += time.time() - t0   # exact: train_step's finiteness check waited for the step
        if r.it % c.log_interval == 0 or r.it == r.total:   # (a stop keeps its pending losses in the checkpoint)
            dt = r.train_time / r.loss_steps
            record = dict(kind='train', iter=r.it, tokens=r.it * r.tokens_per_iter,
                          epochs=round(r.train_batches.epochs, 6), loss=r.loss_sum.item() / r.loss_steps,
                          steps=r.loss_steps, lr=lr, ms_per_iter=1000 * dt, tok_per_s=r.tokens_per_iter / dt,
                          tok_per_s_per_process=r.tokens_per_iter / dt / r.world)
            if r.peak:   # per GPU: each process's tokens against one GPU's peak
                record['mfu'] = r.model.estimate_mfu(record['tok_per_s_per_process'], r.peak, seq_len=c.block_size)
            log(r, record)
            r.loss_sum.zero_()
            r.loss_steps, r.train_time = 0, 0.0
    return finish(r)


def evaluate_and_save(r):
    r.val = evaluate(r.model if not r.c.pc_naive else r.projected, r.val_batches, r.dev, r.ctx)
    if not math.isfinite(r.val):   # (the same on every process: the model and the batches are)
        raise SystemExit(f"error: non-finite validation loss at iter {r.it}; the last good checkpoint "
                         f"{r.ckpt_path} is kept; lower learning_rate or check the data")
    r.best_val = min(r.best_val, r.val)
    record = dict(kind='eval', iter=r.it, tokens=r.it * r.tokens_per_iter, val_loss=r.val)
    if r.world > 1:   # every process must hold the same compressed GPT (PC: after share_weights)
        record['ranks_agree'] = ranks_agree(r.model.parameters(), r.world)
    log(r, record)
    if r.world > 1 and not record['ranks_agree']:
        raise SystemExit(f"error: the processes' models differ at iter {r.it}; the last good "
                         f"checkpoint {r.ckpt_path} is kept")
    save_checkpoint(r, r.ckpt_path)
    if r.it == r.early_iter:
        save_checkpoint(r, os.path.join(r.c.out_dir, 'ckpt_early.pt'))


def finish(r):
    """The merged model (PC), the summary (written last: its presence says the run finished), and
    leaving the process group."""
    c = r.c
    if r.it == r.stop and r.it < r.total:
        r.say(f"stopped at iter {r.it} of {r.total}; continue with --init_from=resume")
        summary = dict(arm=c.arm, out_dir=c.out_dir, iters=r.it, stopped=True)
    else:
        summary = dict(arm=c.arm, out_dir=c.out_dir, iters=r.it, tokens=r.it * r.tokens_per_iter,
                       val_loss=r.val, params=r.n_model, trainable_params=r.n_trainable,
                       model_args=asdict(r.model.config), **r.base_info)
        if r.projected is not None:
            merged = r.projected.merge()
            merged_val = evaluate(merged, r.val_batches, r.dev, r.ctx)
            log(r, dict(kind='merged', iter=r.it, tokens=r.it * r.tokens_per_iter, val_loss=r.val,
                        merged_val_loss=merged_val))
            if r.master:
                gpt.save_atomic(gpt.gpt_checkpoint(merged, config=dict(r.cfg), tokenizer=r.tokenizer),
                                os.path.join(c.out_dir, 'merged.pt'))
            summary['merged_val_loss'] = merged_val
        if r.master:
            summary['config'] = dict(r.cfg)
            text = json.dumps(summary, indent=1).encode()
            gpt.write_atomic(os.path.join(c.out_dir, 'summary.json'), lambda f: f.write(text))
    if r.master:
        release(c.out_dir)
    if r.world > 1:
        del r.runner   # DDP's reducer uses the process group: release it before the group goes
        leave_group()
    return summary


if __name__ == '__main__':
    try:
        summary = train(parse_args(sys.argv[1:]))
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted; the last checkpoint is kept: continue with --init_from=resume")
    if int(os.environ.get('RANK', 0)) == 0:
        print(json.dumps(summary))
    if 'RANK' in os.environ:
        # Under torchrun, leave without Python's exit-time teardown: gloo's threads, still referenced
        # from DDP's autograd hooks, can abort a process while the interpreter tears down ("terminate
        # called without an active exception", about 1 run in 10 on a busy 2-core machine), and
        # torchrun then reports a finished run as failed. Every file is written and synced by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
