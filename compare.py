"""
The paper's race, on the embedded default: from one base, with the same importance scores,
optimizer, schedule, batch and tokens, does Projected Compression (PC) end at a lower loss than hard
pruning with retraining (HPR)?

    python compare.py                      # 50% compression, two token budgets, ~12 min on 2 cores
    python compare.py --levels=0.35,0.5,0.65 --early=True

It prepares data/shakespeare_char and trains the base of config/base_shakespeare_char.py if they are
missing (later runs reuse them, and reuse every arm run whose settings have not changed), runs PC
and HPR for every compression level x token budget (x base: the final one, and with --early=True
also the one kept at a quarter of its tokens), then writes a figure and a markdown table shaped like
the paper's Table 1 into out_dir.

Options: the keys below as --key=value; any other --key=value is a train.py setting applied to every
run (the base and the arms), e.g. --n_layer=2 for a quick try.
"""
import json
import os
import sys

import train

# ---- compare.py's own settings ----
levels = '0.5'                # compression levels (fraction of the base's parameters removed)
budgets = '500,1000'          # iterations of each arm run: one run per budget, each a full schedule
early = False                 # also race from the base kept at early_ckpt_frac of its tokens
last_steps = 100              # the paper's measure: training loss averaged over the last N steps
base_config = 'config/base_shakespeare_char.py'
arm_config = 'config/compare_shakespeare_char.py'
base_dir = ''                 # where the base lives; '' = the out_dir of base_config
out_dir = 'out/compare'


def run(cfg, label):
    """Train unless a finished run with the same settings is already in cfg['out_dir']."""
    path = os.path.join(cfg['out_dir'], 'summary.json')
    if os.path.exists(path):
        done = json.load(open(path))
        same_base = cfg['arm'] == 'base' or (os.path.exists(cfg['base_ckpt']) and
                                             done.get('base_sha256') == train.gpt.base_sha256(cfg['base_ckpt']))
        if done.get('config') == cfg and same_base:
            print(f"== {label}: reusing {cfg['out_dir']}")
            return done
    resume = os.path.exists(os.path.join(cfg['out_dir'], 'ckpt.pt')) and cfg['arm'] == 'base'
    print(f"== {label}" + (" (resuming)" if resume else ""), flush=True)
    return train.train({**cfg, 'init_from': 'resume' if resume else 'scratch'})


def records(run_dir, kind):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['kind'] == kind]


def last_steps_loss(run_dir, n):
    """Training loss averaged over the last n steps (train records hold means over `steps`)."""
    total, steps = 0.0, 0
    for r in reversed(records(run_dir, 'train')):
        if steps >= n:
            break
        total, steps = total + r['loss'] * r['steps'], steps + r['steps']
    return total / steps


def main(argv):
    opts = dict(levels=levels, budgets=budgets, early=early, last_steps=last_steps,
                base_config=base_config, arm_config=arm_config, base_dir=base_dir, out_dir=out_dir)
    ours, theirs = [], []
    for a in argv:
        (ours if a.startswith('--') and a[2:].partition('=')[0] in opts else theirs).append(a)
    for a in ours:
        key, _, value = a[2:].partition('=')
        try:
            opts[key] = value in ('True', 'true', '1') if isinstance(opts[key], bool) else type(opts[key])(value)
        except ValueError:
            raise SystemExit(f"error: --{key}={value} should be a {type(opts[key]).__name__}")
    if any(not a.startswith('--') for a in theirs):
        raise SystemExit(f"error: compare.py takes only --key=value options, got {theirs}")
    try:
        lv = [float(x) for x in str(opts['levels']).split(',')]
        bud = [int(x) for x in str(opts['budgets']).split(',')]
    except ValueError:
        raise SystemExit(f"error: --levels={opts['levels']} and --budgets={opts['budgets']} should be "
                         f"comma-separated numbers, e.g. --levels=0.35,0.5 --budgets=500,1000")
    if min(bud) <= 0 or opts['last_steps'] <= 0:
        raise SystemExit("error: --budgets and --last_steps must be positive")

    # 1. the embedded dataset, prepared if missing
    base_cfg = train.parse_args([opts['base_config']] + theirs)
    here = os.path.dirname(os.path.abspath(__file__))
    if (base_cfg['dataset'] == 'shakespeare_char'
            and not os.path.exists(os.path.join(here, 'data', 'shakespeare_char', 'meta.json'))):
        print("== preparing data/shakespeare_char")
        from data.shakespeare_char import prepare
        prepare.main()

    # 2. the base (and its early checkpoint)
    if opts['base_dir']:
        base_cfg['out_dir'] = opts['base_dir']
    base = run(base_cfg, f"base: {opts['base_config']}")
    bases = [('final', os.path.join(base_cfg['out_dir'], 'ckpt.pt'))]
    if opts['early']:
        bases.append(('early', os.path.join(base_cfg['out_dir'], 'ckpt_early.pt')))

    # 3. the arms: same settings but for arm (and pc's own switches), one out_dir each
    results = []
    runs = [(lvl, b, path, n, arm) for lvl in lv for b, path in bases for n in bud for arm in ('hpr', 'pc')]
    for i, (lvl, b, path, n, arm) in enumerate(runs):
        name = f"c{round(lvl * 100)}_{b}_{n}_{arm}"
        cfg = train.parse_args([opts['arm_config']] + theirs + [
            f'--arm={arm}', f'--base_ckpt={path}', f'--compression={lvl}', f'--max_iters={n}',
            '--max_tokens=0', '--tokens_per_param=0.0', '--stop_iter=0', '--early_ckpt_frac=0.0',
            f"--out_dir={os.path.join(opts['out_dir'], name)}"])
        summary = run(cfg, f"[{i + 1}/{len(runs)}] {arm.upper()} at {lvl:.0%} from the {b} base, {n} iters")
        results.append(dict(level=lvl, base=b, iters=n, **{k: summary[k] for k in (
            'arm', 'out_dir', 'tokens', 'val_loss', 'params', 'trainable_params')},
            train_loss=last_steps_loss(summary['out_dir'], opts['last_steps'])))

    # 4. figure and table
    os.makedirs(opts['out_dir'], exist_ok=True)
    png = plot(results, base, opts)
    md = table(results, base, base_cfg, opts)
    with open(os.path.join(opts['out_dir'], 'compare.json'), 'w') as f:
        json.dump(dict(base=base, runs=results), f, indent=1)
    print(md)
    print(f"figure: {png}\ntable:  {os.path.join(opts['out_dir'], 'compare.md')}")
    return results


def plot(results, base, opts):
    """Per compression level: validation loss against tokens (top, zoomed past the step-0 drop) and
    PC minus HPR (bottom: below zero, PC is ahead)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    lvls = sorted({r['level'] for r in results})
    longest = max(r['iters'] for r in results)
    fig, axes = plt.subplots(2, len(lvls), figsize=(max(8, 6 * len(lvls)), 7.5), squeeze=False,
                             gridspec_kw=dict(height_ratios=[2, 1]), sharex='col')
    colors = {'hpr': 'tab:orange', 'pc': 'tab:blue'}
    for col, lvl in enumerate(lvls):
        ax, dax = axes[0, col], axes[1, col]
        curve, shown, starts = {}, [], {}
        for r in results:
            if r['level'] != lvl:
                continue
            style = '-' if r['base'] == 'final' else ':'
            label = f"{r['arm'].upper()} ({r['base']} base)"
            if r['iters'] == longest:   # the whole curve of the longest run
                ev = records(r['out_dir'], 'eval')
                curve[r['base'], r['arm']] = ev
                ax.plot([e['tokens'] / 1e6 for e in ev], [e['val_loss'] for e in ev], style,
                        color=colors[r['arm']], label=label)
                shown += [e['val_loss'] for e in ev[1:]]
                starts[r['base']] = ev[0]['val_loss']
            else:                       # shorter budgets: their final point
                ax.plot(r['tokens'] / 1e6, r['val_loss'], 'o' if r['base'] == 'final' else 's',
                        color=colors[r['arm']], mfc='none', label=f"{label}, end of a {r['iters']}-iter run")
                shown.append(r['val_loss'])
        ax.axhline(base['val_loss'], color='gray', lw=0.8, ls='--', label='uncompressed base')
        # the step-0 loss of the pruned model is far above the rest: keep the interesting range
        ax.set_ylim(min(shown + [base['val_loss']]) - 0.02, max(shown) + 0.02)
        at0 = ', '.join(f"{v:.3f} ({b} base)" for b, v in sorted(starts.items(), key=lambda kv: kv[0] != 'final'))
        ax.set_title(f"{lvl:.0%} of the base's parameters removed\n"
                     f"step 0, both arms: {at0}, above the chart", fontsize=10)
        ax.set_ylabel('validation loss (nats/token)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        for b in sorted({b for b, _ in curve}):
            hpr, pc_ = curve[b, 'hpr'], curve[b, 'pc']
            dax.plot([e['tokens'] / 1e6 for e in pc_], [p['val_loss'] - h['val_loss'] for p, h in zip(pc_, hpr)],
                     '-' if b == 'final' else ':', color='k', label=f"{b} base")
        dax.axhline(0, color='gray', lw=0.8)
        dax.set_xlabel('retraining tokens (millions)')
        dax.set_ylabel('PC - HPR (nats/token)')
        dax.set_title('below zero: PC ahead', fontsize=9)
        dax.grid(alpha=0.3)
        dax.legend(fontsize=8)
    fig.suptitle(f"PC vs HPR from one base: held-out validation loss (curves: {longest}-iteration runs)")
    fig.tight_layout()
    path = os.path.join(opts['out_dir'], 'compare.png')
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(results, base, base_cfg, opts):
    import gpt
    bm = gpt.load_gpt(os.path.join(base_cfg['out_dir'], 'ckpt.pt'))
    budgets_ = sorted({r['tokens'] for r in results})
    head = ('| compression | base | arm | params | trained params | '
            + ' | '.join(f"{t / 1e6:.2f}M tok" for t in budgets_) + ' |')
    rule = '|' + '---|' * (5 + len(budgets_))
    lines = [f"Base: {base['params']:,} parameters, {base['tokens']:,} tokens "
             f"({base['tokens'] / base['params']:.1f} per parameter), validation loss "
             f"{base['val_loss']:.4f}; {bm.config.n_layer} layers, n_embd {bm.config.n_embd}, "
             f"d_ff {bm.config.d_ff}.", '']
    for title, key in (('Held-out validation loss', 'val_loss'),
                       (f"Training loss averaged over the last {opts['last_steps']} steps of each run, "
                        f"or all of a shorter one (the paper's measure)", 'train_loss')):
        lines += [f"**{title}** (columns: retraining tokens of each run; best of each pair in bold)",
                  '', head, rule]
        groups = sorted({(r['level'], r['base']) for r in results}, key=lambda g: (g[0], g[1] != 'final'))
        for lvl, b in groups:
            for arm in ('hpr', 'pc'):
                row = {r['tokens']: r for r in results if (r['level'], r['base'], r['arm']) == (lvl, b, arm)}
                any_r = next(iter(row.values()))
                cells = []
                for t in budgets_:
                    if t not in row:
                        cells.append('')
                        continue
                    other = [r for r in results if (r['level'], r['base'], r['tokens']) == (lvl, b, t)
                             and r['arm'] != arm]
                    v = row[t][key]
                    best = all(v <= o[key] for o in other)
                    cells.append(f"**{v:.4f}**" if best else f"{v:.4f}")
                lines.append(f"| {lvl:.0%} | {b} | {arm.upper()} | {any_r['params']:,} | "
                             f"{any_r['trainable_params']:,} | " + ' | '.join(cells) + ' |')
        lines.append('')
    md = '\n'.join(lines)
    with open(os.path.join(opts['out_dir'], 'compare.md'), 'w') as f:
        f.write(md)
    return md


if __name__ == '__main__':
    main(sys.argv[1:])
