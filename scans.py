"""
The paper's three claims as seeded scans on the embedded default, and the recipes race. The paper
finds PC's lead over hard pruning and retraining (HPR) grows with (1) the quality of the base (its
tokens per parameter), (2) the size of the base, (3) the retraining tokens. Each claim here is a set
of cells (a base, a compression level, a budget). In every cell each arm trains at its own best
held-out rate: a sweep on the first seed (the prior rate, half and twice it, widened until the best
is inside), then the other seeds at that rate. The tables give each arm's mean ± sd over seeds and
each arm minus HPR, paired by seed (a seed fixes the data order of both arms), called a lead only
when the mean difference exceeds twice its standard error; the figure draws every seed.

    python scans.py --claim=quality     # bases of more tokens per parameter, at two sizes: repetition held apart
    python scans.py --claim=size        # bases of three sizes at 40 tokens per parameter
    python scans.py --claim=tokens      # retraining budgets of 250 ... 4,000 steps, a sweep per budget
    python scans.py --claim=recipes     # HPR, PC, from scratch, HPR + KD, PC + KD from the default base
    python scans.py --claim=quality --bases=e96_tpp10,e96_tpp40   # some of a claim's cells now, the rest later
    python scans.py --claim=size --from_ledger=True                # the table and figure from docs/ alone, any machine

Each writes out/scans/<claim>.md, .json and .png. Runs are compare.py's (one folder per settings under
out/scans/runs/, reused when finished; bases in out/base_<name>/), so a scan grows over several
sittings. Each arm run's result is also kept in docs/scan_runs.json (committed) as it ends: a fresh
clone, or a machine without out/, takes a run from there instead of training it again, when its
settings are the same and its base is the same checkpoint file or holds the same weights (a base
trained again: the table says on which machines its runs trained). A base trained again on another
kind of machine has other weights, so its runs train again there; --from_ledger=True instead draws
the tables and figure from the ledger and the bases' descriptions beside it (docs/scan_bases.json)
alone, training nothing, on any machine. The default base's HPR and PC rates at 1,000 steps are the
earlier sweep's, kept in config/compare_shakespeare_char.py, not swept again.
"""
import collections
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import threading

import torch

import compare
import train
from data.loader import meta
from infra import files, settings

# ---- scans.py's own settings ----
claim = 'quality'             # quality | size | tokens | recipes
bases = ''                    # '' = all of the claim's bases (BASES below); or some of them, comma-separated
budgets = ''                  # '' = the claim's budgets; or some, e.g. 250,500
arms = ''                     # '' = the claim's arms; or some, e.g. hpr,pc,scratch (HPR is always raced)
levels = '0.5,0.9'
seeds = '1337,2,3'            # the first seed runs the sweep; 1337 is train.py's default seed
kd_alpha = 0.5                # distillation arms: loss = (1 - alpha) CE + alpha KL(base || student)
jobs = 2                      # training processes at once (one thread each)
base_config = 'config/base_shakespeare_char.py'
arm_config = 'config/compare_shakespeare_char.py'
out_dir = 'out/scans'
ledger = 'docs/scan_runs.json'   # finished arm runs' results, kept in the repository ('' = neither read nor written)
from_ledger = False           # True: tables and figure from the ledger alone (no base or run trains; one missing is an error)
OWN = dict(claim=claim, bases=bases, budgets=budgets, arms=arms, levels=levels, seeds=seeds, kd_alpha=kd_alpha,
           jobs=jobs, base_config=base_config, arm_config=arm_config, out_dir=out_dir, ledger=ledger,
           from_ledger=from_ledger)

# The bases: base_config with these settings. The default (e96_tpp40) sees 14.2M tokens, 3.1 passes
# over the 4.6M training characters; e48 is the same recipe at half every width (a quarter of the
# parameters), so e48_t14m sees the default's tokens (same repetition, 4x the tokens per parameter);
# e144 is it at 1.5 times every width (2.2 times the parameters, about 4.6 times the base's compute).
BASES = {
    'e96_tpp10': ['--tokens_per_param=10.0'],
    'e96_tpp40': [],
    'e96_tpp160': ['--tokens_per_param=160.0'],
    'e48_tpp40': ['--n_embd=48', '--n_head=3'],
    'e48_t14m': ['--n_embd=48', '--n_head=3', '--tokens_per_param=0', '--max_tokens=14245888'],
    'e144_tpp40': ['--n_embd=144', '--n_head=3'],
}
DEFAULT_BASE = 'e96_tpp40'
CLAIMS = dict(
    quality=dict(bases=['e96_tpp10', 'e96_tpp40', 'e96_tpp160', 'e48_tpp40', 'e48_t14m'], budgets=[1000],
                 arms=['hpr', 'pc']),
    size=dict(bases=['e48_tpp40', 'e96_tpp40', 'e144_tpp40'], budgets=[1000], arms=['hpr', 'pc']),
    tokens=dict(bases=[DEFAULT_BASE], budgets=[250, 500, 1000, 2000, 4000], arms=['hpr', 'pc']),
    recipes=dict(bases=[DEFAULT_BASE], budgets=[1000], arms=['hpr', 'pc', 'scratch', 'hpr_kd', 'pc_kd']),
)
# train.py's arm of each recipe; the distillation arms add distill_alpha
ARMS = dict(hpr='hpr', pc='pc', scratch='scratch', hpr_kd='hpr', pc_kd='pc')
SCRATCH_PRIOR = 2 ** -7       # a rate to start the from-scratch sweep at: that of HPR at 90%
MAX_WIDEN = 3                 # at most this many rates added beyond an edge of a sweep


def parse_options(argv):
    opts = settings.parse(argv, OWN, config_files=False, doc=__doc__)
    if opts['claim'] not in CLAIMS:
        raise SystemExit(f"error: --claim={opts['claim']} is not one of {', '.join(CLAIMS)}")
    spec = CLAIMS[opts['claim']]
    chosen = opts['bases'].split(',') if opts['bases'] else spec['bases']
    bad = [b for b in chosen if b not in spec['bases']]
    if bad:
        raise SystemExit(f"error: --bases: {', '.join(bad)} is not a base of claim {opts['claim']} "
                         f"({', '.join(spec['bases'])})")
    arms_ = opts['arms'].split(',') if opts['arms'] else spec['arms']
    if any(a not in spec['arms'] for a in arms_) or 'hpr' not in arms_:
        raise SystemExit(f"error: --arms={opts['arms']}: some of {', '.join(spec['arms'])} (claim "
                         f"{opts['claim']}), hpr among them (every arm is raced against it)")
    try:
        buds = [int(x) for x in opts['budgets'].split(',')] if opts['budgets'] else spec['budgets']
        lv = [float(x) for x in opts['levels'].split(',')]
        sd = [int(x) for x in opts['seeds'].split(',')]
    except ValueError:
        raise SystemExit("error: --budgets, --levels and --seeds are comma-separated numbers, "
                         "e.g. --budgets=250,500 --levels=0.5,0.9 --seeds=1337,2,3")
    if not all(0 < x < 1 for x in lv) or min(buds) <= 0 or len(set(sd)) != len(sd) or opts['jobs'] <= 0:
        raise SystemExit("error: levels are in (0, 1), budgets and jobs positive, seeds different")
    if not 0 < opts['kd_alpha'] <= 1:
        raise SystemExit(f"error: --kd_alpha={opts['kd_alpha']} must be in (0, 1]")
    if opts['from_ledger'] and not os.path.isfile(opts['ledger'] or ''):
        raise SystemExit(f"error: --from_ledger=True reads the ledger, and --ledger={opts['ledger']!r} is no file: "
                         f"give --ledger=docs/scan_runs.json (the committed one)")
    return opts, chosen, buds, lv, sd, [a for a in spec['arms'] if a in arms_]


def base_run(opts, name):
    """The base's train.py settings (the default base lives where compare.py keeps it)."""
    cfg = train.parse_args([opts['base_config']] + BASES[name])
    if name != DEFAULT_BASE:   # beside the default base: out/base_<name>
        cfg['out_dir'] = os.path.join(os.path.dirname(cfg['out_dir']), f'base_{name}')
    compare.check_run(cfg)
    return cfg


def arm_run(opts, base_path, base_name, level, iters, arm, lr, seed):
    kd = [f'--distill_alpha={opts["kd_alpha"]}'] if arm.endswith('_kd') else []
    cfg = train.parse_args(compare.arm_run_args(opts['arm_config'], ARMS[arm], base_path, level, iters, lr,
                                                [f'--seed={seed}'] + kd))
    compare.check_run(cfg)
    cfg['out_dir'] = os.path.join(opts['out_dir'], 'runs', compare.run_name(cfg, level, base_name, iters, arm))
    return cfg


def config_rate(opts, level, arm):
    """The arm config's rate at this level (the earlier sweep's best for the default base at 1,000 steps)."""
    default_ckpt = os.path.join(base_run(opts, DEFAULT_BASE)['out_dir'], 'ckpt.pt')
    return arm_run(opts, default_ckpt, DEFAULT_BASE, level, 1000, arm, None, 0)['learning_rate']


def known_rate(opts, base_name, level, iters, arm):
    """The earlier sweep's best rate (config/compare_shakespeare_char.py), for the default base's HPR
    and PC at the main job's 1,000 steps; None elsewhere."""
    if base_name != DEFAULT_BASE or iters != 1000 or arm not in ('hpr', 'pc'):
        return None
    return config_rate(opts, level, arm)


def prior_rate(opts, level, arm):
    """Where a sweep starts: the default base's rate of the arm (of its plain arm, for KD)."""
    return SCRATCH_PRIOR if arm == 'scratch' else config_rate(opts, level, ARMS[arm])


def result(cfg, summary):
    return dict(lr=cfg['learning_rate'], seed=cfg['seed'], val_loss=summary['val_loss'], tokens=summary['tokens'],
                train_loss=compare.last_steps_loss(cfg['out_dir'], 100, distilled=bool(cfg['distill_alpha'])),
                out_dir=cfg['out_dir'], train_seconds=train_seconds(cfg['out_dir']), machine=this_machine(),
                params=summary['params'], trainable_params=summary['trainable_params'])


# ---- the ledger: each finished arm run's result, by run name, so that a scan grows across machines

def this_machine():
    """The processor and torch build a run trained on (PC at 90% moves with the machine, bit for bit)."""
    cpu = ''
    if os.path.isfile('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), '')
    return f"{cpu or platform.processor() or platform.machine()}; torch {torch.__version__}"


def read_ledger(path):
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            entries = json.load(f)
    except ValueError as e:
        entries = e
    if not isinstance(entries, dict):
        why = f"not valid JSON ({entries})" if isinstance(entries, ValueError) else "not a JSON object of runs"
        raise SystemExit(f"error: {path} is {why}; restore it (git checkout {path}, for the committed one), "
                         f"or pass --ledger='' to ignore it")
    return entries


_weights_sha = {}


def base_weights_sha256(path):
    """A hash of what an arm starts from: the base checkpoint's model_args and weights. A base trained
    again gives the same weights bit for bit (same machine, same threads) but not the same file: each
    save carries its own id. None for a base that is no checkpoint file."""
    if not os.path.isfile(path):
        return None
    if path not in _weights_sha:
        ck = torch.load(path, map_location='cpu', weights_only=True)
        h = hashlib.sha256(json.dumps(ck['model_args'], sort_keys=True).encode())
        for name in sorted(ck['model']):
            t = ck['model'][name].contiguous()
            h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
        _weights_sha[path] = h.hexdigest()
    return _weights_sha[path]


def same_base(e, cfg):
    """The entry was made from this base: the same checkpoint file, or the same weights."""
    if e['base_sha256'] == compare.base_sha256(cfg['base_ckpt']):
        return True
    weights = e.get('base_weights_sha256')
    return weights is not None and weights == base_weights_sha256(cfg['base_ckpt'])


def from_ledger(entries, cfg, base_weights=None):
    """The ledger's result for cfg's run, when no finished folder holds it and the entry was made with
    the same settings from the same base (its checkpoint file, or its weights); else None. With
    base_weights (--from_ledger: no base here) only the entry's base weights hash is compared."""
    e = entries.get(os.path.basename(cfg['out_dir']))
    if e is None or e['settings_sha256'] != compare.settings_sha256(cfg):
        return None
    if base_weights is not None:
        if e.get('base_weights_sha256') != base_weights:
            return None
    elif compare.finished(cfg) or not same_base(e, cfg):
        return None
    return {k: v for k, v in e.items() if k not in ('settings_sha256', 'base_sha256', 'base_weights_sha256')} | dict(
        out_dir=cfg['out_dir'])


def record(path, entries, cfgs, results):
    """Adds the runs' results to the ledger (written whole, atomically; a run whose training CE was
    not logged is left out, so that its table cell keeps saying how to rerun it). An entry made from
    another base (a base trained again on another kind of machine: other weights) is kept, not
    replaced: it is what a committed table was made from."""
    new = {}
    for cfg, r in zip(cfgs, results):
        name = os.path.basename(cfg['out_dir'])
        if r['train_loss'] is None:
            continue
        if name in entries and not same_base(entries[name], cfg):
            print(f"== {name}: not written to {path}, whose entry for it is from another base (kept)")
            continue
        new[name] = {k: v for k, v in r.items() if k != 'out_dir'} | dict(
            settings_sha256=compare.settings_sha256(cfg), base_sha256=compare.base_sha256(cfg['base_ckpt']),
            base_weights_sha256=base_weights_sha256(cfg['base_ckpt']))
    if path and any(entries.get(k) != v for k, v in new.items()):
        entries.update(new)
        files.write_text(path, json.dumps(entries, indent=1, sort_keys=True) + '\n')


def bases_path(opts):
    """The bases' descriptions beside the ledger: what --from_ledger knows of a base it cannot load."""
    return os.path.join(os.path.dirname(opts['ledger']), 'scan_bases.json')


def record_bases(opts, info, base_cfgs):
    """Each base's description (params, tokens, passes, val loss, weights hash, machine) into
    bases_path when none of that name is there; one of that name is kept (the ledger's runs are its)."""
    if not opts['ledger']:
        return
    known, new = read_ledger(bases_path(opts)), {}
    shipped = os.path.join(compare.shipped_base, 'ckpt.pt')
    for n, d in info.items():
        ckpt = os.path.join(base_cfgs[n]['out_dir'], 'ckpt.pt')
        weights = base_weights_sha256(ckpt)
        if n not in known:
            where = ('shipped with the repository' if os.path.isfile(shipped) and
                     compare.base_sha256(shipped) == compare.base_sha256(ckpt) else this_machine())
            new[n] = {k: v for k, v in d.items() if k != 'out_dir'} | dict(base_weights_sha256=weights, machine=where)
        elif known[n]['base_weights_sha256'] != weights:
            print(f"== base {n}: not written to {bases_path(opts)}, whose entry for it is of other weights (kept)")
    if new:
        files.write_text(bases_path(opts), json.dumps(known | new, indent=1, sort_keys=True) + '\n')


def ledger_bases(opts, names):
    """--from_ledger: the bases' descriptions from bases_path; a base not there is an error."""
    known = read_ledger(bases_path(opts))
    missing = [n for n in names if n not in known]
    if missing:
        raise SystemExit(f"error: --from_ledger: base {missing[0]} is not in {bases_path(opts)}; run the scan "
                         f"without --from_ledger to train it")
    return {n: known[n] for n in names}


def run_cells(opts, cells, seeds_, bases_known=None):
    """cells: dicts (base, base_path, level, iters, arm). Phase 1 sweeps each cell on the first
    seed (widening where the best is at an edge), phase 2 runs the other seeds at the chosen rate.
    Each phase trains all its runs together (compare.run_all, --jobs at once). With bases_known
    (--from_ledger) every run comes from the ledger, matched by its base's weights hash."""
    tried = {id(c): {} for c in cells}
    entries = read_ledger(opts['ledger'])
    lock = threading.Lock()

    def keep(cfg, summary):   # into the ledger as each run ends: a kill loses only the runs in training
        with lock:
            record(opts['ledger'], entries, [cfg], [result(cfg, summary)])

    def runs_at(pairs):   # pairs: (cell, lr, seed) -> results, trained together (or found in the ledger)
        cfgs = [arm_run(opts, c['base_path'], c['base'], c['level'], c['iters'], c['arm'], lr, s) for c, lr, s in pairs]
        label = lambda c, cfg: (f"{c['arm']} at {c['level']:.0%} from {c['base']}, {c['iters']} steps, "
                                f"lr {compare.rate_name(cfg['learning_rate'])}, seed {cfg['seed']}")
        kept = [from_ledger(entries, cfg, bases_known and bases_known[c['base']]['base_weights_sha256'])
                for (c, _, _), cfg in zip(pairs, cfgs)]
        missing = [(c, cfg) for (c, _, _), cfg, k in zip(pairs, cfgs, kept) if k is None]
        if bases_known is not None and missing:
            c, cfg = missing[0]
            raise SystemExit(f"error: --from_ledger: run {os.path.basename(cfg['out_dir'])} ({label(c, cfg)}) is not "
                             f"in {opts['ledger']} from this base; run the scan without --from_ledger to train it")
        if any(kept):
            print(f"== {sum(map(bool, kept))} of {len(cfgs)} runs taken from {opts['ledger']}")
        done = iter(compare.run_all(opts['jobs'], [(label(c, cfg), cfg) for (c, _, _), cfg, k
                                                   in zip(pairs, cfgs, kept) if k is None], keep))
        results = [k or result(cfg, next(done)) for cfg, k in zip(cfgs, kept)]
        if bases_known is None:
            record(opts['ledger'], entries, cfgs, results)   # the runs reused from their folders
        return results

    first, want = seeds_[0], []
    for c in cells:
        known = known_rate(opts, c['base'], c['level'], c['iters'], c['arm'])
        c['swept'] = known is None
        p = known or prior_rate(opts, c['level'], c['arm'])
        want += [(c, r, first) for r in ([p] if known else [p / 2, p, p * 2])]
    for _ in range(MAX_WIDEN + 1):
        for (c, lr, _), res in zip(want, runs_at(want)):
            tried[id(c)][lr] = res
        want = []
        for c in cells:
            rates = sorted(tried[id(c)])
            best = min(rates, key=lambda r: tried[id(c)][r]['val_loss'])
            c['lr'], c['rates_tried'] = best, rates
            c['at_edge'] = c['swept'] and best in (rates[0], rates[-1])
            if c['at_edge'] and len(rates) < 3 + MAX_WIDEN:
                want.append((c, best / 2 if best == rates[0] else best * 2, first))
        if not want:
            break
    for c in cells:
        c['sweep'] = {r: tried[id(c)][r]['val_loss'] for r in c['rates_tried']}
        c['sweep_runs'] = [tried[id(c)][r] for r in c['rates_tried']]
    rest = [(c, c['lr'], s) for c in cells for s in seeds_[1:]]
    for c in cells:
        c['seeds'] = [tried[id(c)][c['lr']]]
    for (c, _, _), res in zip(rest, runs_at(rest)):
        c['seeds'].append(res)
    return cells


def spread(values):
    """mean, sample standard deviation and standard error (0 for one value)."""
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, sd, sd / math.sqrt(len(values))


def verdict(diffs, names=('PC', 'HPR')):
    """A lead only when the mean paired difference exceeds twice its standard error."""
    m, sd, se = spread(diffs)
    if len(diffs) < 2:
        return 'one seed'
    if abs(m) <= 2 * se:
        return 'noise'
    return f"{names[0] if m < 0 else names[1]} leads"


def no_ce(cell):
    """'' when every run of the cell logged its training CE, else what its CE cells say instead."""
    missing = [r['out_dir'] for r in cell['seeds'] if r['train_loss'] is None]
    return (f"not logged (a KD run from before train.py logged CE: remove {missing[0]} to rerun it)"
            if missing else '')


def paired(cell, other, key):
    """Per-seed differences cell - other (only seeds both have)."""
    theirs = {r['seed']: r[key] for r in other['seeds']}
    return [r[key] - theirs[r['seed']] for r in cell['seeds'] if r['seed'] in theirs]


def describe(base_cfg, summary, train_tokens):
    return dict(params=summary['params'], tokens=summary['tokens'], val_loss=summary['val_loss'],
                tokens_per_param=summary['tokens'] / summary['params'], passes=summary['tokens'] / train_tokens,
                n_embd=summary['model_args']['n_embd'], train_seconds=train_seconds(base_cfg['out_dir']),
                out_dir=base_cfg['out_dir'])


def tables(opts, cells, info):
    fmt = lambda m, sd, n: f"{m:.4f} ± {sd:.4f} ({n})"
    lines = [f"# Claim: {opts['claim']}", '']
    lines += ["**Bases** (config/base_shakespeare_char.py with scans.py's BASES settings)", '',
              '| base | params | n_embd | tokens | tokens per param | passes over the training data | val loss |',
              '|---|---|---|---|---|---|---|']
    for name, d in info.items():
        val = 'not kept' if d['val_loss'] is None else f"{d['val_loss']:.4f}"
        lines.append(f"| {name} | {d['params']:,} | {d['n_embd']} | {d['tokens']:,} | {d['tokens_per_param']:.1f} | "
                     f"{d['passes']:.2f} | {val} |")
    lines += ['', f"**Each arm at its best held-out rate** (mean ± sd over seeds (n); rate chosen on seed "
              f"{cells[0]['seeds'][0]['seed']}; (edge): the best is the widest rate tried; (config): the earlier "
              f"sweep's rate, config/compare_shakespeare_char.py)", '',
              '| base | level | steps | arm | params | rate | held-out val loss | paper\'s measure (last 100 steps) |',
              '|---|---|---|---|---|---|---|---|']
    for c in cells:
        v = spread([r['val_loss'] for r in c['seeds']])
        t = no_ce(c) or fmt(*spread([r['train_loss'] for r in c['seeds']])[:2], len(c['seeds']))
        note = ' (edge)' if c['at_edge'] else '' if c['swept'] else ' (config)'
        lines.append(f"| {c['base']} | {c['level']:.0%} | {c['iters']} | {c['arm']} | {c['seeds'][0]['params']:,} | "
                     f"{compare.rate_name(c['lr'])}{note} | {fmt(v[0], v[1], len(c['seeds']))} | {t} |")
    lines += ['', "**Each arm - HPR**, paired by seed (below zero: the arm ahead; mean ± sd, standard error; "
              "a lead only beyond 2 standard errors)", '',
              '| base | level | steps | arm - HPR | held-out | SE | verdict | paper\'s measure | SE | verdict |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for c in cells:
        h = hpr_of(cells, c)
        if c['arm'] == 'hpr' or h is None:
            continue
        row = []
        for key in ('val_loss', 'train_loss'):
            if key == 'train_loss' and no_ce(c):
                row += [no_ce(c), '', '']
                continue
            d = paired(c, h, key)
            m, sd, se = spread(d)
            row += [f"{m:+.4f} ± {sd:.4f}", f"{se:.4f}", verdict(d, (c['arm'].upper(), 'HPR'))]
        lines.append(f"| {c['base']} | {c['level']:.0%} | {c['iters']} | {c['arm'].upper()} - HPR | " + ' | '.join(row) + ' |')
    every = {r['out_dir']: r for c in cells for r in c['seeds'] + c['sweep_runs']}
    hours = (sum(r['train_seconds'] for r in every.values()) +
             sum(d['train_seconds'] or 0 for d in info.values())) / 3600
    machines = collections.Counter(r['machine'] for r in every.values())
    untimed = sum(d['train_seconds'] is None for d in info.values())
    lines += ['', f"Runs: {len(every)} arm runs and {len(info)} base{'s' * (len(info) > 1)}, {hours:.2f} hours of training steps "
              f"(the sum of ms_per_iter x steps over their logs, kept in the ledgers" +
              (f"; not counted: the training of {untimed} of the bases, not kept in {bases_path(opts)}" if untimed else '') +
              "). The arm runs trained on: " +
              '; '.join(f"{m} ({n})" for m, n in sorted(machines.items())) + '.']
    swept = [c for c in cells if c['swept']]
    if swept:
        lines += ['', f"**The sweeps** (held-out val loss on seed {cells[0]['seeds'][0]['seed']}; best in bold)", '',
                  '| base | level | steps | arm | rate: loss |', '|---|---|---|---|---|']
        for c in swept:
            cells_ = [f"{compare.rate_name(r)}: " + (f"**{v:.4f}**" if r == c['lr'] else f"{v:.4f}")
                      for r, v in sorted(c['sweep'].items())]
            lines.append(f"| {c['base']} | {c['level']:.0%} | {c['iters']} | {c['arm']} | {', '.join(cells_)} |")
    return '\n'.join(lines) + '\n'


def train_seconds(run_dir):
    """A run's training time: ms_per_iter x steps over the train records of its log."""
    return sum(r['ms_per_iter'] * r['steps'] for r in compare.records(run_dir, 'train')) / 1e3


def hpr_of(cells, c):
    return next((o for o in cells if o['arm'] == 'hpr' and all(o[k] == c[k] for k in ('base', 'level', 'iters'))), None)


def plot(opts, cells, info):
    """PC - HPR (held-out) against the claim's variable, one line per level, every seed a dot and the
    mean ± 2 standard errors; the recipes claim: each arm - HPR per level."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = {0.5: 'tab:blue', 0.9: 'tab:red'}
    if opts['claim'] == 'recipes':
        arms = [a for a in CLAIMS['recipes']['arms'] if a != 'hpr']
        for i, lvl in enumerate(sorted({c['level'] for c in cells})):
            for j, arm in enumerate(arms):
                c = next((c for c in cells if c['level'] == lvl and c['arm'] == arm), None)
                h = c and hpr_of(cells, c)
                if c is None or h is None:
                    continue
                d = paired(c, h, 'val_loss')
                m, _, se = spread(d)
                x = j + (i - 0.5) * 0.3
                ax.scatter([x] * len(d), d, s=10, color=colors.get(lvl, 'k'), alpha=0.5)
                ax.errorbar(x, m, yerr=2 * se, fmt='o', color=colors.get(lvl, 'k'), capsize=3,
                            label=f"{lvl:.0%} removed" if j == 0 else None)
        ax.set_xticks(range(len(arms)), [f"{a.upper()} - HPR" for a in arms])
        ax.set_yscale('symlog', linthresh=0.02)
        lo, hi = ax.dataLim.y0, ax.dataLim.y1   # the error bars' ends included: symlog's autoscale cuts them
        ax.set_ylim(min(lo, 0) * 1.3 - 0.005, max(hi, 0) * 1.3 + 0.005)
    else:
        xs = dict(quality=lambda c: info[c['base']]['tokens_per_param'],
                  size=lambda c: info[c['base']]['params'],
                  tokens=lambda c: c['seeds'][0]['tokens'] / 1e6)[opts['claim']]
        groups = {}
        default_tokens = info.get(DEFAULT_BASE, {}).get('tokens')
        for c in cells:
            if c['arm'] != 'pc' or hpr_of(cells, c) is None:
                continue
            d = info[c['base']]
            # quality: a line per size (repetition grows with the tokens) and one through the bases
            # on the default base's tokens (repetition fixed)
            series = ([f"n_embd {d['n_embd']}"] + (["the default's tokens"] if d['tokens'] == default_tokens else [])
                      if opts['claim'] == 'quality' else [''])
            for name in series:
                groups.setdefault((c['level'], name), []).append(c)
        for (lvl, series), cs in sorted(groups.items()):
            cs.sort(key=xs)
            pts = []
            for c in cs:
                d = paired(c, hpr_of(cells, c), 'val_loss')
                m, _, se = spread(d)
                ax.scatter([xs(c)] * len(d), d, s=10, color=colors.get(lvl, 'k'), alpha=0.5)
                pts.append((xs(c), m, se))
                if opts['claim'] == 'quality' and series.startswith('n_embd'):   # passes over the training data
                    above = info[c['base']]['n_embd'] == max(b['n_embd'] for b in info.values())
                    ax.annotate(f"{info[c['base']]['passes']:.1f}x", (xs(c), m), fontsize=7,   # one size above
                                xytext=(4, 4) if above else (-4, -10), ha='left' if above else 'right',   # the other below
                                textcoords='offset points')
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[2 * p[2] for p in pts], capsize=3,
                        color=colors.get(lvl, 'k'), marker='o',
                        ls={'n_embd 48': '-.', "the default's tokens": ':'}.get(series, '-'),
                        label=f"{lvl:.0%} removed" + (f" ({series})" if series else ''))
        ax.set_xscale('log', base=2)
        ax.set_xlabel(dict(quality="base tokens per parameter", size="base parameters",
                           tokens="retraining tokens (millions)")[opts['claim']])
    ax.axhline(0, color='gray', lw=0.8)
    ax.set_ylabel('held-out loss: arm - HPR (below zero: arm ahead)' if opts['claim'] == 'recipes'
                  else 'held-out loss: PC - HPR (below zero: PC ahead)')
    n = len(cells[0]['seeds'])
    ax.set_title(f"Claim '{opts['claim']}': dots are seeds, bars the mean ± 2 SE ({n} seeds)\n"
                 f"each arm at its own best rate" + ("; labels: passes over the training data"
                                                     if opts['claim'] == 'quality' else ''), fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(opts['out_dir'], f"{opts['claim']}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv):
    opts, names, buds, lv, seeds_, arms = parse_options(argv)
    base_cfgs = {n: base_run(opts, n) for n in names}
    info = ledger_bases(opts, names) if opts['from_ledger'] else trained_bases(opts, names, base_cfgs)
    cells = [dict(base=n, base_path=os.path.join(base_cfgs[n]['out_dir'], 'ckpt.pt'), level=lvl, iters=it, arm=a)
             for n in names for lvl in lv for it in buds for a in arms]
    run_cells(opts, cells, seeds_, bases_known=info if opts['from_ledger'] else None)
    os.makedirs(opts['out_dir'], exist_ok=True)
    md = tables(opts, cells, info)
    with open(os.path.join(opts['out_dir'], f"{opts['claim']}.md"), 'w') as f:
        f.write(md)
    with open(os.path.join(opts['out_dir'], f"{opts['claim']}.json"), 'w') as f:
        json.dump(dict(bases=info, cells=[{k: v for k, v in c.items() if k != 'sweep'} | {'sweep': {
            repr(r): v for r, v in c['sweep'].items()}} for c in cells]), f, indent=1)
    png = plot(opts, cells, info)
    print(md)
    print(f"figure: {png}\ntable:  {os.path.join(opts['out_dir'], opts['claim'] + '.md')}")
    return cells


def trained_bases(opts, names, base_cfgs):
    """The claim's bases, trained here (or reused from their folders; the default base ships), each
    described for the tables and recorded beside the ledger."""
    for n, cfg in base_cfgs.items():
        if n == DEFAULT_BASE:
            compare.restore_shipped(cfg, compare.shipped_base, opts['base_config'])
        if not compare.finished(cfg):
            compare.refuse_other_base(cfg)
    data_dir = settings.data_folder(base_cfgs[names[0]]['dataset'])
    if base_cfgs[names[0]]['dataset'] == 'shakespeare_char' and not os.path.isfile(os.path.join(data_dir, 'meta.json')):
        from data.shakespeare_char import prepare
        prepare.main()
    summaries = compare.run_all(opts['jobs'], [(f"base {n}", cfg) for n, cfg in base_cfgs.items()])
    train_tokens = sum(e['tokens'] for e in meta(data_dir)['splits']['train'])
    info = {n: describe(base_cfgs[n], s, train_tokens) for n, s in zip(names, summaries)}
    record_bases(opts, info, base_cfgs)
    return info


if __name__ == '__main__':
    main(sys.argv[1:])
