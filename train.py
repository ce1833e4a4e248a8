r"""
Train a GPT: a base from scratch (arm=base), or a compressed model from a base by Projected
Compression (arm=pc) or by hard pruning and retraining (arm=hpr), or the compressed architecture
from random initialisation (arm=scratch: the baseline that says whether compressing a base pays).

    python train.py config/base_shakespeare_char.py
    python train.py config/compare_shakespeare_char.py --arm=pc --max_iters=1000 \
        --base_ckpt=out/base_shakespeare_char/ckpt.pt --out_dir=out/pc_char
    torchrun --standalone --nproc_per_node=4 train.py config/pc_300m_50.py

Settings: the defaults below, then a config file (plain Python assignments), then --key=value.
On CUDA: bf16 autocast, TF32, optional torch.compile, nccl; on CPU: float32, gloo.

The file reads top to bottom: the settings; the schedule and the loss; one training step; the loop;
then how a run is built (the model of each arm). What PC adds to a plain training loop is three
lines: projected.materialize() before the step's micro-batches, projected.backward_projections()
after them, and the optimizer over P and R instead of the matrices (projected: a pc.ProjectedGPT). Under torchrun every process trains on its own
micro-batches of each global batch and DDP averages the gradients; for PC each process also owns a
share of the projections and sends its new W_c to the others (infra/processes.py), so the
projection work and memory are divided by the number of processes. Checkpoints, resume, locks and
the process plumbing live in infra/ (skip it on a first read).
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import costs
import gpt
import pc
from data.loader import Batches, fixed_batches, meta
from infra import checkpoint, files, hf, processes, settings

# ------------------------------------------------------------------------------------------------
# Defaults. Every name here can be set by a config file or --key=value; nothing else can.
arm = 'base'                # base | pc | hpr | scratch (HPR's shapes, random init)
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
base_ckpt = ''              # the base: a checkpoint written by arm=base, a model folder, or gpt2* (infra/checkpoint.load_base)
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
# distillation (arm=pc, hpr, scratch): loss = (1 - alpha) CE + alpha T^2 KL(base || student), on the
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
peak_flops = 0.0            # hardware FLOP/s for MFU; 0: infra/processes.PEAK_FLOPS (H100, H200, A100), else no MFU
seed = 1337
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith('_') and isinstance(v, (bool, int, float, str))}
# ------------------------------------------------------------------------------------------------


def parse_args(argv):
    """Defaults, then config files, then --key=value (infra/settings.parse: one set of rules)."""
    return settings.parse(argv, DEFAULTS, doc=__doc__)


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
# One optimizer step, and the loop

def train_step(r):
    """One optimizer step: the micro-batches through the plain (compressed) GPT, DDP averaging the
    gradients at the last one; PC's dL/dW_c into this process's P and R, once; clip; AdamW."""
    c = r.c
    lr = lr_at(r.it, c, r.total)
    for group in r.optimizer.param_groups:
        group['lr'] = lr
    step_loss = torch.zeros(2, device=r.dev)   # the step's loss and its cross-entropy (equal unless distilling)
    for micro in range(r.accum):
        if r.world > 1:   # average gradients across processes on the last micro-batch only
            r.runner.require_backward_grad_sync = micro == r.accum - 1
        if c.dropout:   # dropout masks follow the micro-batch, not the process that runs it
            torch.manual_seed(c.seed + 1 + (r.it * r.accum + micro) * r.world + r.rank)
        x, y = (t.to(r.dev, non_blocking=True) for t in r.train_batches.next())
        with r.ctx:
            logits, ce = r.runner(x, y)
            loss = ce if not c.distill_alpha else distilled(ce, logits, r.teacher(x, y)[0], c.distill_alpha,
                                                            c.distill_temperature)
        (loss / r.accum).backward()
        step_loss += torch.stack([loss.detach(), ce.detach()]) / r.accum
    if r.projected is not None and not c.pc_naive:
        r.projected.backward_projections()   # dL/dW_c -> dL/dP, dL/dR, once per step
    if r.world > 1:   # every process must see a bad step, or the others would wait for it forever
        processes.average(step_loss)
    if not torch.isfinite(step_loss).all():
        raise SystemExit(f"error: non-finite loss at iter {r.it}; {kept(r)}; lower learning_rate or check the data")
    if c.grad_clip:   # (under torchrun, PC's norm counts every process's P and R)
        processes.clip_gradients(r.sharded, r.replicated, c.grad_clip, r.world if r.projected is not None else 1)
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
                processes.broadcast_wc(r.model, r.owner, r.rank, r.world)
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
                          epochs=round(r.train_batches.epochs, 6), loss=r.loss_sum[0].item() / r.loss_steps,
                          steps=r.loss_steps, lr=lr, ms_per_iter=1000 * dt, tok_per_s=r.tokens_per_iter / dt,
                          tok_per_s_per_process=r.tokens_per_iter / dt / r.world)
            if c.distill_alpha:   # the objective is not CE: log CE too, the measure the other arms log
                record['ce'] = r.loss_sum[1].item() / r.loss_steps
            if r.peak:   # per GPU: each process's tokens against one GPU's peak
                record['mfu'] = r.model.estimate_mfu(record['tok_per_s_per_process'], r.peak, seq_len=c.block_size)
            log(r, record)
            r.loss_sum.zero_()
            r.loss_steps, r.train_time = 0, 0.0
    return finish(r)


def kept(r):
    """What a run stopped by a bad number leaves: its last checkpoint, if it wrote one."""
    return (f"the last good checkpoint {r.ckpt_path} (iter {r.saved_it}) is kept" if r.saved_it >= 0 else
            "it wrote no checkpoint")


def evaluate_and_save(r):
    r.val = evaluate(r.model if not r.c.pc_naive else r.projected, r.val_batches, r.dev, r.ctx)
    if not math.isfinite(r.val):   # (the same on every process: the model and the batches are)
        raise SystemExit(f"error: non-finite validation loss at iter {r.it}; {kept(r)}; lower learning_rate "
                         f"or check the data")
    r.best_val = min(r.best_val, r.val)
    record = dict(kind='eval', iter=r.it, tokens=r.it * r.tokens_per_iter, val_loss=r.val)
    if r.world > 1:   # every process must hold the same compressed GPT (PC: after broadcast_wc)
        record['ranks_agree'] = processes.ranks_agree(r.model.parameters(), r.world)
    log(r, record)
    if r.world > 1 and not record['ranks_agree']:
        raise SystemExit(f"error: the processes' models differ at iter {r.it}; {kept(r)}")
    checkpoint.save_checkpoint(r, r.ckpt_path)
    r.saved_it = r.it
    if r.it == r.early_iter:
        checkpoint.save_checkpoint(r, os.path.join(r.c.out_dir, 'ckpt_early.pt'))


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
                files.save_checked(checkpoint.gpt_checkpoint(merged, config=dict(r.cfg), tokenizer=r.tokenizer),
                                os.path.join(c.out_dir, 'merged.pt'))
            summary['merged_val_loss'] = merged_val
        if r.master:
            summary['config'] = dict(r.cfg)
            files.write_text(os.path.join(c.out_dir, 'summary.json'), json.dumps(summary, indent=1))
    if r.master:
        files.release(c.out_dir)
    if r.world > 1:
        del r.runner   # DDP's reducer uses the process group: release it before the group goes
        processes.leave_group()
    return summary


def log(r, record):
    if record['kind'] == 'train':
        r.say(f"iter {record['iter']}: loss {record['loss']:.4f}"
              + (f" (CE {record['ce']:.4f})" if 'ce' in record else '') + f", lr {record['lr']:.2e}, "
              f"{record['ms_per_iter']:.1f} ms/iter, {record['tok_per_s']:,.0f} tok/s"
              + (f", mfu {record['mfu']:.1%}" if 'mfu' in record else ''))
    else:
        r.say(f"iter {record['iter']}: " + ', '.join(f"{k.replace('_', ' ')} {v:.4f}"
                                                     for k, v in record.items() if 'loss' in k))
    if r.master:
        files.append_record(r.log_path, record)


# ------------------------------------------------------------------------------------------------
# Building a run: processes, data, the model of each arm (for PC its owned projections), optimizer

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
    loss_sum: object = None         # [loss, CE] summed since the last log record (a tensor, no sync)
    loss_steps: int = 0
    train_time: float = 0.0
    saved_it: int = -1              # the iteration of this run's last checkpoint on disk, or -1

    @property
    def master(self):
        return self.rank == 0

    def say(self, *a, **k):
        if self.master:
            print(*a, **k)


def setup(cfg):
    """The Run: settings checked, processes joined and in agreement, data, model, optimizer, and
    where the run stands (fresh, or from its checkpoint)."""
    c = settings.check_train(cfg, DEFAULTS)
    rank, world, dev = processes.start_processes(c)
    processes.agree(dict(settings=cfg), world)   # first: every later collective depends on the settings
    r = Run(c=c, cfg=cfg, rank=rank, world=world, dev=dev, accum=c.grad_accum // world,
            device_type='cuda' if dev.startswith('cuda') else 'cpu')
    r.ctx = torch.autocast(r.device_type, dtype=torch.bfloat16) if r.device_type == 'cuda' else nullcontext()
    if r.device_type == 'cuda':   # as nanoGPT: float32 matmuls (W_c with proj_dtype=float32) on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    r.proj_dtype = settings.resolve_proj_dtype(c.proj_dtype, dev)
    if r.master:
        files.check_writable(c.out_dir)
    torch.manual_seed(c.seed)
    data_dir = settings.data_folder(c.dataset)
    data_meta = meta(data_dir)
    # how token ids map to text, kept in every checkpoint so sample.py needs no dataset folder:
    # {'tokenizer': 'char', 'chars': '...'} or {'tokenizer': 'gpt2'} ({} for a dataset that says nothing)
    r.tokenizer = {k: data_meta[k] for k in ('tokenizer', 'chars') if k in data_meta}
    r.ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    r.log_path = os.path.join(c.out_dir, 'metrics.jsonl')
    resume = checkpoint.load_checkpoint(r.ckpt_path) if c.init_from == 'resume' else None
    if resume is not None:
        checkpoint.check_resume(r, resume)
    build_model(r, resume, data_dir, data_meta['vocab_size'])

    r.named = r.projected.named_trainable() if r.projected is not None else list(r.model.named_parameters())
    r.optimizer = gpt.adamw(r.named, c.learning_rate, c.weight_decay, (c.beta1, c.beta2), r.device_type,
                            decays=lambda n, p: decays(n, p, c))
    r.sharded = [p for n, p in r.named if n.startswith('proj.')]
    r.replicated = [p for n, p in r.named if not n.startswith('proj.')]
    r.n_model = gpt.param_counts(r.model.config)['total']
    r.n_trainable = sum(p.numel() for _, p in r.named)
    if r.world > 1 and r.projected is not None:   # P and R over every process
        r.n_trainable += processes.total(sum(p.numel() for p in r.sharded), dev) - sum(p.numel() for p in r.sharded)

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
    r.loss_sum = torch.zeros(2, device=dev)
    if resume is not None:
        checkpoint.restore(r, resume)
    processes.agree(dict(iteration=r.it, base=r.base_info.get('base_sha256'), kept_dimensions=r.keep,
               data_position=r.train_batches.state_dict(), checkpoint=(resume or {}).get('saved')), world)
    r.stop = c.stop_iter if c.stop_iter > r.it else -1   # a stop already reached is no stop
    r.early_iter = int(c.early_ckpt_frac * r.total) if c.early_ckpt_frac else -1
    r.peak = c.peak_flops or processes.peak_flops(r.device_type)
    if r.master:
        files.open_log(c.out_dir, r.log_path, r.it, resume is not None)
    r.say(f"arm={c.arm}: model {r.n_model:,} params ({r.n_trainable:,} trained), {world} process(es) on "
          f"{dev}, {r.tokens_per_iter:,} tokens/iter, {r.total} iters = {r.total * r.tokens_per_iter:,} tokens "
          f"({r.total * r.tokens_per_iter / r.n_model:.1f} per model parameter)")
    return r


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
            pretrained, where = hf.load_pretrained(c.init_from, dropout=c.dropout)
            settings.check_tokenizer(where['tokenizer'], r.tokenizer, c.init_from, c.dataset)
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
        base, info = checkpoint.load_base(c.base_ckpt, map_location=r.dev)   # importance and pruning run on dev
        checkpoint.check_finite(base, c.base_ckpt)
        settings.check_tokenizer(info['tokenizer'], r.tokenizer, c.base_ckpt, c.dataset)
        r.base_info = dict(base_ckpt=info['source'], base_sha256=info['sha256'])
        checkpoint.check_same_base(r, resume)
        settings.check_fits(base.config, c.block_size, vocab, c.dataset, "the base model's")
        r.keep = resume['keep'] if resume is not None else choose_dimensions(r, base, data_dir)
        if c.distill_alpha:   # the teacher: the frozen base, in eval mode (PC's projections share its memory)
            r.teacher = base.eval().requires_grad_(False)
        if c.arm == 'hpr':
            r.model = pc.hard_prune(base, r.keep, dropout=c.dropout)
        elif c.arm == 'scratch':   # HPR's shapes (the base gives only the widths), GPT-2's random init
            r.model = gpt.GPT(pc.hard_prune(base, r.keep, dropout=c.dropout).config)
        else:
            # who owns which projection: balanced FLOPs and bytes (costs.py, infra/processes.py)
            cost = costs.matrix_costs(costs.matrix_shapes(base.config), len(r.keep['D']), r.keep['F'].shape[1])
            r.owner = processes.assign_owners(cost, r.world, base_bytes=settings.PROJ_DTYPES[r.proj_dtype].itemsize)
            owned = {n for n, k in r.owner.items() if k == r.rank}
            r.projected = pc.ProjectedGPT(base, r.keep, residual=c.residual, dropout=c.dropout,
                                          proj_dtype=settings.PROJ_DTYPES[r.proj_dtype], owned=owned)
            r.model = r.projected.gpt
        del base
    settings.check_fits(r.model.config, c.block_size, vocab, c.dataset)
    r.model.to(r.dev)


def choose_dimensions(r, base, data_dir):
    """The kept dimensions, the same for both arms: same base, importance, seed and calibration
    batches. Process 0 computes them and sends them to the others (GPU kernels need not give every
    process the same bits)."""
    c = r.c
    widths = dict(compression=c.compression or None, n_embd=c.compressed_n_embd or None,
                  d_ff=c.compressed_d_ff or None, multiple_of=c.width_multiple)
    small, achieved = pc.compressed_config(base.config, **widths)
    keep = None
    if r.master:
        calib = (fixed_batches(data_dir, 'train', c.block_size, c.batch_size, c.importance_batches,
                               seed=c.seed) if c.importance.startswith('activation') else None)
        keep = pc.select(pc.importance(base, c.importance, calib, seed=c.seed), small.n_embd, small.d_ff)
    keep = processes.from_rank0(keep, r.world)
    r.say(f"compressing to n_embd={small.n_embd}, d_ff={small.d_ff}: "
          f"{achieved:.1%} of the base's parameters removed (asked {c.compression or 'widths'})")
    return keep


if __name__ == '__main__':
    processes.run_main(lambda: train(parse_args(sys.argv[1:])))
