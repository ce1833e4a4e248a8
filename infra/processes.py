"""
Processes under torchrun: starting and leaving together, agreeing on what they run, which process
owns which projection, and what they exchange beyond DDP's gradient averaging (the new W_c, and the
gradient norm of the projections for clipping), and the GPU's peak FLOP/s for MFU. A reader of the method may skip this file: with one
process each function here is a no-op or what single-process code does anyway (one owner of every
projection, torch's own gradient clipping), and training is train.py's loop alone.
"""
import ctypes
import json
import os
import signal
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import costs
from infra import settings
from infra.files import fingerprint


def start_processes(c):
    """(rank, world, device): one process, or this process's place under torchrun (nccl on CUDA,
    gloo on CPU)."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    dev = settings.resolve_device(c.device)
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


# dense bf16 FLOP/s of one GPU, for MFU (peak_flops=... for others)
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def peak_flops(device_type):
    """This process's GPU's peak FLOP/s, as far as PEAK_FLOPS knows it (0: unknown, or a CPU)."""
    gpu = torch.cuda.get_device_name() if device_type == 'cuda' else ''
    return next((f for name, f in PEAK_FLOPS.items() if name in gpu), 0.0)


def die_with_launcher():
    """Ask Linux to kill this process when torchrun, its parent, dies (even by SIGKILL): no worker
    is left behind holding a GPU."""
    if sys.platform.startswith('linux'):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
        # the launcher died before the request was in place: either now (the parent changed) or
        # before this process read its parent (then init, pid 1, adopted it already)
        if os.getppid() != parent or parent == 1:
            os._exit(1)


def leave_group():
    """Leave together: a process that tears down its gloo threads while another still talks to it
    (rank 0 merging and saving, say) can abort at exit."""
    dist.barrier()
    dist.destroy_process_group()


def assign_owners(matrices, world, base_bytes=4):
    """{matrix name: the process that owns its projection}, in the order of `matrices` (costs.py's
    matrix_costs). The matrices go out largest FLOPs first, each to the process whose larger load
    grows least: its share of all the projection FLOPs, or of all the projection bytes (base slice,
    P and R with their gradients and AdamW moments, the saved intermediate). FLOPs alone would leave the processes holding the big
    embedding slices with far more memory than the others."""
    flops = {n: c['fwd'] + c['bwd'] for n, c in matrices.items()}
    nbytes = {n: costs.matrix_bytes(c, base_bytes) for n, c in matrices.items()}
    F, B = sum(flops.values()), sum(nbytes.values())
    load_f, load_b, owner = [0] * world, [0] * world, {}
    for name in sorted(flops, key=lambda n: -flops[n]):   # sorted is stable: ties keep the given order
        k = min(range(world), key=lambda k: max((load_f[k] + flops[name]) / F, (load_b[k] + nbytes[name]) / B))
        owner[name] = k
        load_f[k], load_b[k] = load_f[k] + flops[name], load_b[k] + nbytes[name]
    return {n: owner[n] for n in matrices}


def broadcast_wc(model, owner, rank, world):
    """Send every W_c from the process that owns it to all the others, so every process starts the
    step with the same compressed GPT: one broadcast per process, of all its matrices in one flat
    buffer. This is all PC adds to DDP's traffic: each process receives the W_c it does not own,
    less than one copy of the compressed matrices per step."""
    params = dict(model.named_parameters())
    for src in range(world):
        mats = [params[n] for n, k in owner.items() if k == src]
        if not mats:   # (more processes than matrices: this one owns none)
            continue
        if src == rank:
            flat = torch.cat([m.detach().reshape(-1) for m in mats])
        else:
            flat = torch.empty(sum(m.numel() for m in mats), device=mats[0].device)
        dist.broadcast(flat, src)
        if src != rank:
            for m, part in zip(mats, flat.split([m.numel() for m in mats])):
                m.data = part.view_as(m)   # the matrix is its slice of the buffer: no second copy


def clip_gradients(sharded, replicated, max_norm, world):
    """torch's clip_grad_norm_ over every trained tensor of every process: the norm of the
    per-tensor gradient norms. Under torchrun (PC only: `sharded` is this process's share of P and
    R, each process holds another) the shares' squared norms are summed by one all_reduce of one
    number; the replicated tensors (DDP's, the same everywhere) are counted once. With one process
    this is clip_grad_norm_ itself, bit for bit."""
    norms = lambda ps: [torch.linalg.vector_norm(p.grad) for p in ps if p.grad is not None]
    mine, everywhere = norms(sharded), norms(replicated)
    if world == 1:
        total = torch.linalg.vector_norm(torch.stack(mine + everywhere))
    else:
        squares = torch.stack(mine).square().sum() if mine else torch.zeros((), device=replicated[0].device)
        dist.all_reduce(squares)
        total = (squares + torch.stack(everywhere).square().sum()).sqrt()
    torch.nn.utils.clip_grads_with_norm_(sharded + replicated, max_norm, total)


def average(t):
    """t, in place, the mean of every process's t."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()


def total(n, device):
    """The sum over every process of the number n."""
    t = torch.tensor(n, device=device)
    dist.all_reduce(t)
    return int(t)


def from_rank0(obj, world):
    """Process 0's obj, on every process (GPU kernels need not give every process the same bits)."""
    if world > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def ranks_agree(params, world):
    """True if every process holds bitwise the same tensors (a sha256 of their bytes, compared)."""
    every = [None] * world
    dist.all_gather_object(every, fingerprint(list(params)))
    return len(set(every)) == 1


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


def together(job, world):
    """job() on every process; if it fails with a line on any of them, every process stops with that
    line (the first rank's), instead of the others meeting a dead peer in their next collective."""
    if world == 1:
        return job()
    try:
        out, error = job(), None
    except SystemExit as e:
        out, error = None, str(e.code)
    every = [None] * world
    dist.all_gather_object(every, error)
    failed = [(k, e) for k, e in enumerate(every) if e is not None]
    if failed:
        k, line = failed[0]
        raise SystemExit(line if k == dist.get_rank() or not line.startswith('error: ') else
                         f"{line} (process {k})")
    return out


def run_main(job):
    """train.py's main: job() and its summary printed. Ctrl-C is one line. An error line goes out in
    one write, so two processes' lines never run together. Under torchrun the process then leaves
    without Python's exit-time teardown: gloo's threads, still referenced from DDP's autograd hooks,
    can abort a process while the interpreter tears down ("terminate called without an active
    exception", about 1 run in 10 on a busy 2-core machine), and torchrun then reports a finished run
    as failed. Every file is written and synced by then."""
    torchrun = 'RANK' in os.environ
    try:
        summary = job()
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted; the last checkpoint is kept: continue with --init_from=resume")
    except SystemExit as e:
        if not torchrun or not isinstance(e.code, str):
            raise
        sys.stdout.flush()
        os.write(2, (e.code + '\n').encode())   # one write of a short line: never interleaved
        os._exit(1)
    if int(os.environ.get('RANK', 0)) == 0:
        print(json.dumps(summary))
    if torchrun:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
