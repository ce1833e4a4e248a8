"""Tests for train.py: settings, the three arms, resume, PC's checkpoint and merge, DDP on CPU.

    python -m pytest -q test_train.py

Every run is a tiny model on a tiny synthetic dataset written to a temporary folder in the loader's
format (data/loader.py), so the tests need no prepared data. train.py joins `dataset` onto <repo>/data,
and os.path.join keeps an absolute second path as it is, so an absolute `dataset` points it at the
temporary folder.
"""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import gpt
import train
from data.loader import fixed_batches

REPO = os.path.dirname(os.path.abspath(__file__))
TRAIN_PY = os.path.join(REPO, 'train.py')

VOCAB = 48
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, eval_iters=2,
            log_interval=1, learning_rate=1e-2, min_lr=1e-3, warmup_iters=2, device='cpu',
            seed=1337)
TRAIN_KEYS = {'kind', 'iter', 'tokens', 'loss', 'steps', 'lr', 'ms_per_iter', 'tok_per_s'}
EVAL_KEYS = {'kind', 'iter', 'tokens', 'val_loss'}


# ------------------------------------------------------------------------------------ helpers

def write_dataset(folder, vocab=VOCAB, n_train=20000, n_val=4000, seed=0):
    """A prepared dataset in the loader's format: meta.json + uint16 shards. The tokens follow a
    learnable chain (half the time the next id is prev+1, otherwise a Zipf-distributed id), so a
    tiny model's loss falls within a few iterations."""
    rng = np.random.RandomState(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.2
    z = rng.choice(vocab, size=n_train + n_val, p=p / p.sum())
    u = rng.rand(n_train + n_val)
    x = np.empty(n_train + n_val, dtype=np.int64)
    x[0] = 0
    for t in range(1, len(x)):
        x[t] = (x[t - 1] + 1) % vocab if u[t] < 0.5 else z[t]
    os.makedirs(folder, exist_ok=True)
    splits = {}
    for split, part in (('train', x[:n_train]), ('val', x[n_train:])):
        data = part.astype(np.uint16).tobytes()
        with open(os.path.join(folder, f'{split}.bin'), 'wb') as f:
            f.write(data)
        splits[split] = [dict(file=f'{split}.bin', tokens=len(part),
                              sha256=hashlib.sha256(data).hexdigest())]
    with open(os.path.join(folder, 'meta.json'), 'w') as f:
        json.dump(dict(vocab_size=vocab, splits=splits), f)
    return str(folder)


def make_cfg(dataset_dir, out_dir, **overrides):
    cfg = train.parse_args([])
    cfg.update(TINY, dataset=str(dataset_dir), out_dir=str(out_dir))
    for k in overrides:
        assert k in cfg, f"test bug: unknown key {k}"
    cfg.update(overrides)
    return cfg


def train_job(cfg):
    """train.train(cfg) on one thread. Tiny models run fastest on one, and two threads on a busy
    2-core machine spin-wait on each other (1 s per iteration instead of 10 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.train(cfg)
    finally:
        torch.set_num_threads(before)


def run(dataset_dir, out_dir, **overrides):
    return train_job(make_cfg(dataset_dir, out_dir, **overrides))


def records(out_dir):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def by_iter(recs, kind):
    """{iter: record} for one kind; also checks no iteration is logged twice."""
    out = {}
    for r in recs:
        if r['kind'] == kind:
            assert r['iter'] not in out, f"{kind} record for iter {r['iter']} logged twice"
            out[r['iter']] = r
    return out


def load_ckpt(out_dir, name='ckpt.pt'):
    return gpt.load_checkpoint(os.path.join(out_dir, name))


def assert_same_tensors(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"tensor {k} differs (max {(a[k] - b[k]).abs().max()})"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=f"tensor {k} differs")


def drop_key_bias(state):
    """The state without the key third of every c_attn bias. A key bias adds the same amount to
    every attention score of a query, which softmax ignores: its true gradient is zero and what
    backward produces is rounding noise, which Adam scales up to lr-sized steps. Runs that differ
    only in summation order (DDP vs one process) disagree there by far more than float error."""
    out = {}
    for k, v in state.items():
        if k.endswith('attn.c_attn.bias'):
            q, _, val = v.chunk(3)
            v = torch.cat([q, val])
        out[k] = v
    return out


def error_of(fn, *args, match=None):
    """Run fn, expect SystemExit with one line 'error: ...' (matching `match`); return it."""
    with pytest.raises(SystemExit, match=match) as e:
        fn(*args)
    msg = str(e.value.code)
    assert msg.startswith('error: ') and '\n' not in msg, msg
    return msg


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope='session')
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp('data') / 'tiny')


@pytest.fixture(scope='session')
def base_run(dataset, tmp_path_factory):
    """One tiny base, trained once: 12 iterations, evaluated at 0, 6 and 12."""
    out = str(tmp_path_factory.mktemp('base'))
    summary = run(dataset, out, arm='base', max_iters=12, eval_interval=6)
    return dict(out_dir=out, ckpt=os.path.join(out, 'ckpt.pt'), summary=summary)


ARM_LEN = dict(max_iters=6, eval_interval=3)   # evaluations at 0, 3, 6


def arm_overrides(arm, base_run):
    if arm == 'base':   # dropout: the resumed run must also continue the random stream
        return dict(arm='base', dropout=0.1, **ARM_LEN)
    return dict(arm=arm, base_ckpt=base_run['ckpt'], compression=0.5, importance='magnitude',
                **ARM_LEN)


@pytest.fixture(scope='session')
def arm_runs(dataset, base_run, tmp_path_factory):
    """Uninterrupted 6-iteration runs of each arm (PC and HPR from the session's base)."""
    outs = {}
    for arm in ('base', 'pc', 'hpr'):
        outs[arm] = str(tmp_path_factory.mktemp(f'run_{arm}'))
        run(dataset, outs[arm], **arm_overrides(arm, base_run))
    return outs


# ------------------------------------------------------------------------------------ settings

def test_parse_args_config_file_and_overrides(tmp_path):
    conf = tmp_path / 'conf.py'
    conf.write_text("import math\n"              # modules and _private names are not settings
                    "_scratch = 5\n"
                    "n_layer = 3\n"
                    "n_embd = 2 ** 6\n"
                    "learning_rate = 3e-3\n"
                    "min_lr = 1\n"               # an int for a float setting is fine
                    "bias = False\n"
                    "out_dir = 'out/from_file'\n"
                    "dataset = 'from_file'\n")
    cfg = train.parse_args([str(conf), '--n_layer=5', '--dropout=0.25', '--compile=True',
                            '--arm=pc', "--dataset='quoted'", '--learning_rate=2', '--max_iters=7',
                            '--out_dir=out/x-y'])
    assert cfg['n_layer'] == 5 and type(cfg['n_layer']) is int           # command line beats file
    assert cfg['n_embd'] == 64                                           # from the file
    assert cfg['learning_rate'] == 2.0 and type(cfg['learning_rate']) is float
    assert cfg['min_lr'] == 1.0 and type(cfg['min_lr']) is float
    assert cfg['dropout'] == 0.25
    assert cfg['bias'] is False and cfg['compile'] is True
    assert cfg['arm'] == 'pc' and cfg['dataset'] == 'quoted' and cfg['out_dir'] == 'out/x-y'
    assert cfg['max_iters'] == 7
    assert cfg['n_head'] == train.DEFAULTS['n_head']                    # untouched default
    assert 'math' not in cfg and '_scratch' not in cfg
    assert set(cfg) == set(train.DEFAULTS)
    # the shipped config parses
    shipped = os.path.join(REPO, 'config', 'base_shakespeare_char.py')
    if os.path.isfile(shipped):
        assert train.parse_args([shipped])['arm'] == 'base'


def test_parse_args_errors(tmp_path):
    parse = train.parse_args
    msg = error_of(parse, ['--n_layers=3'], match=r"unknown config key 'n_layers'")
    assert "did you mean 'n_layer'" in msg and 'command line' in msg
    conf = tmp_path / 'bad.py'
    conf.write_text("n_layer = 2\nlearing_rate = 1e-3\n")
    msg = error_of(parse, [str(conf)], match=r"unknown config key 'learing_rate'")
    assert "did you mean 'learning_rate'" in msg and str(conf) in msg
    error_of(parse, ['--max_iters=1.5'], match=r"max_iters=1\.5 .*should be a int")
    error_of(parse, ['--bias=1'], match=r"bias=1 .*should be a bool")
    error_of(parse, ['--n_layer=abc'], match=r"n_layer='abc' .*should be a int")
    error_of(parse, ['--learning_rate=fast'], match=r"learning_rate='fast' .*should be a float")
    error_of(parse, ['--dataset=3'], match=r"dataset=3 .*should be a str")
    conf2 = tmp_path / 'badtype.py'
    conf2.write_text("eval_iters = 2.5\n")
    error_of(parse, [str(conf2)], match=r"eval_iters=2\.5 in .*badtype\.py should be a int")
    error_of(parse, ['--max_iters'], match=r"should look like --max_iters=value")
    error_of(parse, [str(tmp_path / 'nope.py')], match=r"config file '.*nope\.py' not found")


# ------------------------------------------------------------------------------------ base

def test_base_loss_falls_and_metrics_keys(base_run):
    recs = records(base_run['out_dir'])
    train_recs, evals = by_iter(recs, 'train'), by_iter(recs, 'eval')
    assert sorted(train_recs) == list(range(1, 13))          # log_interval=1
    assert sorted(evals) == [0, 6, 12]
    tokens_per_iter = TINY['batch_size'] * TINY['block_size']
    for r in train_recs.values():
        assert TRAIN_KEYS <= set(r), set(r)
        assert r['tokens'] == r['iter'] * tokens_per_iter and r['steps'] == 1
        assert math.isfinite(r['loss']) and r['lr'] > 0 and r['ms_per_iter'] > 0 and r['tok_per_s'] > 0
    for r in evals.values():
        assert EVAL_KEYS <= set(r), set(r)
        assert r['tokens'] == r['iter'] * tokens_per_iter
    # the loss falls: val at the end below val at step 0, later train losses below the first ones
    assert evals[12]['val_loss'] < evals[0]['val_loss'] - 0.2
    first = np.mean([train_recs[i]['loss'] for i in (1, 2, 3)])
    last = np.mean([train_recs[i]['loss'] for i in (10, 11, 12)])
    assert last < first - 0.2, (first, last)
    # the summary and the checkpoint agree with the log
    s = base_run['summary']
    assert s['iters'] == 12 and s['val_loss'] == evals[12]['val_loss']
    ck = load_ckpt(base_run['out_dir'])
    assert ck['iter'] == 12 and ck['kind'] == 'gpt' and ck['config']['arm'] == 'base'
    assert ck['model_args']['n_embd'] == TINY['n_embd'] and ck['model_args']['vocab_size'] == VOCAB


def test_early_checkpoint(dataset, tmp_path):
    out = tmp_path / 'early'
    run(dataset, out, arm='base', max_iters=8, eval_interval=100, early_ckpt_frac=0.25)
    early = load_ckpt(out, 'ckpt_early.pt')
    assert early['iter'] == 2                                       # 0.25 * 8
    assert early['kind'] == 'gpt'
    assert load_ckpt(out)['iter'] == 8
    assert sorted(by_iter(records(out), 'eval')) == [0, 2, 8]
    # the same run stopped at iteration 2 holds exactly the early checkpoint's weights
    stop = tmp_path / 'stop'
    run(dataset, stop, arm='base', max_iters=8, eval_interval=100, stop_iter=2)
    assert_same_tensors(early['model'], load_ckpt(stop)['model'])
    gpt.load_gpt(os.path.join(out, 'ckpt_early.pt'))               # a plain GPT


# ------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize('arm', ['base', 'pc', 'hpr'])
def test_resume_equals_uninterrupted(arm, dataset, base_run, arm_runs, tmp_path):
    a = arm_runs[arm]
    b = str(tmp_path / f'resumed_{arm}')
    over = arm_overrides(arm, base_run)
    run(dataset, b, stop_iter=3, **over)
    assert load_ckpt(b)['iter'] == 3
    run(dataset, b, init_from='resume', **over)

    ra, rb = records(a), records(b)
    for kind, key in (('train', 'loss'), ('eval', 'val_loss')):
        ia, ib = by_iter(ra, kind), by_iter(rb, kind)
        for i in sorted(set(ia) & set(ib)):
            assert ib[i][key] == pytest.approx(ia[i][key], abs=1e-6, rel=0), (kind, i)
    ca, cb = load_ckpt(a), load_ckpt(b)
    assert ca['iter'] == cb['iter'] == 6
    assert_same_tensors(ca['model'], cb['model'])
    if arm == 'pc':
        ma, mb = by_iter(ra, 'merged'), by_iter(rb, 'merged')
        assert mb[6]['merged_val_loss'] == pytest.approx(ma[6]['merged_val_loss'], abs=1e-6)
    # the resumed log holds the same history: every record of A, once
    for kind in ('train', 'eval'):
        assert sorted(by_iter(rb, kind)) == sorted(by_iter(ra, kind)), \
            f"{kind} records of the resumed run cover other iterations than the uninterrupted run's"


# ------------------------------------------------------------------------------------ PC and HPR

def test_pc_and_hpr_start_from_the_same_model(arm_runs):
    pc_recs, hpr_recs = records(arm_runs['pc']), records(arm_runs['hpr'])
    pc0, hpr0 = by_iter(pc_recs, 'eval')[0]['val_loss'], by_iter(hpr_recs, 'eval')[0]['val_loss']
    assert pc0 == pytest.approx(hpr0, abs=1e-6, rel=0)
    pc1, hpr1 = by_iter(pc_recs, 'train')[1]['loss'], by_iter(hpr_recs, 'train')[1]['loss']
    assert pc1 == pytest.approx(hpr1, abs=1e-6, rel=0)
    # and the two compressed models have the same shape
    assert load_ckpt(arm_runs['pc'])['model_args'] == load_ckpt(arm_runs['hpr'])['model_args']


def test_pc_merged_model(dataset, arm_runs, base_run):
    out = arm_runs['pc']
    merged = gpt.load_gpt(os.path.join(out, 'merged.pt'))
    assert merged.config.n_embd < TINY['n_embd']                    # compressed
    batches = fixed_batches(dataset, 'val', TINY['block_size'], TINY['batch_size'],
                            TINY['eval_iters'], seed=TINY['seed'] + 1)
    merged.eval()
    with torch.no_grad():
        loss = torch.stack([merged(x, y)[1] for x, y in batches]).mean().item()
    recs = records(out)
    final_val = by_iter(recs, 'eval')[6]['val_loss']
    rec = by_iter(recs, 'merged')[6]
    assert rec['val_loss'] == final_val
    assert loss == pytest.approx(final_val, abs=1e-6, rel=0)
    assert rec['merged_val_loss'] == pytest.approx(final_val, abs=1e-6, rel=0)
    # the merged model is what training changed: it is not the hard-pruned model of step 0
    assert final_val < by_iter(recs, 'eval')[0]['val_loss']


def test_pc_checkpoint_points_at_its_base(dataset, base_run, arm_runs, tmp_path):
    ck = load_ckpt(arm_runs['pc'])
    base = load_ckpt(base_run['out_dir'])
    assert ck['kind'] == 'pc'
    assert ck['base_ckpt'] == os.path.abspath(base_run['ckpt'])
    assert ck['base_sha256'] == hashlib.sha256(open(base_run['ckpt'], 'rb').read()).hexdigest()
    # no copy of the base: no projection holds a frozen weight, no tensor is a base matrix
    assert not [k for k in ck['model'] if k.startswith('proj.') and k.endswith('.weight')]
    base_mats = [w for w in base['model'].values() if w.dim() == 2]
    for k, t in ck['model'].items():
        for w in base_mats:
            assert not (t.shape == w.shape and torch.equal(t, w)), f"{k} is a copy of a base matrix"
    n_base_mats = sum(w.numel() for w in base_mats)
    n_stored = sum(t.numel() for t in ck['model'].values())
    n_trained = sum(t.numel() for k, t in ck['model'].items() if k.startswith('proj.'))
    n_gpt = sum(t.numel() for k, t in ck['model'].items() if k.startswith('gpt.'))
    assert n_stored == n_trained + n_gpt                            # nothing else stored
    assert n_gpt < n_base_mats                                      # the compressed GPT only

    pc_over = arm_overrides('pc', base_run)
    # resume against an altered base: refused, naming the base it was trained from
    d = str(tmp_path / 'resume_pc')
    shutil.copytree(arm_runs['pc'], d)
    altered = dict(base)
    altered['model'] = {k: v.clone() for k, v in base['model'].items()}
    altered['model']['transformer.wte.weight'][0, 0] += 1.0
    other = str(tmp_path / 'other_base.pt')
    torch.save(altered, other)
    msg = error_of(train_job, make_cfg(dataset, d, init_from='resume', **{**pc_over, 'base_ckpt': other}),
                   match=r"is not the one .* was trained from")
    assert base_run['ckpt'] in msg
    # a missing base: refused
    error_of(train_job, make_cfg(dataset, d, init_from='resume',
                                   **{**pc_over, 'base_ckpt': str(tmp_path / 'gone.pt')}),
             match=r"gone\.pt' does not exist")
    # resuming it as another arm: refused
    error_of(train_job, make_cfg(dataset, d, init_from='resume', **{**pc_over, 'arm': 'hpr'}),
             match=r"arm=pc run; resume it with --arm=pc")
    # the same bytes at another path are the same base: accepted
    moved = str(tmp_path / 'moved_base.pt')
    shutil.copy(base_run['ckpt'], moved)
    s = train_job(make_cfg(dataset, d, init_from='resume', **{**pc_over, 'base_ckpt': moved}))
    assert s['iters'] == 6
    assert s['val_loss'] == pytest.approx(by_iter(records(arm_runs['pc']), 'eval')[6]['val_loss'], abs=1e-6)


# ------------------------------------------------------------------------------------ failures

def test_non_finite_loss_stops_cleanly(dataset, tmp_path, monkeypatch):
    orig = gpt.GPT.forward
    calls = {'train': 0}

    def forward(self, idx, targets=None):
        logits, loss = orig(self, idx, targets)
        if self.training and loss is not None:
            calls['train'] += 1
            if calls['train'] > 5:             # the 6th training micro-batch: iteration 5
                loss = loss * float('nan')
        return logits, loss

    monkeypatch.setattr(gpt.GPT, 'forward', forward)
    out = tmp_path / 'nan'
    msg = error_of(train_job, make_cfg(dataset, out, arm='base', max_iters=10, eval_interval=2),
                   match=r"non-finite loss at iter 5\b")
    assert 'ckpt.pt' in msg
    monkeypatch.undo()
    ck = load_ckpt(out)
    assert ck['iter'] == 4                                     # the last evaluation before the NaN
    assert all(torch.isfinite(t).all() for t in ck['model'].values())
    gpt.load_gpt(os.path.join(out, 'ckpt.pt'))
    trains = by_iter(records(out), 'train')
    assert max(trains) == 5 and all(math.isfinite(r['loss']) for r in trains.values())


def test_bad_inputs(dataset, base_run, tmp_path, monkeypatch):
    out = tmp_path / 'bad'
    go = lambda **kw: (lambda: train_job(make_cfg(dataset, out, **kw)))
    ok = dict(arm='base', max_iters=2, eval_interval=100)
    pc_ok = dict(arm='pc', base_ckpt=base_run['ckpt'], max_iters=2, eval_interval=100)

    error_of(go(**{**ok, 'dataset': '_no_such_dataset_for_tests'}),
             match=r"dataset not prepared.*python data/_no_such_dataset_for_tests/prepare\.py")
    error_of(go(**{**ok, 'dataset': str(tmp_path / 'empty')}), match=r"dataset not prepared")
    for arm in ('pc', 'hpr'):
        error_of(go(**{**pc_ok, 'arm': arm, 'block_size': 32}),
                 match=r"block_size=32 is larger than the base model's context \(16\)")
    error_of(go(**{**pc_ok, 'base_ckpt': str(tmp_path / 'nope.pt')}), match=r"nope\.pt' does not exist")
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'this is not a checkpoint')
    error_of(go(**{**pc_ok, 'base_ckpt': str(garbage)}), match=r"not a readable checkpoint")
    notckpt = tmp_path / 'notckpt.pt'
    torch.save({'weights': torch.zeros(3)}, notckpt)
    error_of(go(**{**pc_ok, 'base_ckpt': str(notckpt)}), match=r"not a checkpoint written by train\.py")
    error_of(go(**{**pc_ok, 'base_ckpt': ''}), match=r"arm=pc needs base_ckpt")
    error_of(go(**{**pc_ok, 'compression': 1.5}), match=r"compression=1\.5 is impossible")
    error_of(go(**{**ok, 'arm': 'distill'}), match=r"unknown arm 'distill'")
    error_of(go(**{**ok, 'init_from': 'gpt2'}), match=r"init_from='gpt2'")
    error_of(go(**{**ok, 'max_tokens': 1000}), match=r"exactly one of max_iters, max_tokens")
    error_of(go(**{**ok, 'max_iters': 0}), match=r"exactly one of max_iters, max_tokens")
    error_of(go(**{**ok, 'init_from': 'resume'}), match=r"ckpt\.pt' does not exist")
    assert not out.exists()                                  # nothing was written by a refused run

    # grad_accum must split over the processes: pretend to be rank 0 of 2 without a process group
    inits = []
    monkeypatch.setattr(train.dist, 'init_process_group', lambda *a, **k: inits.append(k))
    for k, v in dict(RANK='0', WORLD_SIZE='2', LOCAL_RANK='0').items():
        monkeypatch.setenv(k, v)
    error_of(go(**{**ok, 'grad_accum': 3}), match=r"grad_accum=3 must be a multiple of the 2 processes")
    assert not inits                                          # refused before joining a process group


# ------------------------------------------------------------------------------------ DDP

def launch(dataset, out_dir, **overrides):
    """Start `torchrun --standalone --nproc_per_node=2 train.py --k=v ...` on CPU (gloo)."""
    cfg = {**TINY, 'dataset': str(dataset), 'out_dir': str(out_dir), **overrides}
    args = [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in cfg.items()]
    env = {k: v for k, v in os.environ.items()
           if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                             '--nproc_per_node=2', TRAIN_PY] + args, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_match_one(dataset, base_run, tmp_path):
    common = dict(max_iters=4, eval_interval=2, grad_accum=2)
    arms = {'base': dict(arm='base', **common),
            'pc': dict(arm='pc', base_ckpt=base_run['ckpt'], compression=0.5, **common)}
    procs = {arm: launch(dataset, tmp_path / f'ddp_{arm}', **over) for arm, over in arms.items()}
    try:   # the 1-process runs of the same global batch while the launches run
        for arm, over in arms.items():
            run(dataset, tmp_path / f'one_{arm}', **over)
        logs = {arm: p.communicate(timeout=180)[0] for arm, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for arm, p in procs.items():
        assert p.returncode == 0, f"torchrun arm={arm} failed:\n{logs[arm][-3000:]}"

    for arm in arms:
        one, two = records(tmp_path / f'one_{arm}'), records(tmp_path / f'ddp_{arm}')
        for kind, key in (('train', 'loss'), ('eval', 'val_loss')):
            r1, r2 = by_iter(one, kind), by_iter(two, kind)
            assert sorted(r1) == sorted(r2) and r1, (arm, kind)
            for i in r1:
                assert r2[i][key] == pytest.approx(r1[i][key], abs=1e-5, rel=0), (arm, kind, i)
        for r in by_iter(two, 'eval').values():
            assert r['ranks_agree'] is True, (arm, r)
        c1, c2 = load_ckpt(tmp_path / f'one_{arm}'), load_ckpt(tmp_path / f'ddp_{arm}')
        assert c1['iter'] == c2['iter'] == 4
        assert_same_tensors(drop_key_bias(c1['model']), drop_key_bias(c2['model']), atol=1e-6)
        if arm == 'pc':
            projections = {k: v for k, v in c2['model'].items() if k.startswith('proj.')}
            assert any(k.endswith('p_in') for k in projections) and \
                any(k.endswith('p_out') for k in projections)
            assert_same_tensors({k: c1['model'][k] for k in projections}, projections, atol=1e-6)
            assert os.path.isfile(tmp_path / 'ddp_pc' / 'merged.pt')
