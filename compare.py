"""
The paper's race on the embedded default: from one base, with the same importance scores, schedule,
batch, data and tokens, does Projected Compression (PC) end at a lower loss than hard pruning with
retraining (HPR)? Each arm trains at its own learning rate, the best of a sweep (the rates are in
config/compare_shakespeare_char.py, next to the command that finds them again).

    python compare.py                                   # 50% and 90%, 1,000 steps, ~8 min on 2 cores
    python compare.py --levels=0.35,0.5,0.65,0.7,0.9 --early=True   # more levels; also a base of 1/4 the tokens
    python compare.py --lrs=2^-12,2^-11,2^-10,2^-9,2^-8 --budgets=1000   # sweep: each arm at its best rate
    python compare.py --lrs=0.001                       # both arms at one shared rate
    python compare.py --importance=magnitude,activation,random   # one race per importance score
    python compare.py --base=out/some_base/ckpt.pt      # race from an existing base instead of training one
    python compare.py --eval_tasks=piqa,wikitext        # also score every raced run with lm-eval (eval.py)

It prepares data/shakespeare_char and trains the base of config/base_shakespeare_char.py if they are
missing, trains PC and HPR for every level x base x budget x importance x learning rate, then writes
compare.md (tables shaped like the paper's Table 1), compare.json and compare.png (and compare_lr.png
for a sweep) into out_dir. With --eval_tasks, each raced run's final model (a PC run's merged.pt, an HPR
run's ckpt.pt) and each base is also scored by lm-eval through eval.py, and compare.md gets a table
of those scores (kept in each run's eval.json, and reused while the model and the tasks are the same).
Finished runs are reused: a run counts as finished when its summary.json records exactly the asked
settings and the ckpt.pt beside it is at the summary's last step. A run stopped part way (a kill, a
sitting that ended) continues from its ckpt.pt, exactly, when train.py would take that checkpoint as
its resume (checkpoint.resume_refusal: the same settings outside RESUME_MAY_CHANGE, the same PC dtype)
and, for a PC or HPR run, the base is the same; else it starts again.

Options: compare.py's own, below, as --key=value. Any other --key=value is a train.py setting for
the arm runs (PC and HPR), e.g. --seed=2 or --decay_projections=True; --base.key=value is one for
the base runs, e.g. --base.n_layer=2 for a quick try. Every arm run lives in its own folder named
after its settings, so another option never replaces a finished run; a base folder that holds a
base trained with other settings is refused (pass another --base_dir).
"""
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

import gpt
import pc
import train
from data.loader import meta
from infra import checkpoint, files, hf, settings

# ---- compare.py's own settings ----
levels = '0.5,0.9'            # compression levels: the fraction of the base's parameters removed
budgets = '1000'              # steps of each arm run: one run per budget, each a full schedule
lrs = 'tuned'                 # tuned: each arm at its rate in arm_config; one rate: both arms at it;
                              # several (2^-k or numbers): every arm at each, raced at its best held-out rate
importance = ''               # '' = arm_config's; several (magnitude,activation,random): one race each
early = False                 # also race from the early base: base_config trained on a quarter of the
                              # tokens as its own run (own warmup and full cosine schedule)
mid = False                   # also race from the final base's checkpoint at a quarter of its tokens
                              # (mid-schedule, learning rate still high)
base = ''                     # race from this base checkpoint instead of training one
last_steps = 100              # the paper's measure: training loss averaged over the last N steps
jobs = 1                      # training processes at once (>1: child processes, one thread each)
eval_tasks = ''                # lm-eval tasks scored on every raced arm run and base (eval.py), e.g. piqa,wikitext
eval_limit = 0                # at most this many examples per task (0: all)
eval_include_path = ''        # a folder of your own lm-eval task YAML files
base_config = 'config/base_shakespeare_char.py'
arm_config = 'config/compare_shakespeare_char.py'
base_dir = ''                 # where the base lives; '' = the out_dir of base_config
shipped_base = 'data/shakespeare_char/base'   # a finished base run that ships with the repository: copied
                              # to the base's folder when that is empty and the settings match ('': train it)
out_dir = 'out/compare'

OWN = dict(levels=levels, budgets=budgets, lrs=lrs, importance=importance, early=early, mid=mid,
           base=base, last_steps=last_steps, jobs=jobs, eval_tasks=eval_tasks, eval_limit=eval_limit,
           eval_include_path=eval_include_path, base_config=base_config,
           arm_config=arm_config, base_dir=base_dir, shipped_base=shipped_base, out_dir=out_dir)
# train.py settings that compare.py sets for every arm run itself, and the option that sets them
SET_HERE = dict(arm='compare.py runs both arms', base_ckpt='use --base=<checkpoint>',
                compression='use --levels', max_iters='use --budgets', max_tokens='use --budgets',
                tokens_per_param='use --budgets', stop_iter='use --budgets',
                learning_rate='use --lrs', min_lr='use --lrs (min_lr is a tenth of each rate)',
                early_ckpt_frac='arm runs keep no early checkpoint', init_from='compare.py decides it')
BASE_SET_HERE = dict(arm='the base is arm=base', out_dir='use --base_dir', init_from='compare.py decides it')
ARMS = ('hpr', 'pc')
HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------
# Options: every one is checked before any work.

def parse_options(argv):
    """(compare.py's options, train.py settings for the arms, train.py settings for the base), all
    read by infra/settings.parse's rules."""
    opts, rest = settings.parse(argv, OWN, config_files=False, rest=True, doc=__doc__)
    arm_args, base_args = [], []
    for a in rest:
        key, eq, value = a[2:].partition('=')
        setting = key[5:] if key.startswith('base.') else key
        if setting not in train.DEFAULTS:
            close = difflib.get_close_matches(setting, [*OWN, *train.DEFAULTS], n=1)
            raise SystemExit(f"error: unknown option --{key}: neither a compare.py option nor a train.py "
                             f"setting" + (f"; did you mean --{close[0]}?" if close else ""))
        if not eq and type(train.DEFAULTS[setting]) is bool:   # a bare --flag means True, as everywhere
            value = 'True'
        elif not eq:
            raise SystemExit(f"error: '{a}' should look like --{key}=value")
        if key.startswith('base.'):
            if setting in BASE_SET_HERE:
                raise SystemExit(f"error: --{key} is not a setting to pass: {BASE_SET_HERE[setting]}")
            base_args.append(f"--{setting}={value}")
        elif key in SET_HERE:
            raise SystemExit(f"error: --{key} is set by compare.py for every arm run: {SET_HERE[key]}")
        else:
            arm_args.append(f"--{key}={value}")
    return opts, arm_args, base_args


def parse_rate(text):
    """A learning rate: a number (0.001) or a power of two (2^-10 or 2**-10)."""
    t = text.strip().replace('**', '^')
    if t.startswith('2^'):
        return 2.0 ** float(t[2:])
    return float(t)


def rate_name(lr):
    """2^-10 for a power of two, else the number."""
    import math
    k = math.log2(lr)
    return f"2^{k:g}" if k == round(k) else f"{lr:.3g}"


def checked_lists(opts):
    try:
        lv = [float(x) for x in opts['levels'].split(',')]
        bud = [int(x) for x in opts['budgets'].split(',')]
    except ValueError:
        raise SystemExit(f"error: --levels={opts['levels']} and --budgets={opts['budgets']} should be "
                         f"comma-separated numbers, e.g. --levels=0.35,0.5 --budgets=500,1000")
    if not all(0 < x < 1 for x in lv):
        raise SystemExit(f"error: --levels={opts['levels']}: every level is the fraction of parameters "
                         f"removed, strictly between 0 and 1 (e.g. 0.5)")
    if min(bud) <= 0 or opts['last_steps'] <= 0 or opts['jobs'] <= 0:
        raise SystemExit("error: --budgets, --last_steps and --jobs must be positive")
    if opts['lrs'] == 'tuned':
        rates = [None]
    else:
        try:
            rates = [parse_rate(x) for x in opts['lrs'].split(',')]
        except ValueError:
            raise SystemExit(f"error: --lrs={opts['lrs']} should be 'tuned' or comma-separated rates, "
                             f"e.g. --lrs=0.001 or --lrs=2^-12,2^-11,2^-10")
        if not all(0 < r < float('inf') for r in rates) or len(set(rates)) != len(rates):
            raise SystemExit(f"error: --lrs={opts['lrs']}: rates must be positive, finite and different")
    imps = opts['importance'].split(',') if opts['importance'] else [None]
    bad = [m for m in imps if m is not None and m not in pc.METHODS]
    if bad or len(set(imps)) != len(imps):
        raise SystemExit(f"error: --importance={opts['importance']}: use different ones of "
                         f"{', '.join(pc.METHODS)}")
    return lv, bud, sorted(rates, key=lambda r: -1 if r is None else r), imps


def check_run(cfg):
    """Every setting train.py would refuse, refused now, before any run trains (train.py's own checks)."""
    settings.check_train(cfg, train.DEFAULTS)
    if cfg['dataset'] != 'shakespeare_char':   # the embedded one is prepared here if missing
        meta(settings.data_folder(cfg['dataset']))   # the loader's own line if it is not prepared


# ----------------------------------------------------------------------------------------------
# Runs: reuse a finished one, else train (in this process, or in a child process per run).

def settings_of(cfg):
    """What makes two runs the same run: every setting but where it lives and how it started."""
    return {k: v for k, v in cfg.items() if k not in ('out_dir', 'init_from')}


def peek(path):
    """A checkpoint's contents, memory-mapped (a big base is not read whole); {} if unreadable."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:
        return {}


def ckpt_iter(path):
    """The iteration a checkpoint was saved at."""
    return peek(path).get('iter')


def resumable(cfg):
    """A run stopped part way (a kill, a lost sitting) continues from its ckpt.pt, exactly, when train.py
    would accept that checkpoint as its resume and, for an arm run, the base is the same; else it
    starts again (where train.py would refuse the resume with an error)."""
    path = os.path.join(cfg['out_dir'], 'ckpt.pt')
    ck = peek(path)
    dtype = settings.resolve_proj_dtype(cfg['proj_dtype'], settings.resolve_device(cfg['device']))
    return (bool(ck) and checkpoint.resume_refusal(ck, cfg, dtype, path) is None   # train.py's own rule
            and (cfg['arm'] == 'base' or ck.get('base_sha256') == base_sha256(cfg['base_ckpt'])))


def finished(cfg):
    """The summary of a finished run of exactly these settings in cfg['out_dir'], else None: its
    summary records the same settings, the ckpt.pt beside it is at the summary's last step (a base
    still training, or stopped mid-run, is never taken as done), and an arm run's base is unchanged."""
    path = os.path.join(cfg['out_dir'], 'summary.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        done = json.load(f)
    if settings_of(done.get('config', {})) != settings_of(cfg):
        return None
    if ckpt_iter(os.path.join(cfg['out_dir'], 'ckpt.pt')) != done.get('iters'):
        return None
    if cfg['arm'] != 'base' and ((cfg['base_ckpt'].endswith('.pt') and not os.path.isfile(cfg['base_ckpt'])) or
                                 done.get('base_sha256') != base_sha256(cfg['base_ckpt'])):
        return None
    return done


_sha = {}


def base_sha256(spec):
    """checkpoint.base_sha256 (a checkpoint, model folder or pretrained name), once per file version: a big
    base is hashed once, not once per arm run."""
    st = os.stat(spec) if os.path.isfile(spec) else None
    key = (os.path.abspath(spec), st.st_mtime_ns, st.st_size) if st else spec
    if key not in _sha:
        _sha[key] = checkpoint.base_sha256(spec)
    return _sha[key]


def refuse_other_base(cfg):
    """A base folder holding a base of other settings (finished or not) is never overwritten."""
    for name in ('summary.json', 'ckpt.pt'):
        path = os.path.join(cfg['out_dir'], name)
        if not os.path.isfile(path):
            continue
        if name == 'summary.json':
            with open(path) as f:
                theirs = json.load(f).get('config', {})
        else:
            theirs = checkpoint.load_checkpoint(path)['config']
        diff = [f"{k}={theirs.get(k)!r} (asked {v!r})" for k, v in settings_of(cfg).items() if theirs.get(k) != v]
        if diff:
            raise SystemExit(f"error: {cfg['out_dir']} holds a base trained with other settings: "
                             f"{', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}; pass "
                             f"--base_dir=<another folder> to train this one there")


def arm_run_args(arm_config, arm, base_ckpt, level, iters, lr, extra=()):
    """train.py's arguments for one arm run: a fixed number of steps from a base (no token budget, no
    early checkpoint), at lr (min_lr a tenth of it) or, for lr None, the arm config's own rate."""
    args = [arm_config, *extra, f'--arm={arm}', f'--base_ckpt={base_ckpt}', f'--compression={level}',
            f'--max_iters={iters}', '--max_tokens=0', '--tokens_per_param=0.0', '--stop_iter=0',
            '--early_ckpt_frac=0.0']
    return args + ([f'--learning_rate={lr!r}', f'--min_lr={lr / 10!r}'] if lr else [])


def restore_shipped(cfg, shipped, config_path):
    """The base a fresh clone races from without training it: the shipped run folder, copied whole to
    cfg's out_dir when that holds nothing yet and the shipped run is finished with exactly cfg's settings
    (files.write_folder: a kill leaves no half-copied base)."""
    target = cfg['out_dir']
    if not shipped or (os.path.isdir(target) and os.listdir(target)) or finished({**cfg, 'out_dir': shipped}) is None:
        return
    print(f"== the base: {shipped} ships with the repository, trained by python train.py "
          f"{config_path}; copied to {target}", flush=True)
    files.write_folder(target, lambda tmp: shutil.copytree(shipped, tmp, dirs_exist_ok=True), may_replace=())


def train_in_child(cfg):
    """train.train(cfg) in a child process with one thread; its output goes to out_dir/train.log."""
    os.makedirs(cfg['out_dir'], exist_ok=True)
    cfg_path, log_path = (os.path.join(cfg['out_dir'], n) for n in ('compare_cfg.json', 'train.log'))
    with open(cfg_path, 'w') as f:
        json.dump(cfg, f)
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': HERE + os.pathsep + os.environ.get('PYTHONPATH', '')}
    with open(log_path, 'a' if cfg['init_from'] == 'resume' else 'w') as log:   # a resume adds to the log
        rc = subprocess.run([sys.executable, '-c', 'import json, sys, train; '
                             'train.train(json.load(open(sys.argv[1])))', cfg_path],
                            stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc:   # the child's own line, if it stopped with one
        with open(log_path, errors='replace') as f:
            said = [l.strip() for l in f if l.startswith('error: ')]
        why = said[-1][len('error: '):] if said else f"exit code {rc}"
        raise SystemExit(f"error: the run in {cfg['out_dir']} failed: {why} (its log: {log_path})")


def run_all(jobs_, items, when_done=None):
    """items: (label, cfg). Reuses finished runs, trains the others; returns their summaries.
    when_done(cfg, summary), if given, hears of each run as soon as it has trained (from a worker
    thread when jobs_ > 1), so that a run that fails, or a kill, loses no other finished run."""
    todo = []
    for i, (label, cfg) in enumerate(items):
        if finished(cfg):
            print(f"== [{i + 1}/{len(items)}] {label}: reusing {cfg['out_dir']}")
        else:
            todo.append((i, label, cfg))
    def one(job):
        i, label, cfg = job
        resume = resumable(cfg)
        cfg = {**cfg, 'init_from': 'resume' if resume else 'scratch'}
        where = f" (log: {cfg['out_dir']}/train.log)" if jobs_ > 1 else ""
        print(f"== [{i + 1}/{len(items)}] {label}" + (" (resuming)" if resume else "") + where, flush=True)
        if jobs_ > 1:
            train_in_child(cfg)
        else:
            train.train(cfg)
        done = when_done and finished(items[i][1])
        if done:   # (a run that stopped short is reported below, with the others)
            when_done(items[i][1], done)
    if jobs_ > 1:
        with ThreadPoolExecutor(jobs_) as ex:
            list(ex.map(one, todo))
    else:
        for job in todo:
            one(job)
    out = []
    for label, cfg in items:
        done = finished(cfg)
        if done is None:
            raise SystemExit(f"error: {cfg['out_dir']} did not finish; see its metrics.jsonl")
        out.append(done)
    return out


def records(run_dir, kind):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['kind'] == kind]


def last_steps_loss(run_dir, n, distilled=False):
    """The training loss averaged over the last n steps (train records hold means over `steps`):
    the cross-entropy, which for a distillation run (distilled=True) is its records' 'ce', not its
    objective 'loss' (None: a run from before train.py logged it)."""
    total, steps = 0.0, 0
    for r in reversed(records(run_dir, 'train')):
        if steps >= n:
            break
        if distilled and 'ce' not in r:
            return None
        total, steps = total + r['ce' if distilled else 'loss'] * r['steps'], steps + r['steps']
    return total / steps


def run_name(cfg, level, base_label, iters, arm):
    """A readable prefix and a hash of every setting: another option, another folder."""
    return (f"c{round(level * 100)}_{base_label}_{iters}_{arm}_{cfg['importance']}_"
            f"lr{rate_name(cfg['learning_rate'])}_{settings_sha256(cfg)[:8]}")


def settings_sha256(cfg):
    return hashlib.sha256(json.dumps(settings_of(cfg), sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------

def main(argv):
    opts, arm_args, base_args = parse_options(argv)
    lv, bud, rates, imps = checked_lists(opts)
    eval_cfg = eval_settings(opts)
    for path in (opts['base_config'], opts['arm_config']):
        if not os.path.isfile(path):
            raise SystemExit(f"error: config file '{path}' not found (see config/)")

    # the bases: trained here (final, and with --early its own early run) or given with --base
    base_runs, bases = [], []
    if opts['base']:
        if opts['early'] or opts['mid'] or base_args or opts['base_dir']:
            raise SystemExit("error: --base races from the given checkpoint only; drop --early, --mid, "
                             "--base_dir and --base.* options, which are for a base trained here")
        name = opts['base']
        if (os.sep in name or name.endswith('.pt')) and not os.path.exists(name):
            raise SystemExit(f"error: --base={name} does not exist; give a base checkpoint written by "
                             f"train.py, a model folder or a pretrained name (gpt2, gpt2-medium, ...)")
        base_sha256(name)   # a folder or name that is no model: its one line now, before any run
        bases.append(('given', name))
    else:
        final = train.parse_args([opts['base_config']] + base_args +
                                 ([f"--out_dir={opts['base_dir']}"] if opts['base_dir'] else []))
        if final['arm'] != 'base':
            raise SystemExit(f"error: {opts['base_config']} is an arm={final['arm']} config; give a base config")
        check_run(final)
        restore_shipped(final, opts['shipped_base'], opts['base_config'])
        base_runs.append((f"base: {opts['base_config']}", final))
        bases.append(('final', os.path.join(final['out_dir'], 'ckpt.pt')))
        if opts['early']:   # same recipe on a quarter of the tokens, with its own full schedule
            quarter = {k: final[k] / 4 for k in ('tokens_per_param', 'max_tokens') if final[k]}
            if final['max_iters']:
                quarter['max_iters'] = max(1, final['max_iters'] // 4)
            if 'max_tokens' in quarter:
                quarter['max_tokens'] = int(quarter['max_tokens'])
            early_cfg = {**final, **quarter, 'early_ckpt_frac': 0.0, 'out_dir': final['out_dir'] + '_early'}
            base_runs.append((f"early base: {opts['base_config']} on a quarter of the tokens", early_cfg))
            bases.append(('early', os.path.join(early_cfg['out_dir'], 'ckpt.pt')))
        if opts['mid']:
            if abs(final['early_ckpt_frac'] - 0.25) > 1e-9:
                raise SystemExit(f"error: --mid=True needs the base to keep ckpt_early.pt at a quarter "
                                 f"of its tokens (early_ckpt_frac=0.25, now {final['early_ckpt_frac']})")
            bases.append(('mid', os.path.join(final['out_dir'], 'ckpt_early.pt')))

    # every arm run's settings, checked before any training
    items = []
    for lvl in lv:
        for b, path in bases:
            for n in bud:
                for imp in imps:
                    for arm in ARMS:
                        for lr in rates:
                            cfg = train.parse_args(arm_run_args(
                                opts['arm_config'], arm, path, lvl, n, lr,
                                arm_args + ([f'--importance={imp}'] if imp else [])))
                            check_run(cfg)
                            cfg['out_dir'] = os.path.join(opts['out_dir'], run_name(cfg, lvl, b, n, arm))
                            items.append((dict(level=lvl, base=b, iters=n, arm=arm), cfg))
    for run_ in base_runs:
        if items[0][1]['dataset'] != run_[1]['dataset']:
            raise SystemExit(f"error: the arms would train on {items[0][1]['dataset']} but the base on "
                             f"{run_[1]['dataset']}; pass the dataset to both (--dataset=X --base.dataset=X)")
        if items[0][1]['block_size'] > run_[1]['block_size']:
            raise SystemExit(f"error: the arms' block_size={items[0][1]['block_size']} is larger than the "
                             f"base's ({run_[1]['block_size']})")
        if not finished(run_[1]):
            refuse_other_base(run_[1])
    for _, cfg in items:   # a finished distillation run is reused only with its training CE
        if cfg['distill_alpha'] and finished(cfg) and last_steps_loss(cfg['out_dir'], 1, True) is None:
            raise SystemExit(f"error: {cfg['out_dir']} is a distillation run from before train.py logged its "
                             f"cross-entropy; remove the folder to rerun it")

    # 1. the embedded dataset, prepared if missing
    if (items[0][1]['dataset'] == 'shakespeare_char'
            and not os.path.isfile(os.path.join(settings.data_folder('shakespeare_char'), 'meta.json'))):
        print("== preparing data/shakespeare_char")
        from data.shakespeare_char import prepare
        prepare.main()

    # 2. the bases, 3. the arms
    base_summaries = dict(zip([b for b, _ in bases], run_all(opts['jobs'], base_runs)))
    label = lambda m, c: (f"{m['arm'].upper()} at {m['level']:.0%} from the {m['base']} base, {m['iters']} "
                          f"iters, {c['importance']}, lr {rate_name(c['learning_rate'])}")
    summaries = run_all(opts['jobs'], [(label(m, c), c) for m, c in items])
    results = []
    for (meta_, cfg), s in zip(items, summaries):
        results.append(dict(meta_, importance=cfg['importance'], lr=cfg['learning_rate'],
                            **{k: s[k] for k in ('out_dir', 'tokens', 'val_loss', 'params', 'trainable_params')},
                            train_loss=last_steps_loss(s['out_dir'], opts['last_steps'], bool(cfg['distill_alpha']))))
    race = best_rates(results)
    base_evals = downstream_scores(race, bases, eval_cfg, opts) if eval_cfg else None

    # 4. tables and figures
    os.makedirs(opts['out_dir'], exist_ok=True)
    info = {b: describe_base(path, base_summaries.get(b)) for b, path in bases}
    md = tables(results, race, info, opts, swept=len(rates) > 1)
    if eval_cfg:
        md += downstream_table(race, base_evals)
    if len(imps) > 1:
        md += kept_overlap(bases, lv, imps, items[0][1])
    with open(os.path.join(opts['out_dir'], 'compare.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(opts['out_dir'], 'compare.json'), 'w') as f:
        json.dump(dict(bases=info, race=race, runs=results), f, indent=1)
    pngs = [plot(race, info, opts)] + ([plot_rates(results, race, opts)] if len(rates) > 1 else [])
    print(md)
    print(f"figures: {', '.join(pngs)}\ntable:   {os.path.join(opts['out_dir'], 'compare.md')}")
    return race


def best_rates(results):
    """Per level, base, budget, importance and arm: the run at the arm's best held-out rate (with
    one rate per arm, that run), flagged when the best rate is the lowest or highest tried."""
    groups = {}
    for r in results:
        groups.setdefault((r['level'], r['base'], r['iters'], r['importance'], r['arm']), []).append(r)
    race = []
    for runs in groups.values():
        best = min(runs, key=lambda r: r['val_loss'])
        tried = sorted(r['lr'] for r in runs)
        race.append(dict(best, rates_tried=tried,
                         at_edge=len(tried) > 1 and best['lr'] in (tried[0], tried[-1])))
    return race


def eval_settings(opts):
    """eval.py's settings for --eval_tasks (None without it), its tasks checked now, before any run."""
    if not opts['eval_tasks']:
        return None
    import eval as evaluation
    cfg = evaluation.parse_args([f"--tasks={opts['eval_tasks']}", f"--limit={opts['eval_limit']}",
                                 f"--include_path={opts['eval_include_path']}"])
    evaluation.check(cfg, model_needed=False, prefix='eval_')
    evaluation.task_names(evaluation.lm_eval_lib(), cfg, prefix='eval_')
    return cfg


def tasks_sha256(folder):
    """sha256 of every file under an include_path (its task YAML and local data): a task edited
    since a run was scored is scored again."""
    paths = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names) if folder else []
    return files.file_sha256(*paths) if paths else None


def downstream_scores(race, bases, eval_cfg, opts):
    """lm-eval scores of each raced run's final model (put in r['eval']) and of each base (returned,
    by base label), reused from eval.json when the model file and the eval settings are the same."""
    import eval as evaluation
    asked = {k: eval_cfg[k] for k in ('tasks', 'limit', 'include_path', 'num_fewshot', 'seed')}
    asked['include_path_sha256'] = tasks_sha256(eval_cfg['include_path'])

    def scored(model_path, record):
        sha = checkpoint.base_sha256(model_path)
        if os.path.isfile(record):
            with open(record) as f:
                done = json.load(f)
            if done.get('settings') == asked and done.get('model_sha256') == sha:
                return done
        print(f"== lm-eval ({eval_cfg['tasks']}) on {model_path}", flush=True)
        results = evaluation.evaluate(dict(eval_cfg, model=model_path))
        done = dict(settings=asked, model_sha256=sha, scores=evaluation.scores(results),
                    higher_is_better=results.get('higher_is_better', {}), average_acc=results['average_acc'])
        files.write_text(record, json.dumps(done, indent=1) + '\n')
        return done

    for r in race:
        model = os.path.join(r['out_dir'], 'merged.pt' if r['arm'] == 'pc' else 'ckpt.pt')
        r['eval'] = scored(model, os.path.join(r['out_dir'], 'eval.json'))
    os.makedirs(opts['out_dir'], exist_ok=True)
    return {b: scored(path, os.path.join(opts['out_dir'], f'eval_base_{b}.json')) for b, path in bases}


def main_metric(rec, task):
    """The metric a task is ranked by: acc if it reports one, else word_perplexity, else its first."""
    metrics = rec['scores'][task]
    for m in ('acc', 'word_perplexity'):
        if m in metrics:
            return m
    return sorted(metrics)[0]


def downstream_table(race, base_evals):
    """Each raced run's lm-eval score per task (its main metric; best of each PC/HPR pair in bold)
    and the mean accuracy, with each base's scores first."""
    recs = [r['eval'] for r in race] + list(base_evals.values())
    tasks = sorted({t for rec in recs for t in rec['scores']})
    metric = {t: main_metric(next(rec for rec in recs if t in rec['scores']), t) for t in tasks}
    higher = {t: recs[0]['higher_is_better'].get(t, {}).get(metric[t], True) for t in tasks}
    has_acc = any(metric[t] == 'acc' for t in tasks)
    head = ['importance', 'compression', 'base', 'arm', 'steps'] + [f"{t} ({metric[t]})" for t in tasks] + \
           (['mean acc'] if has_acc else [])
    lines = ["**Downstream (lm-eval through eval.py)**: each raced run's final model (PC: its merged model), "
             "zero-shot; best of each PC/HPR pair in bold", '', '| ' + ' | '.join(head) + ' |',
             '|' + '---|' * len(head)]
    value = lambda rec, t: rec['scores'].get(t, {}).get(metric[t])
    for b, rec in base_evals.items():
        cells = [f"{value(rec, t):.4f}" if value(rec, t) is not None else '' for t in tasks]
        lines.append(f"| | | {b} | base | | " + ' | '.join(cells + ([f"{rec['average_acc']:.4f}"] if has_acc else [])) + ' |')
    pair = {(r['importance'], r['level'], r['base'], r['iters'], r['arm']): r for r in race}
    for key in sorted(pair):
        r = pair[key]
        other = pair.get((*key[:4], 'hpr' if r['arm'] == 'pc' else 'pc'))
        cells = []
        for t in tasks + (['mean acc'] if has_acc else []):
            mine = r['eval']['average_acc'] if t == 'mean acc' else value(r['eval'], t)
            theirs = None if other is None else (other['eval']['average_acc'] if t == 'mean acc' else value(other['eval'], t))
            better = theirs is None or (mine >= theirs if t == 'mean acc' or higher[t] else mine <= theirs)
            cells.append('' if mine is None else f"**{mine:.4f}**" if better else f"{mine:.4f}")
        lines.append(f"| {r['importance']} | {r['level']:.0%} | {r['base']} | {r['arm'].upper()} | {r['iters']} | "
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines + ['', ''])


def describe_base(path, summary):
    """Size and, for a base trained here, tokens and held-out loss."""
    if os.path.isfile(path):
        ckpt = checkpoint.load_checkpoint(path)
        mcfg = gpt.GPTConfig(**ckpt['model_args'])
    else:   # a model folder or pretrained name: its config.json, no weights
        folder = path if os.path.isdir(path) else hf.download(path)
        with open(os.path.join(folder, 'config.json')) as f:
            ckpt, mcfg = {}, hf.config_from_hf(json.load(f), f"'{folder}'", 0.0)
    out = dict(path=path, params=gpt.param_counts(mcfg)['total'], n_layer=mcfg.n_layer,
               n_embd=mcfg.n_embd, d_ff=mcfg.d_ff, iter=ckpt.get('iter'))
    if summary is not None:
        out.update(tokens=summary['tokens'], val_loss=summary['val_loss'])
    elif ckpt.get('config') and ckpt.get('iter') is not None:   # a checkpoint kept mid-run
        c = ckpt['config']
        out['tokens'] = ckpt['iter'] * c['batch_size'] * c['block_size'] * c['grad_accum']
    return out


def tables(results, race, info, opts, swept):
    budgets_ = sorted({r['tokens'] for r in race})
    order = lambda r: (r['importance'], r['level'], ['final', 'early', 'mid', 'given'].index(r['base']))
    lines = []
    for b, d in info.items():
        line = f"Base ({b}): {d['params']:,} parameters; {d['n_layer']} layers, n_embd {d['n_embd']}, d_ff {d['d_ff']}"
        if 'tokens' in d:
            line += f"; {d['tokens']:,} tokens ({d['tokens'] / d['params']:.1f} per parameter)"
        if 'val_loss' in d:
            line += f"; validation loss {d['val_loss']:.4f}"
        lines.append(line + f" ({d['path']}).")
    mode = ("each arm at its own best held-out rate of the sweep" if swept else
            "each arm at its rate in " + opts['arm_config'] if opts['lrs'] == 'tuned' else
            f"both arms at {opts['lrs']}")
    lines += ['', f"Learning rates: {mode} (the rate of each cell after @; min_lr a tenth of it).", '']
    head = ('| importance | compression | base | arm | params | trained params | '
            + ' | '.join(f"{t / 1e6:.3g}M tok" for t in budgets_) + ' |')
    rule = '|' + '---|' * (6 + len(budgets_))
    cell = {(r['importance'], r['level'], r['base'], r['arm'], r['tokens']): r for r in race}
    keys = sorted({(r['importance'], r['level'], r['base']) for r in race},
                  key=lambda k: order(dict(importance=k[0], level=k[1], base=k[2])))
    for title, key in (('Held-out validation loss', 'val_loss'),
                       (f"Training loss averaged over the last {opts['last_steps']} steps of each run, "
                        f"or all of a shorter one (the paper's measure)", 'train_loss')):
        lines += [f"**{title}** (columns: retraining tokens of each run; best of each pair in bold)",
                  '', head, rule]
        for imp, lvl, b in keys:
            for arm in ARMS:
                row = [cell.get((imp, lvl, b, arm, t)) for t in budgets_]
                any_r = next(r for r in row if r)
                cells = []
                for t, r in zip(budgets_, row):
                    if r is None:
                        cells.append('')
                        continue
                    other = cell.get((imp, lvl, b, 'pc' if arm == 'hpr' else 'hpr', t))
                    v = f"{r[key]:.4f}"
                    v = f"**{v}**" if other is None or r[key] <= other[key] else v
                    cells.append(f"{v} @ {rate_name(r['lr'])}" + (" (edge)" if r['at_edge'] else ""))
                lines.append(f"| {imp} | {lvl:.0%} | {b} | {arm.upper()} | {any_r['params']:,} | "
                             f"{any_r['trainable_params']:,} | " + ' | '.join(cells) + ' |')
        lines.append('')
    lines += ["**PC - HPR** (below zero: PC ahead; held-out / the paper's measure)", '',
              '| importance | compression | base | ' + ' | '.join(f"{t / 1e6:.3g}M tok" for t in budgets_) + ' |',
              '|' + '---|' * (3 + len(budgets_))]
    for imp, lvl, b in keys:
        cells = []
        for t in budgets_:
            h, p = cell.get((imp, lvl, b, 'hpr', t)), cell.get((imp, lvl, b, 'pc', t))
            cells.append(f"{p['val_loss'] - h['val_loss']:+.4f} / {p['train_loss'] - h['train_loss']:+.4f}"
                         if h and p else '')
        lines.append(f"| {imp} | {lvl:.0%} | {b} | " + ' | '.join(cells) + ' |')
    lines.append('')
    if swept:
        rates_ = sorted({r['lr'] for r in results})
        lines += ["**The sweep: held-out validation loss at each learning rate** (best of each row in bold; "
                  "(edge): the best is the lowest or highest rate tried, widen --lrs)", '',
                  '| importance | compression | base | steps | arm | ' + ' | '.join(rate_name(x) for x in rates_) + ' |',
                  '|' + '---|' * (5 + len(rates_))]
        for r0 in sorted(race, key=lambda r: (*order(r), r['iters'], r['arm'])):
            runs = {r['lr']: r for r in results if all(r[k] == r0[k] for k in ('importance', 'level', 'base', 'iters', 'arm'))}
            cells = [('' if x not in runs else f"**{runs[x]['val_loss']:.4f}**" if x == r0['lr']
                      else f"{runs[x]['val_loss']:.4f}") for x in rates_]
            lines.append(f"| {r0['importance']} | {r0['level']:.0%} | {r0['base']} | {r0['iters']} | "
                         f"{r0['arm'].upper()}{' (edge)' if r0['at_edge'] else ''} | " + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


def kept_overlap(bases, lv, imps, cfg):
    """How far the importance methods agree: the share of the first method's kept residual
    dimensions and MLP units (mean over layers) that each method also keeps, selected as train.py
    selects them (same widths, seed and calibration batches). The activation_gelu scores are shown
    too, though train.py cannot train with them yet."""
    from data.loader import fixed_batches
    data_dir = settings.data_folder(cfg['dataset'])
    calib = fixed_batches(data_dir, 'train', cfg['block_size'], cfg['batch_size'], cfg['importance_batches'],
                          seed=cfg['seed'])
    methods = imps + [m for m in ('activation_gelu',) if m not in imps and 'activation' in imps]
    lines = [f"**Kept sets**: the share of {imps[0]}'s kept residual dimensions / MLP units (mean over "
             f"layers) that each importance also keeps", '',
             '| compression | base | ' + ' | '.join(methods) + (' | activation_gelu vs activation |'
                                                                  if 'activation_gelu' in methods else ' |'),
             '|' + '---|' * (2 + len(methods) + ('activation_gelu' in methods))]
    share = lambda a, b, n: (len(set(a['D'].tolist()) & set(b['D'].tolist())) / n,
                             sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a['F'], b['F'])) / a['F'].numel())
    for lvl in lv:
        for b, path in bases:
            base_model = checkpoint.load_gpt(path)
            small, _ = pc.compressed_config(base_model.config, compression=lvl, multiple_of=cfg['width_multiple'])
            kept = {m: pc.select(pc.importance(base_model, m, calib if m.startswith('activation') else None,
                                               seed=cfg['seed']), small.n_embd, small.d_ff) for m in methods}
            pairs = [(methods[0], m) for m in methods] + [('activation', 'activation_gelu')] * ('activation_gelu' in methods)
            cells = ["{:.0%} / {:.0%}".format(*share(kept[a], kept[b], small.n_embd)) for a, b in pairs]
            lines.append(f"| {lvl:.0%} | {b} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines + ['', ''])


def plot(race, info, opts):
    """Per compression level: validation loss against tokens of the longest runs (top, zoomed past
    the step-0 drop) and PC minus HPR (bottom: below zero, PC is ahead); first importance only."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    imp = sorted({r['importance'] for r in race})[0]
    race = [r for r in race if r['importance'] == imp]
    lvls = sorted({r['level'] for r in race})
    longest = max(r['iters'] for r in race)
    fig, axes = plt.subplots(2, len(lvls), figsize=(max(8, 5.5 * len(lvls)), 7.5), squeeze=False,
                             gridspec_kw=dict(height_ratios=[2, 1]), sharex='col')
    colors = {'hpr': 'tab:orange', 'pc': 'tab:blue'}
    styles = {'final': '-', 'early': ':', 'mid': '-.', 'given': '-'}
    for col, lvl in enumerate(lvls):
        ax, dax = axes[0, col], axes[1, col]
        curve, shown, starts = {}, [], {}
        for r in race:
            if r['level'] != lvl:
                continue
            label = f"{r['arm'].upper()} ({r['base']} base, lr {rate_name(r['lr'])})"
            if r['iters'] == longest:   # the whole curve of the longest run
                ev = records(r['out_dir'], 'eval')
                curve[r['base'], r['arm']] = ev
                ax.plot([e['tokens'] / 1e6 for e in ev], [e['val_loss'] for e in ev], styles[r['base']],
                        color=colors[r['arm']], label=label)
                shown += [e['val_loss'] for e in ev[1:]]
                starts[r['base']] = ev[0]['val_loss']
            else:                       # shorter budgets: their final point
                ax.plot(r['tokens'] / 1e6, r['val_loss'], 'o' if r['base'] == 'final' else 's',
                        color=colors[r['arm']], mfc='none', label=f"{label}, end of a {r['iters']}-iter run")
                shown.append(r['val_loss'])
        for b, d in info.items():
            if 'val_loss' in d:
                ax.axhline(d['val_loss'], color='gray', lw=0.8, ls=styles[b], label=f'uncompressed {b} base')
        # the step-0 loss of the pruned model is far above the rest: keep the interesting range
        ax.set_ylim(min(shown + [d['val_loss'] for d in info.values() if 'val_loss' in d]) - 0.02, max(shown) + 0.02)
        at0 = ', '.join(f"{v:.3f} ({b})" for b, v in starts.items())
        ax.set_title(f"{lvl:.0%} of the base's parameters removed\nstep 0, both arms: {at0}, above the chart",
                     fontsize=9)
        ax.set_ylabel('validation loss (nats/token)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        for b in sorted({b for b, _ in curve}):
            hpr, pc_ = curve[b, 'hpr'], curve[b, 'pc']
            dax.plot([e['tokens'] / 1e6 for e in pc_], [p['val_loss'] - h['val_loss'] for p, h in zip(pc_, hpr)],
                     styles[b], color='k', label=f"{b} base")
        dax.axhline(0, color='gray', lw=0.8)
        dax.set_xlabel('retraining tokens (millions)')
        dax.set_ylabel('PC - HPR (nats/token)')
        dax.set_title('below zero: PC ahead', fontsize=9)
        dax.grid(alpha=0.3)
        dax.legend(fontsize=8)
    fig.suptitle(f"PC vs HPR, each at its learning rate: held-out validation loss\n"
                 f"({longest}-iteration runs, {imp} importance)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))   # room for the two-line title: nothing cut off
    path = os.path.join(opts['out_dir'], 'compare.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rates(results, race, opts):
    """The sweep: final held-out loss against the learning rate, per level (columns), at the longest
    budget and the first importance; a best at either end of a curve means the grid is too narrow."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    imp = sorted({r['importance'] for r in race})[0]
    longest = max(r['iters'] for r in race)
    sel = [r for r in results if r['importance'] == imp and r['iters'] == longest]
    lvls = sorted({r['level'] for r in sel})
    fig, axes = plt.subplots(1, len(lvls), figsize=(max(6, 4.2 * len(lvls)), 3.8), squeeze=False)
    colors = {'hpr': 'tab:orange', 'pc': 'tab:blue'}
    styles = {'final': 'o-', 'early': 's:', 'mid': '^-.', 'given': 'o-'}
    for ax, lvl in zip(axes[0], lvls):
        for b in sorted({r['base'] for r in sel}):
            for arm in ARMS:
                pts = sorted((r['lr'], r['val_loss']) for r in sel if (r['level'], r['base'], r['arm']) == (lvl, b, arm))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[b], color=colors[arm], ms=4,
                        label=f"{arm.upper()}, {b} base")
        ax.set_xscale('log', base=2)
        ax.set_title(f"{lvl:.0%} removed", fontsize=10)
        ax.set_xlabel('peak learning rate')
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f'validation loss after {longest} steps')
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"Learning-rate sweep ({imp} importance)", fontsize=11)
    fig.tight_layout()
    path = os.path.join(opts['out_dir'], 'compare_lr.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == '__main__':
    main(sys.argv[1:])
