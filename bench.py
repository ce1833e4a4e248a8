"""
Benchmark of the cost argument behind Projected Compression (pc.py), against hard pruning (HPR).

The claim (paper section 3.4): with W_c = P_out W P_in + R computed once per optimizer step, a PC step
costs an HPR step plus a fixed amount (build W_c, push dL/dW_c into P and R, a bigger AdamW), so the
overhead vanishes as the tokens per step grow. Recomputing W_c in every micro-batch (the naive way)
pays the projection once per micro-batch instead. PC's price is memory: the frozen base, P, R and
their optimizer state. This script measures all three, on one machine, in one run:

1. step time of HPR, PC (cost-free step) and PC naive, over micro-batches x batch size, interleaved;
   plus the projection phase alone (the fixed cost) and the tokens/step where PC/HPR < 1.10 / 1.05;
2. peak memory of base training, HPR and PC, each arm in its own subprocess, with PC's breakdown;
3. FLOPs on paper for the paper's 300M / 800M bases: projection FLOPs against the step's FLOPs.

    python bench.py                                   # CPU-sized model, a few minutes on 2 cores
    python bench.py --quick=True                      # smallest size, a few seconds (smoke test)
    python bench.py --device=cuda --model=300m        # the paper's 300M base at 50%, bf16 autocast
    python bench.py --device=cuda --model=300m --compile=True --micro_batches=1,2,4,8,16,32

Writes bench_results.md and bench_results.json into out_dir (default out/bench); --help lists the
options. What PC costs on paper (FLOPs, bytes, per-process shares) is costs.py's; this file measures.
"""
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import torch

import costs
import gpt
import pc
import train
from infra import checkpoint, files, settings

# The CPU-sized default: a char-level GPT (vocab 96) small enough that a step of 16 micro-batches of
# 16 x 128 tokens takes about 2 s on one core, big enough that the projections are real matmuls and
# that the fixed cost (~20 ms) falls to ~1% of the largest step.
SMALL = dict(n_layer=4, n_head=4, n_embd=128, d_ff=512, vocab_size=96, block_size=128)
# --quick: the smallest size that still has every piece (2 layers, both axes compressed).
QUICK = dict(n_layer=2, n_head=2, n_embd=64, d_ff=256, vocab_size=96, block_size=64)

ARMS = ('hpr', 'pc', 'naive')


# Options, as --key=value (infra/settings.parse's rules: a bare --quick means --quick=True)
OPTIONS = dict(
    device='cpu',         # cpu or cuda (cuda: bf16 autocast, TF32 matmuls)
    model='small',        # small: the CPU-sized base above; 300m / 800m: gpt.preset (block 512)
    compression=0.5,      # fraction of base params removed
    batch_sizes='8,16',   # sequences per micro-batch
    micro_batches='1,2,4,8,16',   # micro-batches of gradient accumulation per optimizer step
    warmup=1,             # untimed single-micro-batch steps per arm before each batch size
    reps=5,               # timed steps per arm and configuration
    proj_reps=21,         # timed repetitions of the fixed-cost parts
    mem_batch_size=0,     # micro-batch of the memory arms (0: the largest of batch_sizes)
    flops_tokens=512 * 512,   # tokens/step for the FLOP table
    no_memory=False,      # skip the memory subprocesses
    no_processes=False,   # skip train.py at 1 and 2 processes
    process_steps=12,     # optimizer steps of each train.py run
    process_reps=2,       # train.py runs per arm and process count
    process_counts='1,2',  # process counts of those runs (above 1: torchrun)
    compile=False,        # torch.compile the micro-batch forward
    quick=False,          # smallest size everywhere, a few seconds
    # CPU threads (0: torch's default). One, because on a shared 2-core machine an OpenMP team of two
    # stalls whenever another process takes a core (measured here: median step 10x its minimum with 2
    # threads, 1.3x with 1)
    threads=1,
    clock='auto',         # auto: wall clock on CUDA (synchronized), process CPU time on CPU; wall; cpu
    seed=1337,
    out_dir='out/bench',
    _memory_arm='',       # internal: one memory arm, in its own subprocess
)


def parse_args(argv):
    args = SimpleNamespace(**settings.parse(argv, OPTIONS, config_files=False, doc=__doc__))
    try:
        args.batch_sizes, args.micro_batches, args.process_counts = (
            [int(v) for v in str(getattr(args, k)).split(',') if v] for k in ('batch_sizes', 'micro_batches', 'process_counts'))
    except ValueError:   # a list option that is not comma-separated integers
        raise SystemExit("error: --batch_sizes, --micro_batches and --process_counts take comma-separated "
                         "integers, e.g. 8,16")
    lists = args.batch_sizes + args.micro_batches + args.process_counts
    if not (args.batch_sizes and args.micro_batches and args.process_counts) or min(lists) <= 0:
        raise SystemExit("error: --batch_sizes, --micro_batches and --process_counts need positive integers, e.g. 8,16")
    for key, choices in (('model', ('small', '300m', '800m')), ('clock', ('auto', 'wall', 'cpu'))):
        if getattr(args, key) not in choices:
            raise SystemExit(f"error: --{key}={getattr(args, key)} is not one of {', '.join(choices)}")
    for key, low in (('reps', 1), ('proj_reps', 1), ('warmup', 0), ('flops_tokens', 1), ('threads', 0),
                     ('mem_batch_size', 0), ('process_steps', 2), ('process_reps', 1), ('seed', 0)):
        if getattr(args, key) < low:
            raise SystemExit(f"error: --{key}={getattr(args, key)} must be at least {low}")
    if not 0 < args.compression < 1:
        raise SystemExit(f"error: --compression={args.compression} must be in (0, 1)")
    settings.check_device(args.device, auto=False)
    try:   # now, not after minutes of measuring
        os.makedirs(args.out_dir, exist_ok=True)
        if not os.access(args.out_dir, os.W_OK):
            raise PermissionError(13, 'read-only')
    except OSError as e:
        raise SystemExit(f"error: --out_dir={args.out_dir} cannot be written ({e.strerror}); pick another")
    if args.clock == 'auto':
        args.clock = 'wall' if args.device.startswith('cuda') else 'cpu'
    if args.quick:   # the smallest sizes, whatever was asked
        args.model, args.batch_sizes, args.micro_batches = 'quick', [2, 4], [1, 2, 4]
        args.warmup, args.reps, args.proj_reps = 1, 3, 5
        args.process_steps, args.process_reps = 4, 1
    return args


def model_configs(args):
    """(base config, compressed config, fraction of base params actually removed)."""
    if args.model in ('300m', '800m'):
        base = gpt.preset(args.model)
    else:
        base = gpt.GPTConfig(**(QUICK if args.model == 'quick' else SMALL))
    # the paper's shapes in multiples of 64, as config/pc_*.py compress them
    small, removed = pc.compressed_config(base, args.compression,
                                          multiple_of=64 if args.model in ('300m', '800m') else 1)
    return base, small, removed


def build(base_cfg, small_cfg, device, seed):
    """A base GPT, the kept dimensions (magnitude importance), and its HPR and PC models. Timing does
    not depend on the weights, so the base is freshly initialised rather than pretrained."""
    torch.manual_seed(seed)
    base = gpt.GPT(base_cfg).to(device)
    keep = pc.select(pc.importance(base, 'magnitude'), small_cfg.n_embd, small_cfg.d_ff)
    return base, keep


def optimizer(named, device):
    # the same AdamW (hyperparameters are irrelevant to time and memory) for every arm
    return gpt.adamw(named, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95),
                     device_type='cuda' if device.startswith('cuda') else 'cpu')


def batches(cfg, n, B, device, seed):
    """n micro-batches of random tokens, identical for every arm (the values do not affect time)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, cfg.vocab_size, (n, 2, B, cfg.block_size), generator=g)
    return [(xy[i, 0].to(device), xy[i, 1].to(device)) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# The three training steps. Same loss scaling, same optimizer, same data; only where W_c is made.

def step_plain(fwd, opt, mb, ctx):
    """HPR (and base training): an ordinary GPT step with gradient accumulation."""
    for x, y in mb:
        with ctx:
            loss = fwd(x, y)[1] / len(mb)
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_pc(model, fwd, opt, mb, ctx):
    """PC, cost-free: W_c once per step (fp32, outside autocast, as pc.py's docstring), the
    micro-batches through the plain compressed GPT, then one backward into P and R."""
    model.materialize()
    for x, y in mb:
        with ctx:
            loss = fwd(x, y)[1] / len(mb)
        loss.backward()
    model.backward_projections()
    opt.step()
    opt.zero_grad(set_to_none=True)


# step_naive is step_plain with fwd = the ProjectedGPT itself: W_c rebuilt in every micro-batch.


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


# On a CPU shared with other processes, wall time measures the other processes as much as ours: a
# step that is descheduled half the time takes twice as long. Process CPU time counts only the time
# our process computes (measured here under load ~6 on 2 cores, one thread: wall median 153 ms with
# p90 285 ms; CPU time median 74 ms with p90 83 ms), so on CPU it is the default clock. It still
# sees cache and memory-bandwidth interference, and it would count OpenMP spin-waiting with
# --threads > 1. On CUDA the work is on the GPU, so the clock is the wall, after a synchronize.
CLOCK = dict(wall=time.perf_counter, cpu=time.process_time)


def timed(fn, device, clock='wall'):
    now = CLOCK[clock]
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


# ----------------------------------------------------------------------------------------------
# 1. Step time.

def bench_steps(args, base_cfg, small_cfg, ctx, log):
    dev = args.device
    base, keep = build(base_cfg, small_cfg, dev, args.seed)
    hpr = pc.hard_prune(base, keep)
    pcm = pc.ProjectedGPT(base, keep)      # cost-free arm
    naive = pc.ProjectedGPT(base, keep)    # naive arm: its own copy, so the optimizer states differ
    del base                               # only the projection buffers keep the base from here on
    opts = dict(hpr=optimizer(hpr.named_parameters(), dev), pc=optimizer(pcm.named_trainable(), dev),
                naive=optimizer(naive.named_trainable(), dev))
    fwd = dict(hpr=hpr, pc=pcm.gpt, naive=naive)
    if args.compile:
        fwd = {k: torch.compile(m) for k, m in fwd.items()}
    steps = dict(hpr=lambda mb: step_plain(fwd['hpr'], opts['hpr'], mb, ctx),
                 pc=lambda mb: step_pc(pcm, fwd['pc'], opts['pc'], mb, ctx),
                 naive=lambda mb: step_plain(fwd['naive'], opts['naive'], mb, ctx))

    rows = []
    for B in args.batch_sizes:
        data = batches(small_cfg, max(args.micro_batches), B, dev, args.seed + B)
        # warm-up once per batch size, on one micro-batch: first calls, allocator, torch.compile
        for _ in range(args.warmup):
            for arm in ARMS:
                steps[arm](data[:1])
        for n in args.micro_batches:
            mb, times = data[:n], {a: [] for a in ARMS}
            gc.collect()
            # round-robin per repetition, starting arm rotated, so load from other processes and
            # any drift (thermal, caches) lands on all arms alike
            for rep in range(args.reps):
                for k in range(len(ARMS)):
                    arm = ARMS[(rep + k) % len(ARMS)]
                    times[arm].append(timed(lambda: steps[arm](mb), dev, args.clock))
            med = {a: statistics.median(times[a]) for a in ARMS}
            row = dict(batch_size=B, micro_batches=n, tokens_per_step=n * B * small_cfg.block_size,
                       hpr_s=med['hpr'], pc_s=med['pc'], naive_s=med['naive'],
                       pc_over_hpr=med['pc'] / med['hpr'], naive_over_hpr=med['naive'] / med['hpr'],
                       naive_over_pc=med['naive'] / med['pc'],
                       # min-based ratio: a second opinion that ignores slow outliers entirely
                       pc_over_hpr_min=min(times['pc']) / min(times['hpr']),
                       samples={a: times[a] for a in ARMS})
            rows.append(row)
            log(f"  B={B:<3d} micro={n:<3d} tokens/step={row['tokens_per_step']:<7d} "
                f"hpr {med['hpr'] * 1e3:8.1f} ms  pc {med['pc'] * 1e3:8.1f} ms  "
                f"naive {med['naive'] * 1e3:8.1f} ms  pc/hpr {row['pc_over_hpr']:.3f}")
    fixed = bench_fixed_cost(args, hpr, pcm, opts)
    return rows, fixed


def bench_fixed_cost(args, hpr, pcm, opts):
    """The projection phase alone (materialize + backward_projections with a given dL/dW_c), and its
    parts, interleaved like the steps. Each part starts from the state it has inside a real step
    (P and R without gradients before the backward; every trained tensor with one before AdamW).
    fixed cost per step = projection phase + AdamW(PC) - AdamW(HPR): the same vectors and the same
    per-tensor overhead cancel, what is left is AdamW over P and R."""
    dev = args.device
    torch.manual_seed(args.seed)
    wc_grads = [torch.randn_like(p) for p in pcm.matrices()]    # a given W_c gradient
    trained = [p for opt in (opts['pc'], opts['hpr']) for g in opt.param_groups for p in g['params']]
    adam_grads = [torch.randn_like(p) for p in trained]         # AdamW's time ignores the values

    def no_grads():               # as after opt.zero_grad(set_to_none=True)
        for p in trained:
            p.grad = None

    def with_grads():
        for p, g in zip(trained, adam_grads):
            p.grad = g

    def materialize():            # as in a step: with the graph, dropped as backward_projections would
        pcm.materialize()
        pcm._wc = None

    def give_wc_grads():
        for p, g in zip(pcm.matrices(), wc_grads):
            p.grad = g

    def prep_backward():
        no_grads()
        pcm.materialize()
        give_wc_grads()

    def projection_phase():
        pcm.materialize()
        give_wc_grads()
        pcm.backward_projections()

    parts = dict(materialize=(no_grads, materialize),
                 backward_projections=(prep_backward, pcm.backward_projections),
                 projection_phase=(no_grads, projection_phase),
                 adamw_pc=(with_grads, opts['pc'].step), adamw_hpr=(with_grads, opts['hpr'].step))
    names, times = list(parts), {k: [] for k in parts}
    for rep in range(args.warmup + args.proj_reps):
        for k in range(len(names)):
            name = names[(rep + k) % len(names)]
            prep, fn = parts[name]
            prep()
            t = timed(fn, dev, args.clock)
            if rep >= args.warmup:
                times[name].append(t)
    no_grads()
    med = {k: statistics.median(v) for k, v in times.items()}
    med['fixed_cost'] = med['projection_phase'] + med['adamw_pc'] - med['adamw_hpr']
    return med


# ----------------------------------------------------------------------------------------------
# Crossover: tokens/step where PC/HPR drops below a threshold.

def hpr_line(rows):
    """HPR step time = a + b * tokens, least squares over one batch size's configurations."""
    tok, hpr = [r['tokens_per_step'] for r in rows], [r['hpr_s'] for r in rows]
    if len(set(tok)) < 2:
        return hpr[0], 0.0
    mt, mh = statistics.fmean(tok), statistics.fmean(hpr)
    b = sum((t - mt) * (h - mh) for t, h in zip(tok, hpr)) / sum((t - mt) ** 2 for t in tok)
    return mh - b * mt, b


def crossovers(rows, fixed_cost, thresholds=(1.10, 1.05)):
    """Per batch size, three answers:
    first_measured: the first configuration from which PC/HPR stays under the threshold (a single
                    noisy dip does not count);
    interpolated:   between that configuration and the one before it, linear in log(tokens);
    model:          PC/HPR = 1 + fixed_cost / (a + b * tokens), with the fixed cost from the projection
                    phase timings and HPR's line fitted to its measured steps, solved for tokens.
                    It extrapolates beyond the measured range, and it is far less noisy than a
                    ratio of two step times a few % apart."""
    out = []
    for B in sorted({r['batch_size'] for r in rows}):
        s = sorted((r for r in rows if r['batch_size'] == B), key=lambda r: r['tokens_per_step'])
        tok = [r['tokens_per_step'] for r in s]
        ratio = [r['pc_over_hpr'] for r in s]
        a, b = hpr_line(s)
        for thr in thresholds:
            first = interp = None
            i = next((i for i in range(len(s)) if all(q < thr for q in ratio[i:])), None)
            if i is not None:
                first = tok[i]
                if i == 0:
                    interp = tok[0]   # already under at the smallest measured step
                else:
                    l0, l1 = math.log(tok[i - 1]), math.log(tok[i])
                    f = (ratio[i - 1] - thr) / (ratio[i - 1] - ratio[i])
                    interp = math.exp(l0 + f * (l1 - l0))
            model = (fixed_cost / (thr - 1) - a) / b if b > 0 and fixed_cost > 0 else None
            out.append(dict(batch_size=B, threshold=thr, first_measured_tokens=first,
                            interpolated_tokens=interp,
                            model_tokens=model if model is None else max(model, 0.0),
                            fixed_cost_s=fixed_cost, hpr_a_s=a, hpr_b_s_per_token=b))
    return out


# ----------------------------------------------------------------------------------------------
# 2. Memory. Each arm runs in its own process: `python bench.py ... --_memory_arm=pc`.
#
# CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before
#   the arm's models exist. Exact for tensors; the CUDA context and allocator cache are not counted.
# CPU: peak resident set size of the process (VmHWM in /proc/self/status) minus its RSS (VmRSS) after
#   imports, data and a warm-up step on a tiny GPT (so thread pools, oneDNN and the autograd engine are
#   in the baseline). Details that make it honest:
#   - ru_maxrss is *not* used: after fork/exec it reports the parent's peak (this script's own RSS,
#     hundreds of MB after the timings), so a child's ru_maxrss can be mostly the parent's;
#   - the peak is reset (`5` into /proc/self/clear_refs) after the models are built and the base they
#     came from is freed, so a transient copy of the base during construction is not counted;
#   - the child runs with MALLOC_MMAP_THRESHOLD_=65536: glibc then serves every tensor over 64 KiB
#     with its own mmap and unmaps it on free, so RSS follows the live tensors instead of a heap that
#     never shrinks.
#   RSS is still pages, not bytes: small tensors, the allocator and the interpreter add noise of the
#   order of a MB. The breakdown below comes from tensor sizes, not from RSS.

MEM_MARK = 'BENCH_MEMORY_JSON '


def _proc_status(key):
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024   # kB
    except OSError:
        return None
    return None


def mem_now(device):
    if device.startswith('cuda'):
        return torch.cuda.memory_allocated()
    rss = _proc_status('VmRSS')
    return rss if rss is not None else 0


def mem_reset_peak(device):
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')   # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def mem_peak(device):
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated()
    hwm = _proc_status('VmHWM')
    if hwm is not None:
        return hwm
    import resource   # not Linux: ru_maxrss (bytes on macOS), the parent caveat above applies
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == 'darwin' else r * 1024


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def saved_graph_bytes(model):
    """Bytes the saved projection graph holds beyond parameters and buffers: the tensors autograd
    saves in materialize (the W @ P_in or P_out @ W intermediates). The W_c outputs it keeps for the
    backward are the compressed GPT's own matrices (counted there). Found by recording what autograd
    saves, by storage, so nothing is counted twice; parameters and buffers are told apart *after*
    materialize, which replaces the GPT's matrices (the freed storage of an old W_c can be reused
    by a new intermediate at the same address)."""
    saved = {}
    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.materialize()
    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    model._wc = None
    for p in model.matrices():
        p.grad = None
    return sum(n for ptr, n in saved.items() if ptr not in owned)


def memory_arm(args, arm):
    """One arm, in this (child) process: returns peak bytes over the baseline and the breakdown."""
    dev = args.device
    base_cfg, small_cfg, _ = model_configs(args)
    B = args.mem_batch_size or max(args.batch_sizes)
    ctx = autocast(dev)
    mb = batches(small_cfg, 1, B, dev, args.seed)
    # warm-up on a tiny GPT: one full step, so lazy runtime state is part of the baseline
    tiny = gpt.GPT(gpt.GPTConfig(n_layer=1, n_head=1, n_embd=8, d_ff=8, vocab_size=base_cfg.vocab_size,
                                 block_size=8)).to(dev)
    tiny_opt = optimizer(tiny.named_parameters(), dev)
    step_plain(tiny, tiny_opt, [(x[:1, :8], y[:1, :8]) for x, y in mb], ctx)
    del tiny, tiny_opt
    gc.collect()
    sync(dev)
    baseline = mem_now(dev)

    base, keep = build(base_cfg, small_cfg, dev, args.seed)
    if arm == 'base':
        model, named = base, list(base.named_parameters())
    elif arm == 'hpr':
        model = pc.hard_prune(base, keep)
        named = list(model.named_parameters())
    else:
        model = pc.ProjectedGPT(base, keep)
        named = model.named_trainable()
    if arm != 'base':
        del base
    opt = optimizer(named, dev)
    gc.collect()
    sync(dev)
    was_reset = mem_reset_peak(dev)
    # two steps: the first creates AdamW's state, the second runs with it already allocated
    for _ in range(2):
        if arm == 'pc':
            step_pc(model, model.gpt, opt, mb, ctx)
        else:
            step_plain(model, opt, mb, ctx)
    sync(dev)
    peak = mem_peak(dev) - baseline

    # the breakdown, from tensor sizes (grads are as large as their parameters)
    opt_state = nbytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    parts = dict(frozen_base=0, projections=0, residuals=0, optimizer_state=opt_state,
                 model_params_grads=0, saved_projection_graph=0)
    if arm == 'pc':
        parts['frozen_base'] = nbytes(model.proj.buffers())
        pr = dict(model.proj.named_parameters())
        parts['projections'] = 2 * nbytes(p for n, p in pr.items() if not n.endswith('.r'))
        parts['residuals'] = 2 * nbytes(p for n, p in pr.items() if n.endswith('.r'))
        parts['model_params_grads'] = 2 * nbytes(model.gpt.parameters())
        parts['saved_projection_graph'] = saved_graph_bytes(model)
    else:
        parts['model_params_grads'] = 2 * nbytes(model.parameters())
    parts['activations_and_other'] = peak - sum(parts.values())
    return dict(arm=arm, peak_bytes=peak, baseline_bytes=baseline, micro_batch=B,
                peak_was_reset=was_reset, parts=parts)


def bench_memory(args, argv, log):
    results = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    here = os.path.dirname(os.path.abspath(__file__))
    start = lambda arm: subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv,
                                          f'--_memory_arm={arm}'], env=env, cwd=here, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # on CPU the arms run side by side (each measures its own process, and timing is done); on CUDA
    # one after the other, so that three big models never have to share the GPU's memory
    arms = ('base', 'hpr', 'pc')
    procs = {arm: start(arm) for arm in arms} if not args.device.startswith('cuda') else {}
    for arm in arms:
        proc = procs.get(arm) or start(arm)
        out, err = proc.communicate()
        lines = [l for l in out.splitlines() if l.startswith(MEM_MARK)]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"error: memory arm '{arm}' failed (exit {proc.returncode}):\n{err[-2000:]}")
        results[arm] = json.loads(lines[-1][len(MEM_MARK):])
        log(f"  {arm:5s} peak {results[arm]['peak_bytes'] / 2**20:8.2f} MiB")
    static = {a: r['peak_bytes'] - r['parts']['activations_and_other'] for a, r in results.items()}
    return dict(arms=results,
                pc_over_hpr=results['pc']['peak_bytes'] / results['hpr']['peak_bytes'],
                pc_over_base=results['pc']['peak_bytes'] / results['base']['peak_bytes'],
                static_pc_over_hpr=static['pc'] / static['hpr'],
                static_pc_over_base=static['pc'] / static['base'],
                method=('torch.cuda.max_memory_allocated - memory_allocated before the models'
                        if args.device.startswith('cuda') else
                        'VmHWM - VmRSS after imports and a tiny warm-up step, one subprocess per arm, '
                        'peak reset after construction, MALLOC_MMAP_THRESHOLD_=65536'))


# ----------------------------------------------------------------------------------------------
# 3. FLOPs on paper.

def flops_row(label, base_cfg, small_cfg, removed, tokens, compression):
    fwd, bwd = costs.model_flops(base_cfg, small_cfg)
    per_token = gpt.flops_per_token(small_cfg)
    step = per_token * tokens
    mem = costs.static_memory(base_cfg, small_cfg)
    return dict(model=label, compression=compression, removed=removed, n_embd=small_cfg.n_embd,
                d_ff=small_cfg.d_ff, compressed_params=gpt.param_counts(small_cfg)['total'],
                base_params=gpt.param_counts(base_cfg)['total'], p_params=mem['p_params'],
                r_params=mem['r_params'], static_base_bytes=mem['base_bytes'],
                static_hpr_bytes=mem['hpr_bytes'], static_pc_bytes=mem['pc_bytes'],
                static_pc_over_hpr=mem['pc_over_hpr'], static_pc_over_base=mem['pc_over_base'],
                tokens_per_step=tokens, proj_fwd_flops=fwd, proj_bwd_flops=bwd,
                proj_flops=fwd + bwd, step_flops=step, fraction=(fwd + bwd) / step,
                tokens_for_1pct=(fwd + bwd) / (0.01 * per_token),
                # distillation (distill_alpha > 0): the base runs forward on every token, a third of
                # its training FLOPs per token, for either arm
                teacher_flops=gpt.flops_per_token(base_cfg) / 3 * tokens,
                teacher_fraction=gpt.flops_per_token(base_cfg) / 3 * tokens / step)


def process_row(label, base_cfg, small_cfg, tokens, world, compression):
    """One process's share of a PC step, against its share of the step's FLOPs and against HPR's
    memory under DDP, and what it receives per step beyond DDP's gradient traffic."""
    shares = costs.process_shares(base_cfg, small_cfg, world)
    worst = max(s['fwd'] + s['bwd'] for s in shares)
    step = gpt.flops_per_token(small_cfg) * tokens / world
    fp32, bf16 = (costs.static_memory(base_cfg, small_cfg, world, b) for b in (4, 2))
    wc = sum(s['r'] for s in shares)
    n_small = gpt.param_counts(small_cfg)['total']
    return dict(model=label, compression=compression, processes=world, proj_flops=worst, step_flops=step,
                proj_share=worst / step, hpr_bytes=fp32['hpr_bytes'], pc_bytes=fp32['pc_bytes'],
                pc_bytes_bf16=bf16['pc_bytes'], pc_over_hpr=fp32['pc_over_hpr'],
                pc_over_hpr_bf16=bf16['pc_over_hpr'],
                # every W_c it does not own, fp32; DDP's ring all-reduce of the fp32 gradients
                wc_bytes=4 * (wc - min(s['r'] for s in shares)),
                ddp_bytes=2 * (world - 1) / world * 4 * n_small)


def paper_shapes():
    """(label, base config, compressed config, removed, compression) of the paper's six rows, with
    the widths config/paper_c4.py trains (the authors' widths)."""
    grid = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config', 'paper_c4.py')
    for name in ('300m', '800m'):
        for c in (0.35, 0.5, 0.65):
            cfg = train.parse_args([grid, f'--preset={name}', '--arm=pc', f'--compression={c}'])
            base = gpt.preset(name, block_size=cfg['block_size'])
            small, removed = pc.compressed_config(base, c, multiple_of=cfg['width_multiple'])
            yield name, base, small, removed, c


def bench_flops(args, base_cfg, max_tokens):
    rows = [flops_row(label, b, s, removed, args.flops_tokens, c) for label, b, s, removed, c in paper_shapes()]
    # this run's own model at its largest measured step, to set the FLOP fraction next to the time one
    small, removed = pc.compressed_config(base_cfg, args.compression)
    rows.append(flops_row(f'bench:{args.model}', base_cfg, small, removed, max_tokens, args.compression))
    return rows


def bench_process_model(args):
    return [process_row(label, b, s, args.flops_tokens, w, c) for label, b, s, _, c in paper_shapes()
            for w in (1, 2, 4, 8)]


# ----------------------------------------------------------------------------------------------
# 4. train.py itself at 1 and 2 processes (torchrun, gloo on CPU): does sharing out the
# projections keep PC's step at HPR's cost when the step is split over processes?

def bench_processes(args, base_cfg, small_cfg, log):
    """Median ms per optimizer step of train.py's HPR and PC arms, 1 process and 2, the same global
    batch (the bench model, random tokens), the runs interleaved; each process one thread."""
    B, accum, steps = max(args.batch_sizes), 4, args.process_steps
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'data')
        os.makedirs(data)
        g = torch.Generator().manual_seed(args.seed)
        splits = {}
        for split, n in (('train', 64 * B * base_cfg.block_size), ('val', 4 * B * base_cfg.block_size)):
            ids = torch.randint(0, base_cfg.vocab_size, (n,), generator=g).numpy().astype('uint16')
            ids.tofile(os.path.join(data, f'{split}.bin'))
            splits[split] = [dict(file=f'{split}.bin', tokens=n, sha256='')]
        with open(os.path.join(data, 'meta.json'), 'w') as f:
            json.dump(dict(vocab_size=base_cfg.vocab_size, splits=splits), f)
        torch.manual_seed(args.seed)
        base_ckpt = os.path.join(tmp, 'base.pt')
        files.save_atomic(checkpoint.gpt_checkpoint(gpt.GPT(base_cfg)), base_ckpt)
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, OMP_NUM_THREADS='1')
        times = {}
        for rep in range(args.process_reps):
            for world in args.process_counts:
                for arm in ('hpr', 'pc'):
                    out = os.path.join(tmp, f'{arm}{world}_{rep}')
                    launcher = ([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                 f'--nproc_per_node={world}'] if world > 1 else [sys.executable])
                    settings = dict(arm=arm, dataset=data, base_ckpt=base_ckpt, out_dir=out, device='cpu',
                                    compressed_n_embd=small_cfg.n_embd, compressed_d_ff=small_cfg.d_ff,
                                    compression=0.0, block_size=base_cfg.block_size, batch_size=B,
                                    grad_accum=accum, max_iters=steps, eval_interval=steps, eval_iters=1,
                                    log_interval=1, warmup_iters=0)
                    proc = subprocess.run(launcher + [os.path.join(here, 'train.py')] +
                                          [f'--{k}={v}' for k, v in settings.items()],
                                          cwd=here, env=env, capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise SystemExit(f"error: train.py arm={arm} at {world} process(es) failed:\n"
                                         f"{(proc.stdout + proc.stderr)[-2000:]}")
                    with open(os.path.join(out, 'metrics.jsonl')) as f:
                        ms = [r['ms_per_iter'] for r in map(json.loads, f) if r['kind'] == 'train']
                    times.setdefault((world, arm), []).extend(ms[1:])   # the first step warms up
        rows = []
        for world in args.process_counts:
            hpr, pc_ = (statistics.median(times[world, a]) for a in ('hpr', 'pc'))
            rows.append(dict(processes=world, tokens_per_step=B * accum * base_cfg.block_size,
                             hpr_s=hpr / 1e3, pc_s=pc_ / 1e3, pc_over_hpr=pc_ / hpr))
            log(f"  {world} process(es): hpr {hpr:8.1f} ms  pc {pc_:8.1f} ms  pc/hpr {pc_ / hpr:.3f}")
        return rows


# ----------------------------------------------------------------------------------------------
# Output.

def fmt(v, kind):
    if v is None:
        return '-'
    return {'ms': lambda: f'{v * 1e3:.2f}', 'x': lambda: f'{v:.3f}', 'int': lambda: f'{round(v):d}',
            'mib': lambda: f'{v / 2**20:.2f}', 'gib': lambda: f'{v / 2**30:.3g}', 'mb': lambda: f'{v / 1e6:.1f}',
            'g': lambda: f'{v:.3g}', 'pct': lambda: f'{100 * v:.3f}%', 's': lambda: str(v)}[kind]()


def table(title, cols, rows):
    """cols: [(header, key, kind)]; rows: dicts. Returns (plain text, markdown)."""
    cells = [[fmt(r.get(k), kind) for _, k, kind in cols] for r in rows]
    heads = [h for h, _, _ in cols]
    w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = lambda vals: '  '.join(v.rjust(w[i]) for i, v in enumerate(vals))
    text = '\n'.join([title, line(heads), line(['-' * x for x in w])] + [line(c) for c in cells])
    md = '\n'.join([f'### {title}', '', '| ' + ' | '.join(heads) + ' |',
                    '|' + '|'.join('---:' for _ in heads) + '|'] +
                   ['| ' + ' | '.join(c) + ' |' for c in cells])
    return text, md


def autocast(device):
    # bf16 autocast on CUDA (as nanoGPT); fp32 on CPU, where bf16 matmuls are slow and emulated
    return torch.autocast('cuda', dtype=torch.bfloat16) if device.startswith('cuda') else nullcontext()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads > 0 and not args.device.startswith('cuda'):
        torch.set_num_threads(args.threads)
    if args.device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True   # as nanoGPT: fp32 matmuls (W_c) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if args._memory_arm:
        print(MEM_MARK + json.dumps(memory_arm(args, args._memory_arm)), flush=True)
        return None

    t_start = time.time()
    log = lambda s: print(s, flush=True)
    base_cfg, small_cfg, removed = model_configs(args)
    ctx = autocast(args.device)
    log(f"base {args.model}: {gpt.param_counts(base_cfg)['total']:,} params, n_embd {base_cfg.n_embd}, "
        f"d_ff {base_cfg.d_ff}; compressed to n_embd {small_cfg.n_embd}, d_ff {small_cfg.d_ff} "
        f"({gpt.param_counts(small_cfg)['total']:,} params, {100 * removed:.1f}% removed); "
        f"device {args.device}, {torch.get_num_threads()} threads")

    log(f"1. step time: median of {args.reps} interleaved steps per arm, {args.clock} clock")
    rows, fixed = bench_steps(args, base_cfg, small_cfg, ctx, log)
    for r in rows:   # what the fixed cost alone predicts, next to what was measured
        r['pc_over_hpr_model'] = 1 + fixed['fixed_cost'] / r['hpr_s']
    cross = crossovers(rows, fixed['fixed_cost'])
    memory = None
    if not args.no_memory:
        log("2. peak memory (one subprocess per arm)")
        memory = bench_memory(args, argv, log)
    processes = None
    if not args.no_processes:
        log("3. train.py's step at 1 and 2 processes (torchrun, gloo)")
        processes = bench_processes(args, base_cfg, small_cfg, log)
    flops = bench_flops(args, base_cfg, max(r['tokens_per_step'] for r in rows))
    per_process = bench_process_model(args)

    # ---- tables
    texts, mds = [], []
    def add(title, cols, rs):
        t, m = table(title, cols, rs)
        texts.append(t)
        mds.append(m)
    add(f'Step time ({args.clock} clock, median per arm; ratios of medians)',
        [('B', 'batch_size', 'int'), ('micro', 'micro_batches', 'int'),
         ('tokens/step', 'tokens_per_step', 'int'), ('HPR ms', 'hpr_s', 'ms'), ('PC ms', 'pc_s', 'ms'),
         ('naive ms', 'naive_s', 'ms'), ('PC/HPR', 'pc_over_hpr', 'x'),
         ('1+fixed/HPR', 'pc_over_hpr_model', 'x'),
         ('naive/HPR', 'naive_over_hpr', 'x'), ('naive/PC', 'naive_over_pc', 'x')], rows)
    fixed_rows = [dict(part=k, ms=v) for k, v in fixed.items()]
    fixed_rows.append(dict(part='in-situ PC-HPR gap (median over configs)',
                           ms=statistics.median(r['pc_s'] - r['hpr_s'] for r in rows)))
    add('Fixed cost per step (projection phase = materialize + backward_projections; '
        'fixed_cost = projection phase + AdamW(PC) - AdamW(HPR))',
        [('part', 'part', 's'), ('ms', 'ms', 'ms')], fixed_rows)
    add('Tokens/step where PC/HPR falls under the threshold (first measured: first config from which '
        'the measured ratio stays under; interpolated: log-linear between it and the config before; '
        'model: 1 + fixed_cost / (a + b*tokens) with HPR = a + b*tokens fitted, extrapolates; '
        '"-": not reached)',
        [('B', 'batch_size', 'int'), ('threshold', 'threshold', 'x'),
         ('first measured', 'first_measured_tokens', 'int'),
         ('interpolated', 'interpolated_tokens', 'int'), ('model', 'model_tokens', 'int')], cross)
    if memory:
        arms = memory['arms']
        part_names = list(arms['pc']['parts'])
        mem_rows = [dict(item='peak (measured)', **{a: arms[a]['peak_bytes'] for a in arms})]
        mem_rows += [dict(item=p, **{a: arms[a]['parts'][p] for a in arms}) for p in part_names]
        mem_rows.append(dict(item='static (parts without activations)', **{
            a: arms[a]['peak_bytes'] - arms[a]['parts']['activations_and_other'] for a in arms}))
        add(f"Peak memory, MiB, one optimizer step with micro-batch {arms['pc']['micro_batch']} "
            f"(peak: PC = {memory['pc_over_hpr']:.2f} x HPR = {memory['pc_over_base']:.2f} x base "
            f"training; static: PC = {memory['static_pc_over_hpr']:.2f} x HPR = "
            f"{memory['static_pc_over_base']:.2f} x base; parts from tensor sizes, "
            f"activations_and_other = measured peak - parts)",
            [('item', 'item', 's'), ('base', 'base', 'mib'), ('HPR', 'hpr', 'mib'), ('PC', 'pc', 'mib')],
            mem_rows)
    add('FLOPs on paper (projection = build W_c + backward into P, R, once per step; '
        'step = gpt.flops_per_token(compressed) x tokens; teacher = the base\'s forward on every token '
        'when distilling, either arm)',
        [('model', 'model', 's'), ('compr', 'compression', 'x'), ('removed', 'removed', 'x'),
         ('d', 'n_embd', 'int'), ('f', 'd_ff', 'int'), ('tokens/step', 'tokens_per_step', 'int'),
         ('proj fwd', 'proj_fwd_flops', 'g'), ('proj bwd', 'proj_bwd_flops', 'g'),
         ('step', 'step_flops', 'g'), ('proj/step', 'fraction', 'pct'),
         ('tokens for 1%', 'tokens_for_1pct', 'int'), ('teacher/step', 'teacher_fraction', 'pct')], flops)
    if processes:
        add("train.py's optimizer step at 1 and 2 processes (torchrun, gloo, one thread each; the same "
            "global batch; median wall ms per step)",
            [('processes', 'processes', 'int'), ('tokens/step', 'tokens_per_step', 'int'),
             ('HPR ms', 'hpr_s', 'ms'), ('PC ms', 'pc_s', 'ms'), ('PC/HPR', 'pc_over_hpr', 'x')], processes)
    add(f'Per process on paper, the paper shapes at {args.flops_tokens:,} tokens/step split over the '
        'processes (projection: the most loaded process\'s share, as infra/processes.assign_owners splits them; '
        'GiB: static bytes of one process, fp32 AdamW, PC\'s frozen base in float32 or bfloat16 '
        '(proj_dtype); traffic: MB one process receives per step, W_c beyond DDP vs DDP\'s gradient '
        'all-reduce)',
        [('model', 'model', 's'), ('compr', 'compression', 'x'), ('processes', 'processes', 'int'),
         ('proj/step', 'proj_share', 'pct'), ('HPR GiB', 'hpr_bytes', 'gib'), ('PC GiB', 'pc_bytes', 'gib'),
         ('PC/HPR', 'pc_over_hpr', 'x'), ('PC GiB bf16 base', 'pc_bytes_bf16', 'gib'),
         ('PC/HPR bf16 base', 'pc_over_hpr_bf16', 'x'), ('W_c MB', 'wc_bytes', 'mb'),
         ('DDP MB', 'ddp_bytes', 'mb')], per_process)
    add('Static memory on paper (fp32, AdamW; params + grads + optimizer state, PC also the frozen '
        'base and the saved projection graph; no activations), GiB',
        [('model', 'model', 's'), ('compr', 'compression', 'x'), ('base params', 'base_params', 'g'),
         ('HPR params', 'compressed_params', 'g'), ('PC P', 'p_params', 'g'), ('PC R', 'r_params', 'g'),
         ('base GiB', 'static_base_bytes', 'gib'), ('HPR GiB', 'static_hpr_bytes', 'gib'),
         ('PC GiB', 'static_pc_bytes', 'gib'), ('PC/HPR', 'static_pc_over_hpr', 'x'),
         ('PC/base', 'static_pc_over_base', 'x')], flops)

    wall = time.time() - t_start
    meta = dict(device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
                clock=args.clock,
                platform=platform.platform(), autocast='bf16' if args.device.startswith('cuda') else 'none',
                compile=args.compile, model=args.model, base_config=asdict(base_cfg),
                compressed_config=asdict(small_cfg), removed=removed, args=vars(args), wall_s=wall)
    results = dict(meta=meta, timing=dict(configs=rows, fixed_cost=fixed, crossover=cross),
                   memory=memory, flops=flops, processes=dict(measured=processes, model=per_process))
    print()
    print('\n\n'.join(texts))
    print(f"\nwall time {wall:.1f} s")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'bench_results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out_dir, 'bench_results.md'), 'w') as f:
        f.write(f"# Projected Compression vs HPR: cost benchmark\n\n"
                f"`{' '.join(['python bench.py'] + argv)}` on {args.device} "
                f"({torch.get_num_threads()} threads, torch {torch.__version__}), wall {wall:.0f} s. "
                f"Base {args.model} (n_embd {base_cfg.n_embd}, d_ff {base_cfg.d_ff}, "
                f"{base_cfg.n_layer} layers), compressed to n_embd {small_cfg.n_embd}, "
                f"d_ff {small_cfg.d_ff} ({100 * removed:.1f}% of params removed). Times are "
                f"{'process CPU time' if args.clock == 'cpu' else 'wall clock'}, arms interleaved "
                f"round-robin, median of {args.reps} steps.\n\n")
        if memory:
            f.write(f"Memory method: {memory['method']}.\n\n")
        f.write('\n\n'.join(mds) + '\n')
    return results


if __name__ == '__main__':
    main()
