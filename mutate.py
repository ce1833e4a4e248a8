"""
Seeded faults: does the test suite notice when the code breaks?

Each mutant is one small change to one place in the code (a comparison flipped, an operator or a
constant changed, a condition negated, a statement or a check removed), made in a copy of the
repository; the suite runs against it (`python -m pytest -x -q test_pc.py`, the tests about the
mutated file first, so that most mutants fail fast) and the mutant is *caught* if the suite fails
(or runs past the timeout). A fault the suite misses is a missing test (or, now and then, a change
that cannot alter behaviour, which the report lets you judge).

    python mutate.py                          # 100 mutants sampled from the default files, 2 at a time
    python mutate.py --n=30 --files=pc.py     # a quick look at one file
    python mutate.py --list=True              # every candidate, without running anything
    python mutate.py --semantic=True          # the hand-written faults of SEMANTIC below instead

Token-level mutants find some holes; slips of meaning find others. SEMANTIC lists faults of the
second kind, each one whole-expression or whole-statement change that keeps the program running and
changes what it computes or reports: a wrong definition, a setting one arm ignores, a check that
compares less than it says, a table cell from the wrong run, an unsafe order of writes.

Prints one line per mutant and the score; writes out/mutate/report.json (semantic.json).
"""
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from infra import settings

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ['pc.py', 'train.py', 'compare.py', 'scans.py', 'gpt.py', 'costs.py', 'infra/settings.py', 'infra/processes.py',
         'infra/checkpoint.py', 'infra/files.py', 'infra/hf.py', 'data/loader.py', 'data/tokenizer.py',
         'data/c4/prepare.py', 'data/shakespeare_char/prepare.py', 'data/shakespeare/prepare.py']
# Options, as --key=value (infra/settings.parse's rules)
OPTIONS = dict(
    n=100,                  # mutants to run, sampled from all candidates
    seed=0,
    files=','.join(FILES),  # comma-separated files to mutate
    jobs=2,                 # mutants tested at once (each its own copy)
    timeout=600,            # seconds before a mutant's suite counts as failing
    list=False,             # print every candidate and stop
    semantic=False,         # run the hand-written faults of SEMANTIC (all of them) instead
    out=os.path.join(HERE, 'out', 'mutate'),
)
SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
        ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.And: ast.Or, ast.Or: ast.And,
        ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


# (file, the code as it is, the code with the fault, what the fault means): each `old` occurs
# exactly once in its file (checked before anything runs).
SEMANTIC = [
    ('pc.py', "{'ln_1': 'D', 'ln_2': 'D', 'mlp.c_fc': 'F'}", "{'ln_1': 'D', 'ln_2': 'D', 'mlp.gelu': 'F'}",
     "activation importance of MLP units read after the GELU, not at c_fc's output"),
    ('pc.py', "        model.eval()\n        try:", "        model.train()\n        try:",
     "activation importance computed in train mode (dropout on)"),
    ('pc.py', "add(r, l, out.abs().sum((0, 1)))", "add(r, l, out.sum((0, 1)).abs())",
     "activation importance as |sum a| instead of sum |a|"),
    ('pc.py', "norms = part.norm(dim=1 - axis)", "norms = part.abs().sum(dim=1 - axis)",
     "magnitude importance as an L1 norm instead of L2"),
    ('train.py', "fixed_batches(data_dir, 'train', c.block_size, c.batch_size, c.importance_batches,",
     "fixed_batches(data_dir, 'val', c.block_size, c.batch_size, c.importance_batches,",
     "calibration batches from the validation split"),
    ('train.py', "c.batch_size, c.importance_batches,\n", "c.batch_size, 8,\n",
     "importance_batches ignored"),
    ('train.py', "'hpr':\n            r.model = pc.hard_prune(base, r.keep, dropout=c.dropout)",
     "'hpr':\n            r.model = pc.hard_prune(base, r.keep, dropout=0.0)", "HPR ignores dropout (PC honours it)"),
    ('train.py', "r.model = gpt.GPT(pc.hard_prune(base, r.keep, dropout=c.dropout).config)",
     "r.model = pc.hard_prune(base, r.keep, dropout=c.dropout)", "from scratch starts from the pruned base"),
    ('scans.py', "    if abs(m) <= 2 * se:", "    if abs(m) <= 2 * sd:",
     "a lead judged against twice the standard deviation, not the standard error"),
    ('scans.py', "best = min(rates, key=lambda r: tried[id(c)][r]['val_loss'])",
     "best = min(rates, key=lambda r: tried[id(c)][r]['train_loss'])", "the rate chosen by training loss"),
    ('scans.py', "rest = [(c, c['lr'], s) for c in cells for s in seeds_[1:]]",
     "rest = [(c, c['rates_tried'][1], s) for c in cells for s in seeds_[1:]]",
     "the other seeds at the sweep's second rate, not the chosen one"),
    ('scans.py', "            if c['at_edge'] and len(rates) < 3 + MAX_WIDEN:", "            if False:",
     "a sweep whose best is at its edge is never widened"),
    ('scans.py', "kd = [f'--distill_alpha={opts[\"kd_alpha\"]}'] if arm.endswith('_kd') else []",
     "kd = [f'--distill_alpha={opts[\"kd_alpha\"]}'] if arm == 'kd' else []", "the distillation arms do not distil"),
    ('scans.py', "    return [r[key] - theirs[r['seed']] for r in cell['seeds'] if r['seed'] in theirs]",
     "    return [a - b for a, b in zip(sorted(r[key] for r in cell['seeds']), sorted(theirs.values()))]",
     "arm - HPR paired by rank, not by seed"),
    ('train.py', "        return c.decay_vectors", "        return False", "decay_vectors ignored"),
    ('train.py', "    return (1 - alpha) * ce + alpha * T * T * kl", "    return (1 - alpha) * ce + alpha * T * kl",
     "distillation's KL not scaled by T^2"),
    ('train.py', "max(1, total - 1 - c.warmup_iters)", "max(1, total - c.warmup_iters)",
     "the cosine reaches min_lr one step after the last"),
    ('infra/checkpoint.py', "'device', 'compile', 'peak_flops', 'base_ckpt')", "'device', 'compile', 'peak_flops', 'base_ckpt', 'grad_clip')",
     "a resume accepts another grad_clip"),
    ('infra/checkpoint.py', "if resume is not None and resume.get('base_sha256') != r.base_info['base_sha256']:",
     "if resume is not None and resume.get('base_ckpt') != r.base_info['base_ckpt']:",
     "a resume's base checked by path, not by its bytes"),
    ('infra/settings.py', "if model_tokenizer and data_tokenizer and model_tokenizer != data_tokenizer:",
     "if model_tokenizer and data_tokenizer and model_tokenizer.get('tokenizer') != data_tokenizer.get('tokenizer'):",
     "the tokenizer check compares the kind, not the vocabulary"),
    ('infra/files.py', "            for k in sorted(v):\n                feed(k)\n", "            for k in sorted(v):\n",
     "fingerprints ignore dict keys"),
    ('compare.py', "best = min(runs, key=lambda r: r['val_loss'])", "best = min(runs, key=lambda r: r['train_loss'])",
     "the race takes each arm's best training-loss rate, not its best held-out rate"),
    ('compare.py', "f\"{p['val_loss'] - h['val_loss']:+.4f} / {p['train_loss'] - h['train_loss']:+.4f}\"",
     "f\"{h['val_loss'] - p['val_loss']:+.4f} / {p['train_loss'] - h['train_loss']:+.4f}\"",
     "PC - HPR printed as HPR - PC (held-out)"),
    ('compare.py', "v = f\"**{v}**\" if other is None or r[key] <= other[key] else v",
     "v = f\"**{v}**\" if other is None or r['val_loss'] <= other['val_loss'] else v",
     "the bold of the training-loss table follows held-out loss"),
    ('compare.py', "at_edge=len(tried) > 1 and best['lr'] in (tried[0], tried[-1])", "at_edge=len(tried) > 1 and best['lr'] == tried[0]",
     "a best at the highest rate tried is not flagged as at the edge"),
    ('compare.py', "total, steps = total + r['ce' if distilled else 'loss'] * r['steps'], steps + r['steps']",
     "total, steps = total + r['ce' if distilled else 'loss'], steps + 1",
     "the paper's measure as a mean of log records, not of steps"),
    ('gpt.py', "idx_cond = idx[:, -self.config.block_size:]", "idx_cond = idx",
     "generate() does not crop the context to block_size"),
    ('gpt.py', "logits = logits[:, -1, :] / temperature", "logits = logits[:, -1, :]",
     "generate() ignores the temperature"),
    ('sample.py', "top_k=cfg['top_k'] or None", "top_k=cfg['top_k'] or 1",
     "sample.py's --top_k=0 means greedy, not all tokens"),
    ('infra/checkpoint.py', "        **({'cuda_rng': torch.cuda.get_rng_state()} if r.device_type == 'cuda' else {})), path)\n"
     "    for old in glob.glob(glob.escape(path) + '.*of*'):\n        if os.path.basename(old) not in shards:\n"
     "            os.remove(old)",
     "        **({'cuda_rng': torch.cuda.get_rng_state()} if r.device_type == 'cuda' else {})), path)",
     "older checkpoints' shares are never removed"),
    ('compare.py', "done.get('base_sha256') != base_sha256(cfg['base_ckpt'])", "False",
     "a finished arm run is reused after its base changed"),
    ('eval.py', "out[i] = (logprob, bool((picked.argmax(-1) == target).all()))", "out[i] = (logprob, bool((picked.argmax(-1) == target).any()))",
     "is_greedy true when any continuation token is the argmax"),
    ('infra/files.py', "        other = sorted(set(os.listdir(folder)) - set(may_replace))", "        other = []",
     "an export replaces a folder holding other files"),
    ('train.py', "record['ce'] = r.loss_sum[1].item()", "record['ce'] = r.loss_sum[0].item()",
     "a distillation run logs its objective as its cross-entropy"),
    ('infra/checkpoint.py', "pending=dict(loss=r.loss_sum.tolist(),", "pending=dict(loss=r.loss_sum[0].item(),",
     "a checkpoint keeps the pending loss but not the pending cross-entropy"),
    ('scans.py', "100, distilled=bool(cfg['distill_alpha']))", "100)",
     "scans.py reads a distillation arm's objective as its training cross-entropy"),
    ('compare.py', "opts['last_steps'], bool(cfg['distill_alpha']))", "opts['last_steps'])",
     "compare.py's paper's measure of a distillation run is its objective"),
    ('eval.py', "        if name not in text:\n            continue\n", "",
     "a broken task YAML is blamed for a task it does not name"),
    ('scans.py', "ax.set_ylim(min(lo, 0) * 1.3 - 0.005, max(hi, 0) * 1.3 + 0.005)", "ax.set_ylim(lo, hi)",
     "the recipes figure's y-range without margins (bars at its edge)"),
    ('compare.py', "        resume = resumable(cfg)\n", "        resume = cfg['arm'] == 'base' and resumable(cfg)\n",
     "a stopped arm run starts again from step 0 (only bases continue)"),
    ('compare.py', "checkpoint.resume_refusal(ck, cfg, dtype, path) is None", "settings_of(ck.get('config', {})) == settings_of(cfg)",
     "a stopped run continues only when even its may-change settings (stop_iter) are the same"),
    ('compare.py', "checkpoint.resume_refusal(ck, cfg, dtype, path) is None",
     "checkpoint.resume_refusal(ck, cfg, ck.get('proj_dtype'), path) is None",
     "a stopped PC run is continued in another proj_dtype than it would run in now (train.py refuses it)"),
    ('compare.py', "and (cfg['arm'] == 'base' or ck.get('base_sha256') == base_sha256(cfg['base_ckpt'])))", ")",
     "a stopped arm run is continued after its base changed"),
    ('scans.py', "in zip(pairs, cfgs, kept) if k is None], keep))", "in zip(pairs, cfgs, kept) if k is None]))",
     "the ledger is written only when a whole batch of runs has ended"),
    ('compare.py', "with open(log_path, 'a' if cfg['init_from'] == 'resume' else 'w') as log:",
     "with open(log_path, 'w') as log:", "a run continued in a child process truncates its train.log"),
    ('scans.py', "    return weights is not None and weights == base_weights_sha256(cfg['base_ckpt'])", "    return False",
     "the ledger matches a base only by its file's bytes (a base trained again never matches)"),
    ('scans.py', "            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')\n", "",
     "the base's weights hash leaves out the weights"),
    ('scans.py', "            base_weights_sha256=base_weights_sha256(cfg['base_ckpt']))", "            )",
     "the ledger does not record its runs' base weights hash"),
    ('scans.py', "        if name in entries and not same_base(entries[name], cfg):", "        if False:",
     "the ledger overwrites an entry made from another base (a committed table's run)"),
    ('scans.py', "        if e.get('base_weights_sha256') != base_weights:\n            return None\n", "        pass\n",
     "--from_ledger takes a run made from other base weights"),
    ('scans.py', "        if n not in known:\n", "        if True:\n",
     "a base trained again with other weights overwrites the description the ledger's runs are of"),
]


def semantic_candidates():
    """SEMANTIC as mutants of the same form as candidates(): the replaced span and its new text."""
    out = []
    for path, old, new, what in SEMANTIC:
        source = open(os.path.join(HERE, path)).read()
        if source.count(old) != 1:
            raise SystemExit(f"error: a SEMANTIC fault of {path} no longer matches its code exactly once "
                             f"({what}); update it to the code")
        at = source.index(old)
        line, col = source.count('\n', 0, at) + 1, at - source.rfind('\n', 0, at) - 1
        end = at + len(old)
        end_line, end_col = source.count('\n', 0, end) + 1, end - source.rfind('\n', 0, end) - 1
        out.append((path, line, end_line, col, end_col, new, what))
    return out


def docstrings(tree):
    """The string constants that are docstrings (never mutated)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0].value))
    return out


def candidates(path):
    """(line, end_line, col, end_col, replacement, description) for every mutant of one file."""
    source = open(os.path.join(HERE, path)).read()
    tree = ast.parse(source)
    skip = docstrings(tree)
    lines = source.splitlines(keepends=True)
    out = []

    def expr(node, new, what):
        out.append((node.lineno, node.end_lineno, node.col_offset, node.end_col_offset,
                    '(' + ast.unparse(new) + ')', what))

    def stmt(node, what):   # the whole statement becomes `pass`, same indentation
        out.append((node.lineno, node.end_lineno, node.col_offset, node.end_col_offset, 'pass', what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP:
            new = ast.Compare(node.left, [SWAP[type(node.ops[0])]()], node.comparators)
            expr(node, new, f"{type(node.ops[0]).__name__} -> {SWAP[type(node.ops[0])].__name__}")
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP and not any(   # not string building
                isinstance(x, ast.JoinedStr) or isinstance(x, ast.Constant) and isinstance(x.value, str)
                for x in (node.left, node.right)):
            expr(node, ast.BinOp(node.left, SWAP[type(node.op)](), node.right),
                 f"{type(node.op).__name__} -> {SWAP[type(node.op)].__name__}")
        elif isinstance(node, ast.BoolOp):
            expr(node, ast.BoolOp(SWAP[type(node.op)](), node.values),
                 f"{type(node.op).__name__} -> {SWAP[type(node.op)].__name__}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            expr(node, node.operand, "not x -> x")
        elif isinstance(node, ast.Constant) and id(node) not in skip and not isinstance(node.value, str) \
                and node.value is not None and not isinstance(node.value, bytes):
            v = node.value
            new = (not v) if isinstance(v, bool) else v + 1 if isinstance(v, int) else v * 2 if v else 1.0
            expr(node, ast.Constant(new), f"{v!r} -> {new!r}")
        elif isinstance(node, (ast.If, ast.While)):
            new = ast.UnaryOp(ast.Not(), node.test)
            t = node.test
            out.append((t.lineno, t.end_lineno, t.col_offset, t.end_col_offset,
                        '(' + ast.unparse(new) + ')', "condition negated"))
            if any(isinstance(s, ast.Raise) for s in node.body) and not node.orelse:
                stmt(node, "check removed")
        if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.Return, ast.Raise)) and \
                not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            first = lines[node.lineno - 1]
            if first[:node.col_offset].strip() == '':   # a statement on its own line(s)
                stmt(node, "statement removed")
    return [(path, *c) for c in out]


def apply(source, line, end_line, col, end_col, replacement):
    lines = source.splitlines(keepends=True)
    head = lines[line - 1][:col]
    tail = lines[end_line - 1][end_col:]
    if replacement == 'pass' and tail.strip() == '':
        tail = '\n'
    return ''.join(lines[:line - 1]) + head + replacement + tail + ''.join(lines[end_line:])


def focused_tests(path, test_file=os.path.join(HERE, 'test_pc.py')):
    """The tests of the test file's sections about `path` (a section starts with a banner line of
    '=' and a title line naming the files it tests): run first, so that most mutants fail fast."""
    stem = os.path.basename(path)[:-3] if not path.startswith('data/') else 'data/'
    tests, title, lines = [], '', open(test_file).read().splitlines()
    for i, line in enumerate(lines):
        closing = [j for j in range(i + 2, min(i + 5, len(lines))) if lines[j].startswith('# ====')]
        if line.startswith('# ====') and closing:   # a banner, the title's lines, a banner
            title = ' '.join(lines[i + 1:closing[0]])
        elif line.startswith('def test_') and stem in title:
            tests.append('test_pc.py::' + line[4:line.index('(')])
    return tests


def pytest(workdir, timeout, tests=('test_pc.py',)):
    """True if the suite (or the given tests) passes in workdir, False if it fails or times out."""
    try:
        return subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *tests],
                              cwd=workdir, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, OMP_NUM_THREADS='1')).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run_mutant(mutant, workdir, timeout):
    path, line, end_line, col, end_col, replacement, what = mutant
    target = os.path.join(workdir, path)
    original = open(target).read()
    mutated = apply(original, line, end_line, col, end_col, replacement)
    try:
        compile(mutated, path, 'exec')
    except SyntaxError:
        return 'invalid', 0.0
    with open(target, 'w') as f:
        f.write(mutated)
    t0 = time.time()
    try:   # the tests about this file first; only if they pass, the whole suite decides
        focused = focused_tests(path)
        passes = (not focused or pytest(workdir, timeout, focused)) and pytest(workdir, timeout)
    finally:
        with open(target, 'w') as f:
            f.write(original)
    return ('survived' if passes else 'caught'), time.time() - t0


def copy_repo(dst):
    ignore = shutil.ignore_patterns('out*', '.git', '__pycache__', '*.bin', 'meta.json', 'raw', '.ipynb_checkpoints')
    shutil.copytree(HERE, dst, ignore=ignore)


def main(argv=None):
    args = SimpleNamespace(**settings.parse(sys.argv[1:] if argv is None else argv, OPTIONS,
                                            config_files=False, doc=__doc__))
    for key, low in (('n', 0), ('jobs', 1), ('timeout', 1)):
        if getattr(args, key) < low:
            raise SystemExit(f"error: --{key}={getattr(args, key)} must be at least {low}")
    files = [f for f in args.files.split(',') if f]
    missing = [f for f in files if not os.path.isfile(os.path.join(HERE, f))]
    if missing:
        raise SystemExit(f"error: {missing[0]} is not a file of this repository")
    not_python = [f for f in files if not f.endswith('.py')]
    if not_python:
        raise SystemExit(f"error: {not_python[0]} is not Python; mutate.py changes .py files only")
    pool = semantic_candidates() if args.semantic else [c for f in files for c in candidates(f)]
    if args.semantic:
        files = sorted({c[0] for c in pool})
    if args.list:
        for c in pool:
            print(f"{c[0]}:{c[1]}  {c[6]}")
        print(f"{len(pool)} candidates")
        return None
    chosen = pool if args.semantic else random.Random(args.seed).sample(pool, min(args.n, len(pool)))
    sources = {f: open(os.path.join(HERE, f)).read() for f in files}   # as mutated, whatever happens later
    workdirs = []
    tmp = tempfile.mkdtemp(prefix='mutate-')
    for j in range(args.jobs):
        copy_repo(os.path.join(tmp, f'repo{j}'))
        workdirs.append(os.path.join(tmp, f'repo{j}'))
    free = list(workdirs)
    results = []

    def one(m):
        wd = free.pop()
        try:
            verdict, secs = run_mutant(m, wd, args.timeout)
        finally:
            free.append(wd)
        line = sources[m[0]].splitlines()[m[1] - 1].strip()
        results.append(dict(file=m[0], line=m[1], change=m[6], code=line, verdict=verdict, seconds=round(secs, 1)))
        print(f"{verdict:16s} {m[0]}:{m[1]} {m[6]}: {line[:90]}", flush=True)

    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as ex:
        list(ex.map(one, chosen))
    shutil.rmtree(tmp, ignore_errors=True)
    valid = [r for r in results if r['verdict'] != 'invalid']
    caught = [r for r in valid if r['verdict'].startswith('caught')]
    score = len(caught) / max(1, len(valid))
    print(f"\n{len(caught)} of {len(valid)} mutants caught ({100 * score:.1f}%), "
          f"{len(results) - len(valid)} invalid, in {time.time() - t0:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'semantic.json' if args.semantic else 'report.json'), 'w') as f:
        json.dump(dict(args=vars(args), score=score, results=results), f, indent=1)
    return score


if __name__ == '__main__':
    main()
