"""
The tests of the project, in one file:

    python -m pytest -q test_pc.py

Everything runs on CPU in float32 with tiny models and tiny data (the paper's presets are only
built on the meta device), so the whole file takes a few minutes on 2 cores. Each test says what
property it proves; equivalence tests compare numbers bit for bit or with tight tolerances.
"""
import ast
import copy
import errno
import glob
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import tiktoken
import torch
from nbclient import NotebookClient

import bench
import compare
import costs
import data.c4.prepare as c4_prep
import data.shakespeare.prepare as bpe_prep
import data.shakespeare_char.prepare as char_prep
import export
import gpt
import mutate
import pc
import sample
import scans
import train
from data import tokenizer
from data.loader import Batches, fixed_batches, meta, open_dataset
from gpt import GPT, GPTConfig, PRESETS, adamw, param_counts, preset
from infra import checkpoint, files, hf, processes, settings
from infra.checkpoint import gpt_checkpoint, load_checkpoint, load_gpt
from infra.files import save_atomic
from pc import ProjectedGPT, compressed_config, hard_prune, importance, select

torch.set_num_threads(1)   # robust when other jobs share the 2 cores


# ==================================================================================================
# gpt.py and pc.py: the model, importance, HPR, PC, cost-free gradients, merge
# ==================================================================================================

V, T, L = 64, 16, 2          # vocab, block size, layers of every tiny model


def tiny_cfg(**kw):
    args = dict(block_size=T, vocab_size=V, n_layer=L, n_head=4, n_embd=32, dropout=0.0)
    args.update(kw)
    return GPTConfig(**args)


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(tiny_cfg(**kw))


def batch(seed, B=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    return x, y


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


def close(actual, expected, rel=1e-6, what=''):
    """Tight comparison: absolute tolerance rel * magnitude of the expected tensor."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * max(scale, 1e-12) + 1e-12,
                               msg=lambda m: f'{what}: {m}')


def pc_step(pc, opt, micro_batches):
    """One cost-free PC optimizer step, exactly as pc.py's docstring prescribes."""
    opt.zero_grad(set_to_none=True)
    pc.materialize()
    for x, y in micro_batches:
        loss = pc.gpt(x, y)[1] / len(micro_batches)
        loss.backward()
    pc.backward_projections()
    opt.step()


def make_pc(tied=True, method='magnitude', d=24, f=80, seed=0, bias=True):
    base = tiny_gpt(seed, tie_embeddings=tied, bias=bias)
    scores = importance(base, method, batches=[batch(100)], seed=seed)
    keep = select(scores, d, f)
    return base, keep, ProjectedGPT(base, keep)


# ==============================================================================================
# gpt.py

def test_shapes_with_independent_widths():
    """n_embd, attention width (n_head*head_dim) and d_ff are independent: every weight has the
    shape those widths imply, and logits are (B,T,V) with targets, (B,1,V) without."""
    D, H, hd, Fw = 40, 4, 16, 72
    A = H * hd
    for tied in (True, False):
        torch.manual_seed(0)
        m = GPT(tiny_cfg(n_embd=D, n_head=H, head_dim=hd, d_ff=Fw, tie_embeddings=tied))
        expect = {'transformer.wte.weight': (V, D), 'transformer.wpe.weight': (T, D),
                  'transformer.ln_f.weight': (D,), 'transformer.ln_f.bias': (D,)}
        if not tied:
            expect['lm_head.weight'] = (V, D)
        for i in range(L):
            p = f'transformer.h.{i}.'
            expect.update({p + 'ln_1.weight': (D,), p + 'ln_1.bias': (D,),
                           p + 'attn.c_attn.weight': (3 * A, D), p + 'attn.c_attn.bias': (3 * A,),
                           p + 'attn.c_proj.weight': (D, A), p + 'attn.c_proj.bias': (D,),
                           p + 'ln_2.weight': (D,), p + 'ln_2.bias': (D,),
                           p + 'mlp.c_fc.weight': (Fw, D), p + 'mlp.c_fc.bias': (Fw,),
                           p + 'mlp.c_proj.weight': (D, Fw), p + 'mlp.c_proj.bias': (D,)})
        got = {n: tuple(p.shape) for n, p in m.named_parameters()}
        assert got == expect
        assert m.lm_head.weight.shape == (V, D)
        x, y = batch(0, B=3)
        logits, loss = m(x, y)
        assert logits.shape == (3, T, V) and loss.dim() == 0 and torch.isfinite(loss)
        logits, loss = m(x)
        assert logits.shape == (3, 1, V) and loss is None


@pytest.mark.parametrize('tied', [True, False])
@pytest.mark.parametrize('bias', [True, False])
def test_param_counts_match_model(tied, bias):
    """param_counts(cfg)['total'] is exactly the number of parameters GPT(cfg) holds (a tied head
    counted once), for odd widths, tied/untied and with/without biases."""
    cfg = tiny_cfg(n_embd=40, n_head=4, head_dim=16, d_ff=72, tie_embeddings=tied, bias=bias)
    m = GPT(cfg)
    c = param_counts(cfg)
    assert c['total'] == sum(p.numel() for p in m.parameters()) == m.num_params()
    emb = cfg.vocab_size * cfg.n_embd * (1 if tied else 2) + cfg.block_size * cfg.n_embd
    assert c['non_embedding'] == c['total'] - emb


@pytest.mark.parametrize('name,target', [('300m', 305e6), ('800m', 835e6)])
def test_preset_sizes(name, target):
    """The paper's presets are untied and reach ~305M / ~835M parameters; the meta-device model
    (never materialised) holds exactly param_counts' total."""
    cfg = preset(name)
    assert cfg.tie_embeddings is False
    total = param_counts(cfg)['total']
    assert abs(total - target) / target < 0.01, total
    with torch.device('meta'):
        m = GPT(cfg)
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == total


def test_causality():
    """Changing token t leaves the logits at positions < t unchanged and changes position t's."""
    m = tiny_gpt(1).eval()
    x, y = batch(1, B=1)
    base_logits, _ = m(x, y)
    for t in (1, T // 2, T - 1):
        x2 = x.clone()
        x2[0, t] = (x2[0, t] + 1) % V
        logits, _ = m(x2, y)
        torch.testing.assert_close(logits[:, :t], base_logits[:, :t], rtol=0, atol=1e-6)
        assert (logits[:, t] - base_logits[:, t]).abs().max() > 1e-4


def test_unknown_preset_and_too_long_sequence():
    """An unknown preset exits with a message naming it; a sequence longer than block_size is a
    ValueError (and block_size itself is fine)."""
    with pytest.raises(SystemExit, match=r"error: unknown model preset '500m'"):
        preset('500m')
    assert set(PRESETS) == {'300m', '800m'}
    m = tiny_gpt()
    m(torch.zeros(1, T, dtype=torch.long))
    with pytest.raises(ValueError, match='exceeds'):
        m(torch.zeros(1, T + 1, dtype=torch.long))


def test_load_checkpoint_bad_inputs(tmp_path):
    """load_checkpoint turns a missing path, a garbage file, a torch file without 'model_args', and
    a non-GPT (PC training) checkpoint into one clear SystemExit line."""
    missing = tmp_path / 'nope.pt'
    with pytest.raises(SystemExit, match=r"^error: checkpoint '.*nope\.pt' does not exist"):
        load_checkpoint(str(missing))
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'this is not a torch file\x00\x01\x02' * 10)
    with pytest.raises(SystemExit, match=r"^error: '.*garbage\.pt' is not a readable checkpoint"):
        load_checkpoint(str(garbage))
    nodict = tmp_path / 'nodict.pt'
    torch.save({'model': {}}, str(nodict))
    with pytest.raises(SystemExit, match=r"^error: '.*nodict\.pt' is not a checkpoint written by"):
        load_checkpoint(str(nodict))
    alist = tmp_path / 'list.pt'
    torch.save([1, 2, 3], str(alist))
    with pytest.raises(SystemExit, match=r"is not a checkpoint written by"):
        load_checkpoint(str(alist))
    pcck = tmp_path / 'pc.pt'
    torch.save(dict(gpt_checkpoint(tiny_gpt()), kind='pc'), str(pcck))
    with pytest.raises(SystemExit, match=r"is a pc training checkpoint, not a GPT"):
        load_gpt(str(pcck))


def test_save_atomic_survives_crash(tmp_path, monkeypatch):
    """If torch.save dies halfway through, save_atomic leaves the previous checkpoint intact and no
    temporary file behind: a crash propagates as it is, an OSError (full disk, read-only folder)
    becomes one line naming the file."""
    path = str(tmp_path / 'ckpt.pt')
    m1 = tiny_gpt(1)
    save_atomic(gpt_checkpoint(m1), path)
    real_save = torch.save

    def broken_save(error):
        def save(obj, f, *a, **k):
            f.write(b'PK\x03\x04 half a file')
            raise error
        return save

    monkeypatch.setattr(torch, 'save', broken_save(RuntimeError('killed')))
    with pytest.raises(RuntimeError, match='killed'):
        save_atomic(gpt_checkpoint(tiny_gpt(2)), path)
    monkeypatch.setattr(torch, 'save', broken_save(OSError(errno.ENOSPC, 'No space left on device')))
    msg = error_of(save_atomic, gpt_checkpoint(tiny_gpt(2)), path,
                   match=r"could not write .*ckpt\.pt \(No space left on device\); free some disk space")
    assert 'previous file' in msg
    monkeypatch.setattr(torch, 'save', real_save)
    assert os.listdir(tmp_path) == ['ckpt.pt']
    states_equal(load_gpt(path), m1)


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full (Linux)')
def test_save_atomic_full_disk(tmp_path):
    """A real full disk: the temporary file is a link to /dev/full, where every write fails with
    ENOSPC. One line, the previous checkpoint intact, the temporary name removed."""
    path = str(tmp_path / 'ckpt.pt')
    m1 = tiny_gpt(1)
    save_atomic(gpt_checkpoint(m1), path)
    os.symlink('/dev/full', f"{path}.{os.getpid()}.tmp")
    error_of(save_atomic, gpt_checkpoint(tiny_gpt(2)), path,
             match=r"could not write .*ckpt\.pt \(No space left on device\)")
    assert os.listdir(tmp_path) == ['ckpt.pt']
    states_equal(load_gpt(path), m1)
    error_of(save_atomic, gpt_checkpoint(m1), str(tmp_path / 'no_such_folder' / 'ckpt.pt'),
             match=r"could not write .*no_such_folder.*No such file or directory")


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='reads /proc (Linux)')
def test_save_atomic_syncs_before_and_after_rename(tmp_path, monkeypatch):
    """The file's bytes are synced before the rename and the folder after it (so a power loss can
    leave the old file or the new one, never an empty one); the temporary name is this process's."""
    path = str(tmp_path / 'ckpt.pt')
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}')))
        real_fsync(fd)

    def replace(src, dst):
        events.append(('replace', str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    save_atomic(gpt_checkpoint(tiny_gpt(1)), path)
    tmp = f"{path}.{os.getpid()}.tmp"
    assert events == [('fsync', tmp), ('replace', tmp, path), ('fsync', str(tmp_path))]


def test_config_checks():
    """GPTConfig refuses, in one line each, shapes it cannot run: no heads, n_embd not divisible by
    n_head (unless head_dim is given), non-positive widths, dropout outside [0, 1)."""
    for kw, match in ((dict(n_head=0), r"n_head=0 must be positive"),
                      (dict(n_head=-2), r"n_head=-2 must be positive"),
                      (dict(n_embd=30, n_head=4), r"n_embd=30 is not divisible by n_head=4"),
                      (dict(n_embd=0), r"n_embd=0 must be positive"),
                      (dict(n_layer=0), r"n_layer=0 must be positive"),
                      (dict(block_size=-1), r"block_size=-1 must be positive"),
                      (dict(vocab_size=0), r"vocab_size=0 must be positive"),
                      (dict(head_dim=-8), r"head_dim=-8 must be positive"),
                      (dict(d_ff=-1), r"d_ff=-1 must be positive"),
                      (dict(dropout=1.0), r"dropout=1\.0 must be in \[0, 1\)"),
                      (dict(dropout=-0.1), r"dropout=-0\.1 must be in \[0, 1\)"),
                      (dict(n_embd=4, n_head=8), r"n_head=8 is larger than n_embd=4")):
        error_of(tiny_cfg, **kw, match=match)
    cfg = tiny_cfg(n_embd=30, n_head=4, head_dim=8, dropout=0.5)   # an explicit head_dim is fine
    assert (cfg.head_dim, cfg.d_ff) == (8, 120)
    assert tiny_cfg(n_embd=32, n_head=4).head_dim == 8


@pytest.mark.parametrize('tied', [True, False])
def test_checkpoint_round_trip(tmp_path, tied):
    """gpt_checkpoint + save_atomic + load_gpt gives back the same weights, the same tying and
    bit-identical logits."""
    m = tiny_gpt(3, tie_embeddings=tied, n_embd=40, head_dim=16, d_ff=72)
    path = str(tmp_path / 'm.pt')
    save_atomic(gpt_checkpoint(m, step=7), path)
    assert not os.path.exists(path + '.tmp')
    assert load_checkpoint(path)['step'] == 7
    m2 = load_gpt(path)
    assert m2.config == m.config
    assert (m2.lm_head.weight is m2.transformer.wte.weight) == tied
    states_equal(m2, m)
    x, y = batch(3)
    assert torch.equal(m2(x, y)[0], m(x, y)[0])


def test_generate_shape_and_range():
    """generate appends max_new_tokens tokens in [0, V), including past block_size (the context is
    cropped) and with top_k; top_k=1 is greedy, hence deterministic."""
    m = tiny_gpt(4).eval()
    idx = torch.randint(0, V, (3, 5))
    for kw in (dict(), dict(top_k=5, temperature=0.7)):
        out = m.generate(idx, T + 4, **kw)
        assert out.shape == (3, 5 + T + 4) and out.dtype == torch.long
        assert torch.equal(out[:, :5], idx)
        assert out.min() >= 0 and out.max() < V
    a = m.generate(idx, 6, top_k=1)
    b = m.generate(idx, 6, top_k=1)
    assert torch.equal(a, b)
    assert torch.equal(a[:, 5], m(idx)[0][:, -1].argmax(-1))


def test_generate_samples_by_hand():
    """Each new token is drawn from softmax(logits / temperature) of the last block_size tokens,
    among the top_k only when top_k is given: the same draws, with the same seed, by hand."""
    m = tiny_gpt(6).eval()
    idx = torch.randint(0, V, (2, T - 2))
    for temperature, top_k in ((0.5, None), (2.0, 7)):
        torch.manual_seed(3)
        out = m.generate(idx, 6, temperature=temperature, top_k=top_k)
        torch.manual_seed(3)
        x = idx
        for _ in range(6):
            logits = m(x[:, -T:])[0][:, -1] / temperature   # past block_size: the last T tokens
            if top_k:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -float('inf'))
            x = torch.cat([x, torch.multinomial(logits.softmax(-1), 1)], dim=1)
        assert torch.equal(out, x), (temperature, top_k)
        assert out.shape[1] > T


def test_generate_switches_to_eval_and_restores_modes():
    """generate samples without dropout (eval mode) and gives every submodule back its own mode
    afterwards, even a mix of modes, and also when sampling fails."""
    m = tiny_gpt(5, dropout=0.5)
    idx = torch.randint(0, V, (2, 3))
    m.train()
    m.transformer.h[0].eval()   # a caller's mixed modes
    modes = {n: mod.training for n, mod in m.named_modules()}
    torch.manual_seed(0)
    a = m.generate(idx, 5, top_k=1)
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert torch.equal(a, m.eval().generate(idx, 5, top_k=1))   # greedy: same tokens as in eval
    assert not m.training
    m.train()
    with pytest.raises(RuntimeError):   # temperature 0: inf/nan probabilities, multinomial refuses
        m.generate(idx, 1, temperature=0.0)
    assert all(mod.training for mod in m.modules())


def test_adamw_groups():
    """adamw decays exactly the >=2-D parameters by default, honours a custom predicate, and skips
    frozen parameters."""
    m = tiny_gpt()
    params = list(m.named_parameters())
    opt = adamw(m.named_parameters(), 1e-3, 0.1, (0.9, 0.95), 'cpu')
    dec, nodec = opt.param_groups
    assert dec['weight_decay'] == 0.1 and nodec['weight_decay'] == 0.0
    assert {id(p) for p in dec['params']} == {id(p) for _, p in params if p.dim() >= 2}
    assert {id(p) for p in nodec['params']} == {id(p) for _, p in params if p.dim() < 2}
    opt = adamw(m.named_parameters(), 1e-3, 0.1, (0.9, 0.95), 'cpu',
                decays=lambda n, p: 'mlp' in n)
    assert {id(p) for p in opt.param_groups[0]['params']} == {id(p) for n, p in params if 'mlp' in n}
    assert {id(p) for p in opt.param_groups[1]['params']} == {id(p) for n, p in params if 'mlp' not in n}
    m.transformer.wpe.weight.requires_grad_(False)
    opt = adamw(m.named_parameters(), 1e-3, 0.1, (0.9, 0.95), 'cpu')
    ids = {id(p) for g in opt.param_groups for p in g['params']}
    assert id(m.transformer.wpe.weight) not in ids and len(ids) == len(params) - 1


# ==============================================================================================
# pc.py

@pytest.mark.parametrize('tied', [True, False])
@pytest.mark.parametrize('method', ['magnitude', 'activation', 'random'])
def test_pc_step0_is_hard_pruning(tied, method):
    """At step 0, PC's compressed GPT *is* the hard-pruned model, bit for bit, and so are its
    losses, both through pc.gpt and through the naive pc(x, y) forward."""
    base, keep, pc = make_pc(tied=tied, method=method)
    hp = hard_prune(base, keep)
    assert hp.config.n_embd == 24 and hp.config.d_ff == 80
    assert hp.config.n_head * hp.config.head_dim == base.config.n_head * base.config.head_dim
    states_equal(pc.gpt, hp)
    # the naive forward rebuilds every W_c = P_out W P_in + 0 from the projections
    for name, proj in pc.projections():
        assert torch.equal(proj(), dict(hp.named_parameters())[name]), name
    x, y = batch(5)
    l_hp, l_gpt, l_naive = hp(x, y), pc.gpt(x, y), pc(x, y)
    assert torch.equal(l_gpt[1], l_hp[1]) and torch.equal(l_naive[1], l_hp[1])
    assert torch.equal(l_gpt[0], l_hp[0]) and torch.equal(l_naive[0], l_hp[0])
    # and the pruned tensors really are the kept slices of the base
    D, Fk = keep['D'], keep['F']
    assert torch.equal(hp.transformer.wte.weight, base.transformer.wte.weight[:, D])
    assert torch.equal(hp.transformer.h[1].mlp.c_fc.weight,
                       base.transformer.h[1].mlp.c_fc.weight[Fk[1]][:, D])
    assert torch.equal(hp.transformer.h[0].mlp.c_proj.bias, base.transformer.h[0].mlp.c_proj.bias[D])


@pytest.mark.parametrize('tied', [True, False])
def test_merge_after_training(tmp_path, tied):
    """After a few cost-free steps, merge() gives a plain GPT whose logits equal pc.gpt's (after
    materialize) and the naive pc(x) logits, and which saves and loads like any GPT."""
    base, keep, pc = make_pc(tied=tied)
    opt = adamw(pc.named_trainable(), 1e-2, 0.1, (0.9, 0.95), 'cpu')
    for s in range(4):
        pc_step(pc, opt, [batch(10 + s), batch(20 + s)])
    merged = pc.merge()
    pc.materialize()
    states_equal(merged, pc.gpt)
    x, y = batch(99)
    with torch.no_grad():
        lm, lg, ln = merged(x, y)[0], pc.gpt(x, y)[0], pc(x, y)[0]
        assert torch.equal(lm, lg)
        close(ln, lm, what='naive vs merged')
        assert not torch.equal(lm, hard_prune(base, keep)(x, y)[0])   # training did something
    path = str(tmp_path / 'merged.pt')
    save_atomic(gpt_checkpoint(merged), path)
    loaded = load_gpt(path)
    assert loaded.config == merged.config
    with torch.no_grad():
        assert torch.equal(loaded(x, y)[0], lm)


def _grads(pc):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in pc.named_trainable()}


@pytest.mark.parametrize('tied', [True, False])
def test_cost_free_gradients_equal_naive(tied):
    """The cost-free step (plain GPT micro-batches + backward_projections) yields the same gradient
    for every P_in, P_out, R and vector as autograd through the naive pc(x, y), at step 0 and after
    optimizer steps have moved P off 0/1; without backward_projections P and R get nothing."""
    base, keep, pc = make_pc(tied=tied)
    opt = adamw(pc.named_trainable(), 1e-2, 0.1, (0.9, 0.95), 'cpu')
    mbs = [batch(30 + i) for i in range(3)]
    for phase in range(2):
        if phase == 1:
            for s in range(2):
                pc_step(pc, opt, [batch(40 + s), batch(50 + s)])
            assert all(not torch.equal(p, p.round()) for n, p in pc.proj.named_parameters()
                       if n.endswith('p_in') or n.endswith('p_out'))
        # naive: autograd through W_c inside every micro-batch
        opt.zero_grad(set_to_none=True)
        for x, y in mbs:
            (pc(x, y)[1] / len(mbs)).backward()
        naive = _grads(pc)
        # cost-free
        opt.zero_grad(set_to_none=True)
        pc.materialize()
        for x, y in mbs:
            (pc.gpt(x, y)[1] / len(mbs)).backward()
        partial = _grads(pc)   # before backward_projections: P and R have no gradient yet
        pc.backward_projections()
        fast = _grads(pc)
        assert all(p.grad is None for p in pc.matrices())
        kinds = set()
        for n in naive:
            assert naive[n] is not None and fast[n] is not None, n
            close(fast[n], naive[n], rel=2e-6, what=n)
            if n.startswith('gpt.'):
                continue
            assert partial[n] is None, n
            assert naive[n].abs().max() > 0, n
            kinds.add(n.rsplit('.', 1)[1])
        assert kinds == {'p_in', 'p_out', 'r'}
        opt.zero_grad(set_to_none=True)


def test_bfloat16_projections_stay_close_to_float32():
    """proj_dtype=bfloat16 (CUDA's default) computes W_c from a bf16 base with bf16 matmuls: at step 0
    it is HPR's weights rounded to bf16, exactly; after P has moved it stays within a few bf16
    roundings (2^-8 relative) of the float32 W_c, and P, R stay float32."""
    base, keep, pc32 = make_pc(tied=False)
    pc16 = ProjectedGPT(base, keep, proj_dtype=torch.bfloat16)
    hp = dict(hard_prune(base, keep).named_parameters())
    for name, proj in pc16.projections():
        assert proj.weight.dtype == torch.bfloat16 and all(
            p.dtype == torch.float32 for p in (proj.p_in, proj.p_out, proj.r) if p is not None)
        assert torch.equal(proj(), hp[name].bfloat16().float()), name
    opt = adamw(pc32.named_trainable(), 1e-2, 0.1, (0.9, 0.95), 'cpu')
    for s in range(3):
        pc_step(pc32, opt, [batch(130 + s)])
    pc16.load_state_dict(pc32.state_dict(), strict=False)      # the same trained P, R and vectors
    worst = 0.0
    for (name, p32), (_, p16) in zip(pc32.projections(), pc16.projections()):
        w32, w16 = p32(), p16()
        worst = max(worst, ((w16 - w32).abs().max() / w32.abs().max()).item())
    assert 0 < worst < 4 * 2 ** -8, worst


def test_frozen_base_and_trained_projections():
    """Training never touches the frozen base (each Projection.weight buffer is the base's own
    tensor, which stays bitwise equal); R starts at exactly zero and moves; every P leaves its 0/1
    init."""
    base, keep, pc = make_pc(tied=False)
    base_before = copy.deepcopy(base.state_dict())
    bufs = {n: proj.weight.clone() for n, proj in pc.projections()}
    P0 = {n: p.detach().clone() for n, p in pc.proj.named_parameters()}
    params = dict(base.named_parameters())
    for n, proj in pc.projections():
        assert proj.weight.data_ptr() == params[n].data_ptr()   # the base's own tensor, no copy
        assert not proj.weight.requires_grad
        assert torch.equal(proj.r, torch.zeros_like(proj.r))
        for P, axis in ((proj.p_in, 0), (proj.p_out, 1)):   # 0/1, one 1 per kept dimension
            if P is not None:
                assert set(P.unique().tolist()) <= {0.0, 1.0}
                assert torch.equal(P.sum(axis), torch.ones(P.shape[1 - axis]))
    # the frozen base is not part of PC's own state (checkpoints point at the base instead)
    assert not any(k.startswith('proj.') and k.endswith('.weight') for k in pc.state_dict())
    opt = adamw(pc.named_trainable(), 1e-2, 0.1, (0.9, 0.95), 'cpu')
    for s in range(3):
        pc_step(pc, opt, [batch(60 + s), batch(70 + s)])
    for n, proj in pc.projections():
        assert torch.equal(proj.weight, bufs[n]), n
    after = base.state_dict()
    for k, v in base_before.items():
        assert torch.equal(after[k], v), k
    for n, p in pc.proj.named_parameters():
        assert not torch.equal(p.detach(), P0[n]), n
        if n.endswith('.r'):
            assert p.abs().max() > 0, n


def _planted_base(tied=False):
    """A base whose residual dims PD and MLP units PF[layer] carry 10x larger weights."""
    base = tiny_gpt(7, tie_embeddings=tied)
    PD = torch.tensor([1, 5, 9, 14, 20, 27, 30, 31])
    PF = torch.stack([torch.arange(l, 128, 8) for l in range(L)])    # 16 of 128 units per layer
    with torch.no_grad():
        tr = base.transformer
        tr.wte.weight[:, PD] *= 10
        tr.wpe.weight[:, PD] *= 10
        if not tied:
            base.lm_head.weight[:, PD] *= 10
        for l, blk in enumerate(tr.h):
            blk.attn.c_attn.weight[:, PD] *= 10
            blk.attn.c_proj.weight[PD, :] *= 10
            blk.mlp.c_fc.weight[:, PD] *= 10
            blk.mlp.c_fc.weight[PF[l], :] *= 10
            blk.mlp.c_proj.weight[PD, :] *= 10
            blk.mlp.c_proj.weight[:, PF[l]] *= 10
    return base, PD, PF


@pytest.mark.parametrize('tied', [True, False])
def test_magnitude_keeps_planted_dims(tied):
    """magnitude importance keeps exactly the residual dims and MLP units with planted large weights."""
    base, PD, PF = _planted_base(tied)
    keep = select(importance(base, 'magnitude'), len(PD), PF.shape[1])
    assert torch.equal(keep['D'], PD)
    assert torch.equal(keep['F'], PF)


def test_activation_keeps_planted_dims():
    """activation importance keeps the residual dims with large LayerNorm gains and the MLP units
    with large c_fc rows (hence large GELU outputs)."""
    base = tiny_gpt(8)
    PD = torch.tensor([0, 3, 8, 17, 22, 29])
    PF = torch.stack([torch.arange(2 * l + 1, 128, 10) for l in range(L)])
    with torch.no_grad():
        lns = [base.transformer.ln_f] + [m for b in base.transformer.h for m in (b.ln_1, b.ln_2)]
        for ln in lns:
            ln.weight[PD] = 10.0
        for l, blk in enumerate(base.transformer.h):
            blk.mlp.c_fc.weight[PF[l], :] *= 20
    with pytest.raises(SystemExit, match='error: importance=activation needs calibration batches'):
        importance(base, 'activation')
    base.train()
    keep = select(importance(base, 'activation', batches=[batch(80), batch(81)]), len(PD), PF.shape[1])
    assert base.training   # mode restored
    assert torch.equal(keep['D'], PD)
    assert torch.equal(keep['F'], PF)


def _activation_by_hand(m, batches, gelu=False):
    """sum |activation| over batches and positions, by running the blocks' pieces one by one in
    eval mode (no dropout): after ln_1 and ln_2 for D, at c_fc's output (gelu: after the GELU, and
    ln_f too) for F."""
    D, Fs = torch.zeros(m.config.n_embd, dtype=torch.float64), torch.zeros(m.config.n_layer, m.config.d_ff, dtype=torch.float64)
    with torch.no_grad():
        for x, _ in batches:
            h = m.transformer.wte(x) + m.transformer.wpe(torch.arange(x.shape[1]))
            for l, blk in enumerate(m.transformer.h):
                a = blk.ln_1(h)
                D += a.abs().sum((0, 1)).double()
                B, T_, _ = a.shape
                q, k, v = blk.attn.c_attn(a).split(blk.attn.n_head * blk.attn.head_dim, dim=2)
                q, k, v = (z.view(B, T_, blk.attn.n_head, blk.attn.head_dim).transpose(1, 2) for z in (q, k, v))
                att = (q @ k.transpose(-1, -2)) / math.sqrt(blk.attn.head_dim)
                att = att.masked_fill(~torch.ones(T_, T_, dtype=torch.bool).tril(), float('-inf')).softmax(-1)
                h = h + blk.attn.c_proj((att @ v).transpose(1, 2).reshape(B, T_, -1))
                b = blk.ln_2(h)
                D += b.abs().sum((0, 1)).double()
                u = blk.mlp.c_fc(b)
                g = torch.nn.functional.gelu(u, approximate='tanh')
                Fs[l] += (g if gelu else u).abs().sum((0, 1)).double()
                h = h + blk.mlp.c_proj(g)
            if gelu:
                D += m.transformer.ln_f(h).abs().sum((0, 1)).double()
    return D, Fs


def test_activation_importance_by_hand():
    """activation is sum |a| on the calibration batches after ln_1 and ln_2 (D) and at c_fc's output
    before the GELU (F); activation_gelu reads after the GELU and ln_f too. Both are computed in eval
    mode whatever mode the model is in (a base with dropout gives the same scores twice) and give the
    model back its mode."""
    m = tiny_gpt(12, dropout=0.3)
    batches = [batch(90), batch(91)]
    for method, gelu in (('activation', False), ('activation_gelu', True)):
        m.train()
        s = importance(m, method, batches)
        assert m.training
        d, f = _activation_by_hand(m, batches, gelu)
        close(s['D'].double(), d, rel=1e-5, what=method)
        close(s['F'].double(), f, rel=1e-5, what=method)
        assert torch.equal(importance(m, method, batches)['F'], s['F'])


def test_random_importance_and_select():
    """random importance is deterministic per seed and differs across seeds; select returns sorted
    indices of the top scores with the requested sizes; unknown methods exit cleanly."""
    m = tiny_gpt()
    a, b, c = (importance(m, 'random', seed=s) for s in (1, 1, 2))
    assert torch.equal(a['D'], b['D']) and torch.equal(a['F'], b['F'])
    assert not torch.equal(a['D'], c['D']) and not torch.equal(a['F'], c['F'])
    assert a['D'].shape == (32,) and a['F'].shape == (L, 128)
    k = select(a, 20, 50)
    assert k['D'].shape == (20,) and k['F'].shape == (L, 50)
    assert (k['D'][1:] > k['D'][:-1]).all() and (k['F'][:, 1:] > k['F'][:, :-1]).all()
    assert set(k['D'].tolist()) == set(a['D'].argsort(descending=True)[:20].tolist())
    for l in range(L):
        assert set(k['F'][l].tolist()) == set(a['F'][l].argsort(descending=True)[:50].tolist())
    assert not torch.equal(k['D'], select(c, 20, 50)['D'])
    with pytest.raises(SystemExit, match="error: unknown importance 'bogus'"):
        importance(m, 'bogus')


def _removed(base_cfg, d, f):
    c = GPTConfig(**{**base_cfg.__dict__, 'n_embd': d, 'd_ff': f})
    return 1 - param_counts(c)['total'] / param_counts(base_cfg)['total']


@pytest.mark.parametrize('name', ['300m', '800m'])
@pytest.mark.parametrize('target', [0.35, 0.5, 0.65])
def test_compressed_config_targets(name, target):
    """For a target compression the achieved fraction is within one grid step of n_embd of the
    target, f/F tracks d/D, and the attention width is kept."""
    base = preset(name)
    D, Fw = base.n_embd, base.d_ff
    cfg, achieved = compressed_config(base, compression=target)
    d, f = cfg.n_embd, cfg.d_ff
    assert achieved == pytest.approx(1 - param_counts(cfg)['total'] / param_counts(base)['total'])
    step = max(abs(_removed(base, d + s, round((d + s) * Fw / D)) - _removed(base, d, f))
               for s in (-1, 1))
    assert 0 < step < 0.01
    assert abs(achieved - target) <= step / 2 + 1e-12
    assert abs(f - d * Fw / D) <= 0.5
    assert cfg.n_head * cfg.head_dim == base.n_head * base.head_dim
    assert (cfg.n_head, cfg.head_dim, cfg.vocab_size, cfg.block_size, cfg.n_layer,
            cfg.tie_embeddings) == (base.n_head, base.head_dim, base.vocab_size, base.block_size,
                                    base.n_layer, base.tie_embeddings)
    cfg64, _ = compressed_config(base, compression=target, multiple_of=64)
    assert cfg64.n_embd % 64 == 0


def test_compressed_config_explicit_and_bad_inputs():
    """Explicit widths work (one given, the other in proportion); impossible inputs exit with one
    clear line."""
    base = preset('300m')
    cfg, removed = compressed_config(base, n_embd=512)
    assert (cfg.n_embd, cfg.d_ff, cfg.head_dim) == (512, 2048, base.head_dim)
    assert removed == pytest.approx(_removed(base, 512, 2048))
    cfg, _ = compressed_config(base, d_ff=3072)
    assert (cfg.n_embd, cfg.d_ff) == (768, 3072)
    cfg, _ = compressed_config(base, n_embd=700, d_ff=1000)
    assert (cfg.n_embd, cfg.d_ff) == (700, 1000)
    for c in (0, 0.0, -0.2, 1, 1.0, 1.5):
        with pytest.raises(SystemExit, match=rf'error: compression={c} is impossible'):
            compressed_config(base, compression=c)
    for kw in (dict(n_embd=2048), dict(d_ff=8192), dict(n_embd=512, d_ff=5000),
               dict(n_embd=-4), dict(n_embd=512, d_ff=-1)):
        with pytest.raises(SystemExit, match=r'error: compressed widths .* must be positive and at most'):
            compressed_config(base, **kw)
    with pytest.raises(SystemExit, match='error: give either compression or explicit widths'):
        compressed_config(base, compression=0.5, n_embd=512)
    with pytest.raises(SystemExit, match='error: give compression=<fraction> or explicit widths'):
        compressed_config(base)


@pytest.mark.parametrize('kw', [dict(n_embd=0), dict(d_ff=0), dict(n_embd=0, d_ff=2048),
                                dict(n_embd=512, d_ff=0)])
def test_compressed_config_zero_width_rejected(kw):
    """An explicit width of zero is rejected as a non-positive width, not silently replaced by one
    derived from the other width (nor reported as 'no widths given')."""
    with pytest.raises(SystemExit, match=r'^error: compressed widths .* must be positive'):
        compressed_config(preset('300m'), **kw)


def test_compressed_config_zero_width_with_compression_rejected():
    """compression together with an explicit (zero) width is still 'both given'."""
    with pytest.raises(SystemExit, match='error: give either compression or explicit widths'):
        compressed_config(preset('300m'), compression=0.5, n_embd=0)


def _fixed_batch_loss_drops(model_loss, step, n=6):
    with torch.no_grad():
        before = model_loss().item()
    for _ in range(n):
        step()
    with torch.no_grad():
        after = model_loss().item()
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize('tied', [True, False])
def test_pc_and_hpr_learn_fixed_batch(tied):
    """A few PC steps on one repeated batch lower its loss; so do a few HPR steps."""
    base, keep, pc = make_pc(tied=tied)
    x, y = batch(90, B=4)
    y = torch.roll(x, -1, dims=1)   # learnable structure
    opt = adamw(pc.named_trainable(), 3e-2, 0.0, (0.9, 0.95), 'cpu')
    _fixed_batch_loss_drops(lambda: pc(x, y)[1], lambda: pc_step(pc, opt, [(x[:2], y[:2]), (x[2:], y[2:])]))
    hp = hard_prune(base, keep)
    hopt = adamw(hp.named_parameters(), 3e-2, 0.0, (0.9, 0.95), 'cpu')

    def hpr_step():
        hopt.zero_grad(set_to_none=True)
        hp(x, y)[1].backward()
        hopt.step()
    _fixed_batch_loss_drops(lambda: hp(x, y)[1], hpr_step)


def test_tied_embeddings_pc():
    """A tied base gets one projection for the shared wte/lm_head; its gradient counts both uses
    (it matches the naive path), and the merged model keeps wte and lm_head tied."""
    base, keep, pc = make_pc(tied=True)
    keys = set(pc.proj.keys())
    assert 'transformer_wte_weight' in keys and 'lm_head_weight' not in keys
    assert pc.gpt.lm_head.weight is pc.gpt.transformer.wte.weight
    untied_keys = set(make_pc(tied=False)[2].proj.keys())
    assert untied_keys == keys | {'lm_head_weight'}
    opt = adamw(pc.named_trainable(), 1e-2, 0.1, (0.9, 0.95), 'cpu')
    for s in range(3):
        pc_step(pc, opt, [batch(110 + s)])
    merged = pc.merge()
    assert merged.config.tie_embeddings
    assert merged.lm_head.weight is merged.transformer.wte.weight
    assert torch.equal(merged.transformer.wte.weight, pc.proj['transformer_wte_weight']())
    assert not torch.equal(merged.transformer.wte.weight, hard_prune(base, keep).transformer.wte.weight)


# ==================================================================================================
# data/: tokenizer, prepares (Shakespeare, C4), the loader
# ==================================================================================================
# Tests for the data layer: tokenizer, prepares, loader. Run: python -m pytest -q test_data.py



# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_pins():
    enc = tokenizer.gpt2()
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode("Hello, world!") == [15496, 11, 995, 0]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert tokenizer.gpt2() is enc  # cached


def test_tokenizer_fallback_is_the_repo_file(monkeypatch):
    def offline(name):
        raise ConnectionError("no internet")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    tokenizer.gpt2.cache_clear()
    try:
        enc = tokenizer.gpt2()
    finally:
        tokenizer.gpt2.cache_clear()
    # a download that hangs (a firewall that drops packets) is abandoned after DOWNLOAD_TIMEOUT: no
    # wall-clock bound here (the suite runs on loaded machines), the hang is an event never set
    never = threading.Event()
    def hangs(name):   # "returns" after 30 s, so a fallback that waits for it fails below, not hangs
        never.wait(30)
        return "the download, late"
    monkeypatch.setattr(tiktoken, "get_encoding", hangs)
    monkeypatch.setattr(tokenizer, "DOWNLOAD_TIMEOUT", 0.05)
    try:
        hung = tokenizer.gpt2()
    finally:
        never.set()
        tokenizer.gpt2.cache_clear()
    assert isinstance(hung, tiktoken.Encoding), f"the fallback waited for a hung download: {hung!r}"
    assert hung.name == "gpt2" and hung.n_vocab == 50257 and hung.encode("hello world") == [31373, 995]
    # the same ranks read directly, with tiktoken's own (rewritten) r50k pattern
    from tiktoken_ext.openai_public import r50k_pat_str
    ref = tiktoken.Encoding(name="ref", pat_str=r50k_pat_str,
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(tokenizer.RANKS_FILE),
                            special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    texts = ["hello world", "  leading and trailing spaces   ", "tabs\t\tand\n\n\nnewlines \n",
             "I'm, you're, we'll, they'd, it's: DON'T", "числа 12345 и émojis 🤖🎉", "a<|endoftext|>b",
             char_prep.read_corpus()[:20000]]
    for t in texts:
        assert enc.encode_ordinary(t) == ref.encode_ordinary(t)
        assert enc.decode(enc.encode_ordinary(t)) == t
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


# ----------------------------------------------------------------------------- shakespeare

def test_split_works():
    text = char_prep.read_corpus()
    works = char_prep.split_works(text)
    assert len(text) == 5057321 and len(set(text)) == 84
    assert len(works) == 42 and "\n\n\n".join(works) == text
    val = [char_prep.title(w) for i, w in enumerate(works) if char_prep.is_val(i)]
    assert val == ["THE LIFE OF KING HENRY V", "MACBETH", "THE RAPE OF LUCRECE", "TWELFTH NIGHT; OR, WHAT YOU WILL"]
    frac = sum(len(w) for i, w in enumerate(works) if char_prep.is_val(i)) / len(text)
    assert 0.05 < frac < 0.15


def test_shakespeare_prepares(tmp_path, monkeypatch):
    char_dir, bpe_dir = tmp_path / "shakespeare_char", tmp_path / "shakespeare"
    char_dir.mkdir(), bpe_dir.mkdir()
    monkeypatch.setattr(char_prep, "HERE", str(char_dir))
    monkeypatch.setattr(bpe_prep, "HERE", str(bpe_dir))
    char_prep.main()
    bpe_prep.main()
    text = char_prep.read_corpus()
    m = meta(char_dir)
    assert m["vocab_size"] == 84 and len(m["chars"]) == 84
    train, val = open_dataset(char_dir, "train")[0], open_dataset(char_dir, "val")[0]
    # each split is its works joined by the corpus' own separator: 42 works, 41 separators, 2 splits
    assert len(train) + len(val) == len(text) - len("\n\n\n")
    assert "".join(m["chars"][i] for i in val[:30]) == "THE LIFE OF KING HENRY V\n\nby W"
    enc = tokenizer.gpt2()
    val = open_dataset(bpe_dir, "val")[0]
    assert meta(bpe_dir)["vocab_size"] == 50257
    assert int((val == 50256).sum()) == 4 and val[-1] == 50256  # one end-of-text per held-out work
    assert enc.decode(val[:12].tolist()).startswith("THE LIFE OF KING HENRY V")
    x, y = Batches(bpe_dir, "train", 64, 4, seed=0).next()
    assert x.shape == y.shape == (4, 64)


# ----------------------------------------------------------------------------- c4

def write_c4_shards(src):
    """Two tiny train shards and one val shard in the real C4 schema and file names."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "déjà", "vu", "🤖", "<|endoftext|>", "\n", "12,345", "it's"]
    texts = {}
    for name in ("c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz",
                 "c4-validation.00000-of-00008.json.gz"):
        docs = [" ".join(rng.choice(words, size=rng.integers(1, 60))) for _ in range(40)]
        with gzip.open(src / name, "wt", encoding="utf-8") as f:
            for i, t in enumerate(docs):
                f.write(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z",
                                    "url": f"https://example.com/{i}"}) + "\n")
        texts[name] = docs
    return texts


def run_c4(src, out, workers=1):
    c4_prep.main([f"--src={src}", f"--out={out}", "--train_shards=2", "--val_shards=1", f"--workers={workers}"])


@pytest.fixture
def c4(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "c4"
    src.mkdir()
    texts = write_c4_shards(src)
    monkeypatch.setattr(c4_prep, "FLUSH", 100)   # a shard goes out in many pieces, as a real one does
    run_c4(src, out, workers=2)
    return src, out, texts


def test_c4_prepare(c4):
    src, out, texts = c4
    enc = tokenizer.gpt2()
    m = meta(out)
    assert m["vocab_size"] == 50257 and m["tokenizer"] == "gpt2" and m["complete"] is True
    assert [e["file"] for e in m["splits"]["train"]] == ["train/c4-train.00000-of-01024.bin",
                                                         "train/c4-train.00001-of-01024.bin"]
    assert [e["file"] for e in m["splits"]["val"]] == ["val/c4-validation.00000-of-00008.bin"]
    for e in m["splits"]["train"] + m["splits"]["val"]:
        name = os.path.basename(e["file"]).replace(".bin", ".json.gz")
        want = [t for doc in texts[name] for t in enc.encode_ordinary(doc) + [50256]]
        raw = (out / e["file"]).read_bytes()
        assert e["tokens"] == len(want) == len(raw) // 2
        assert np.frombuffer(raw, dtype=np.uint16).tolist() == want
        assert e["sha256"] == hashlib.sha256(raw).hexdigest()
    shards = open_dataset(out, "train")
    assert [len(s) for s in shards] == [e["tokens"] for e in m["splits"]["train"]]
    x, y = Batches(out, "train", 32, 8, seed=0).next()
    assert x.shape == (8, 32) and int(x.max()) < 50257


def test_c4_resume(c4, capsys):
    src, out, _ = c4
    before = {p: p.read_bytes() for p in out.rglob("*.bin")}
    meta_before = meta(out)
    old = 1_000_000_000
    for p in before:
        os.utime(p, (old, old))
    # interrupted in the middle of shard 1: its .bin never got renamed, a partial .tmp is left by a
    # writer that is gone; a worker that outlived its killed parent (alive: this process's pid) is
    # still writing another temporary file of the same shard, which the rerun neither removes nor
    # collides with
    redo = out / "train" / "c4-train.00001-of-01024.bin"
    redo.unlink()
    (out / "train" / f"c4-train.00001-of-01024.bin.{2 ** 22 + 7}.tmp").write_bytes(b"\x01\x02\x03")
    orphan = out / "train" / f"c4-train.00001-of-01024.bin.{os.getpid()}.tmp"
    orphan.write_bytes(b"\x04\x05")
    capsys.readouterr()
    real_getpid = os.getpid
    c4_prep.os.getpid = lambda: real_getpid() + 1   # the rerun's workers are other processes
    try:
        run_c4(src, out)
    finally:
        c4_prep.os.getpid = real_getpid
    assert orphan.read_bytes() == b"\x04\x05"
    orphan.unlink()
    printed = capsys.readouterr().out
    assert "2 shard(s) already done, 1 to do" in printed and "[1/1] train/c4-train.00001" in printed
    for p, content in before.items():
        assert p.read_bytes() == content
        assert (os.path.getmtime(p) == old) == (p != redo)  # finished shards were not rewritten
    assert not list(out.rglob("*.tmp")) and meta(out) == meta_before
    # a second run has nothing to do
    run_c4(src, out)
    assert "3 shard(s) already done, 0 to do" in capsys.readouterr().out


def test_c4_keeps_finished_shards_of_a_failed_run(tmp_path, capsys):
    """Every finished shard goes into meta.json (marked incomplete) as soon as it is done, so a run
    that fails on a later shard keeps the earlier ones: the rerun does only what is left."""
    src, out = tmp_path / 'src', tmp_path / 'c4'
    write_c4_shards(src.mkdir() or src)
    good = (src / 'c4-validation.00000-of-00008.json.gz').read_bytes()
    (src / 'c4-validation.00000-of-00008.json.gz').write_bytes(b'not gzip')
    error_of(run_c4, src, out, match=r"failed on .*c4-validation")      # train shards first, then val
    m = json.loads((out / 'meta.json').read_text())
    assert m['complete'] is False and len(m['splits']['train']) == 2 and not m['splits']['val']
    (src / 'c4-validation.00000-of-00008.json.gz').write_bytes(good)
    capsys.readouterr()
    run_c4(src, out)
    assert '2 shard(s) already done, 1 to do' in capsys.readouterr().out and meta(out)['complete'] is True


def test_c4_bad_inputs(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    msg = error_of(c4_prep.main, [f"--src={src}", f"--out={tmp_path / 'c4'}"])
    assert "c4-train.00000-of-01024.json.gz not found" in msg and "--src" in msg
    assert "--train_shards=2000" in error_of(c4_prep.main, ["--train_shards=2000", f"--out={tmp_path}"])

    def no_network(url, timeout=None):
        raise c4_prep.urllib.error.URLError("no internet")
    monkeypatch.setattr(c4_prep.urllib.request, "urlopen", no_network)
    msg = error_of(c4_prep.main, [f"--out={tmp_path / 'dl'}", "--workers=1"])
    assert "download of https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-train.00000-of-01024.json.gz failed" in msg
    # the interrupted download left a manifest saying "not complete": the loader refuses it
    assert "partly prepared" in error_of(open_dataset, tmp_path / "dl", "train")
    assert not list((tmp_path / "dl").rglob("*.tmp"))               # no partial download left
    # a line whose text is no string: one line naming the shard and the line
    bad = tmp_path / "badsrc"
    write_c4_shards(bad.mkdir() or bad)
    with gzip.open(bad / "c4-train.00000-of-01024.json.gz", "wt") as f:
        f.write(json.dumps({"text": "fine", "url": "u"}) + "\n" + json.dumps({"text": 3, "url": "u"}) + "\n")
    msg = error_of(c4_prep.main, [f"--src={bad}", f"--out={tmp_path / 'badout'}", "--workers=1"])
    assert "c4-train.00000-of-01024.json.gz" in msg and "line 2: 'text' is a int, not a string" in msg


# ----------------------------------------------------------------------------- loader

def make_dataset(d, shards, vocab_size=20000, split="train"):
    """A dataset folder in the meta.json format, from lists of token ids."""
    d.mkdir(exist_ok=True)
    entries = []
    for i, ids in enumerate(shards):
        name = f"{split}{i}.bin"
        np.asarray(ids, dtype=np.uint16).tofile(d / name)
        entries.append({"file": name, "tokens": len(ids), "sha256": ""})
    (d / "meta.json").write_text(json.dumps({"vocab_size": vocab_size, "splits": {split: entries}}))
    return d


def test_loader_windows(tmp_path):
    """One epoch reads every window once: non-overlapping windows of block_size+1 tokens from the
    epoch's offset, neighbours sharing one token, from every shard, none twice; then the next epoch
    starts with a new order (and offset)."""
    # token value = position, so a window's contents say exactly where it came from
    d = make_dataset(tmp_path / "ds", [np.arange(3000), np.arange(10000, 11000)])
    T, B = 16, 8
    b = Batches(d, "train", block_size=T, batch_size=B, seed=0)
    per_epoch = len(b.order)                                   # windows in this epoch
    off = b.offset
    assert 0 <= off < T and per_epoch == (3000 - 1 - off) // T + (1000 - 1 - off) // T
    starts = []
    for _ in range(per_epoch // B):
        x, y = b.next()
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
        assert torch.equal(y, x + 1)                          # y is x shifted by one, within one shard
        starts += x[:, 0].tolist()
        if len(starts) == B:
            assert b.epoch == 0 and b.epochs == pytest.approx(1 / (per_epoch // B))
    assert len(set(starts)) == len(starts)                     # no window twice in an epoch
    for s in starts:                                           # on the epoch's grid, in a shard
        pos = s if s < 10000 else s - 10000
        assert (pos - off) % T == 0 and pos + T < (3000 if s < 10000 else 1000)
    grid = {off + k * T for k in range((3000 - 1 - off) // T)} | \
        {10000 + off + k * T for k in range((1000 - 1 - off) // T)}
    assert set(starts) <= grid and len(grid) - len(starts) < B  # all but the epoch's short tail
    assert b.epoch == 1 and b.drawn == 0 and b.epochs == 1.0   # the partial tail is skipped
    first_next = b.next()[0][:, 0]
    assert not torch.equal(first_next, torch.tensor(starts[:B]))


def test_loader_ranks_and_resume(tmp_path):
    """Under DDP the ranks read disjoint windows whose union, call by call, is the 1-process stream
    of the same global batch; the state (through a weights_only checkpoint) resumes the stream at the
    exact window, mid-epoch and across an epoch's end; another seed is another stream."""
    d = make_dataset(tmp_path / "ds", [np.arange(5000) % 777, np.arange(3000) % 555])
    batches = lambda b, n: [b.next() for _ in range(n)]  # noqa: E731
    same = lambda p, q: all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(p, q))  # noqa: E731
    T, B = 8, 4
    one = batches(Batches(d, "train", T, B, seed=1), 2 * 200)                # 2 micro-batches per step
    ranks = [batches(Batches(d, "train", T, B, seed=1, rank=r, world_size=2), 200) for r in range(2)]
    for k in range(200):                                                     # step k
        assert same([one[2 * k], one[2 * k + 1]], [ranks[0][k], ranks[1][k]]), k
    epoch_len = len(Batches(d, "train", T, B, seed=1).order)
    assert 2 * 200 * B > epoch_len                                           # an epoch ended inside
    assert same(one[:3], batches(Batches(d, "train", T, B, seed=1), 3))
    assert not same(one[:3], batches(Batches(d, "train", T, B, seed=2), 3))
    for stop in (5, epoch_len // B - 1, epoch_len // B + 3):                 # mid-epoch, at its end, past it
        b = Batches(d, "train", T, B, seed=1)
        batches(b, stop)
        buf = io.BytesIO()
        torch.save({"loader": b.state_dict()}, buf)
        rest = batches(b, 4)
        c = Batches(d, "train", T, B, seed=3)                               # any seed: the state decides
        c.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["loader"])
        assert same(rest, batches(c, 4)), stop
    v = fixed_batches(d, "train", T, B, n_batches=3)
    assert len(v) == 3 and same(v, fixed_batches(d, "train", T, B, n_batches=3))


def test_loader_bad_inputs(tmp_path):
    msg = error_of(open_dataset, os.path.join(REPO, "data", "_never_prepared"), "train")
    assert "dataset not prepared" in msg and "no data/_never_prepared/prepare.py makes it: the datasets are " \
        "c4, shakespeare, shakespeare_char (or a folder path)" in msg
    if not os.path.exists(os.path.join(REPO, "data", "shakespeare", "meta.json")):   # not prepared in this clone
        msg = error_of(open_dataset, os.path.join(REPO, "data", "shakespeare"), "train")
        assert "`python data/shakespeare/prepare.py`" in msg
    msg = error_of(open_dataset, tmp_path / "shakespeare_char", "train")   # a folder elsewhere
    assert "dataset not prepared" in msg and "data/*/prepare.py" in msg
    msg = error_of(Batches, tmp_path / "c4", "train", 8, 2, seed=0)
    assert "python data/c4/prepare.py" in msg and "--src" in msg

    d = make_dataset(tmp_path / "ds", [np.arange(100), np.arange(50)])
    assert "no 'val' shards" in error_of(open_dataset, d, "val")
    msg = error_of(Batches, d, "train", block_size=50, batch_size=2, seed=0)
    assert f"block_size 50 is larger than the data in {d}" in msg
    Batches(d, "train", block_size=49, batch_size=1, seed=0)  # 50 tokens hold exactly one window of 49+1
    msg = error_of(Batches, d, "train", block_size=49, batch_size=1, seed=0, rank=1, world_size=2)
    assert "holds 1 windows of 50 tokens, fewer than one micro-batch per process (2 x 1)" in msg

    with open(d / "train1.bin", "ab") as f:
        f.write(b"\x00")  # a torn write: half a token
    msg = error_of(open_dataset, d, "train")
    assert "train1.bin" in msg and "not a whole number of uint16 tokens" in msg and "re-run" in msg
    with open(d / "train1.bin", "ab") as f:
        f.write(b"\x00")  # whole tokens again, but one more than meta.json says
    msg = error_of(open_dataset, d, "train")
    assert "train1.bin has 51 tokens but meta.json says 50" in msg

    m = json.loads((d / "meta.json").read_text())
    del m["splits"]["train"][1]["file"]                                  # an entry without its file
    (d / "meta.json").write_text(json.dumps(m))
    assert "'train' entry 1 has no file name and token count" in error_of(open_dataset, d, "train")
    d = make_dataset(tmp_path / "hashed", [np.arange(100)])
    m = json.loads((d / "meta.json").read_text())
    m["splits"]["train"][0]["sha256"] = hashlib.sha256(np.arange(100, dtype=np.uint16).tobytes()).hexdigest()
    (d / "meta.json").write_text(json.dumps(m))
    open_dataset(d, "train")                                             # the right hash: fine
    with open(d / "train0.bin", "r+b") as f:                             # a flipped token, same size
        f.seek(10)
        f.write(b"\x07\x00")
    assert "does not match the sha256 in meta.json" in error_of(open_dataset, d, "train")

    d = make_dataset(tmp_path / "oov", [[1, 2, 3, 50257]], vocab_size=50257)
    msg = error_of(open_dataset, d, "train")
    assert "train0.bin" in msg and "token id 50257 >= vocab_size 50257" in msg
    (d / "meta.json").write_text("{not json")
    assert "not a dataset manifest" in error_of(meta, d)



# ==================================================================================================
# train.py: settings, the three arms, resume, checkpoints, DDP on CPU
# ==================================================================================================
# Tests for train.py: settings, the three arms, resume, PC's checkpoint and merge, DDP on CPU.
#
#     python -m pytest -q test_train.py
#
# Every run is a tiny model on a tiny synthetic dataset written to a temporary folder in the loader's
# format (data/loader.py), so the tests need no prepared data: `dataset` may be a folder path.

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
    return checkpoint.load_checkpoint(os.path.join(out_dir, name))


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


def without_hash(ckpt):
    """A checkpoint dict edited by a test: without the content hash its save put in it (which the
    edit would no longer match), as a checkpoint from another writer."""
    return {k: v for k, v in ckpt.items() if k != 'content_sha256'}


def error_of(fn, *args, match=None, **kwargs):
    """Run fn, expect SystemExit with one line 'error: ...' (matching `match`); return it."""
    with pytest.raises(SystemExit, match=match) as e:
        fn(*args, **kwargs)
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


def test_one_settings_parser_for_every_script(capsys):
    """infra/settings.parse's rules, the same for every script: a string takes the text as it is, a
    float any number (inf too, for the checks to refuse), a bool only True/true/False/false or a bare
    --flag; --help prints the script's docstring and every setting but the internal ones, and exits 0."""
    defaults = dict(name='x', n=1, rate=0.5, flag=False, _internal='')
    parse = lambda argv: settings.parse(argv, defaults, config_files=False, doc='What this script does.')
    assert parse(['--name=123', '--n=7', '--rate=2', '--flag']) == dict(name='123', n=7, rate=2.0, flag=True, _internal='')
    assert parse(['--flag=false', "--name='quoted'"])['flag'] is False and parse(["--name='quoted'"])['name'] == 'quoted'
    assert parse(['--rate=inf'])['rate'] == float('inf')
    error_of(parse, ['--flag=yes'], match=r"flag='yes' in the command line should be True or False")
    error_of(parse, ['--n'], match=r"'--n' should look like --n=value")
    error_of(parse, ['--zz=1'], match=r"unknown setting 'zz' in the command line \(the settings: name, n, rate, flag\)$")
    error_of(parse, ['config.py'], match=r"'config.py' should look like --key=value")
    import eval as evaluation
    for script in (parse, train.parse_args, sample.parse_args, bench.parse_args, evaluation.parse_args,
                   compare.parse_options):
        with pytest.raises(SystemExit) as e:
            script(['--help'])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert 'settings (--key=value):' in out and '_internal' not in out and '_memory_arm' not in out
    assert out.startswith(compare.__doc__.strip()[:40])
    assert parse_help_lists(capsys, parse) == ['--name=\'x\'', '--n=1', '--rate=0.5', '--flag=False']


def parse_help_lists(capsys, parse):
    with pytest.raises(SystemExit):
        parse(['--help'])
    out = capsys.readouterr().out
    assert out.startswith('What this script does.')
    return [line.strip() for line in out.split('settings (--key=value):')[1].splitlines() if line.strip()]


def test_parse_args_errors(tmp_path):
    parse = train.parse_args
    msg = error_of(parse, ['--n_layers=3'], match=r"unknown setting 'n_layers'")
    assert "did you mean 'n_layer'" in msg and 'command line' in msg
    conf = tmp_path / 'bad.py'
    conf.write_text("n_layer = 2\nlearing_rate = 1e-3\n")
    msg = error_of(parse, [str(conf)], match=r"unknown setting 'learing_rate'")
    assert "did you mean 'learning_rate'" in msg and str(conf) in msg
    error_of(parse, ['--max_iters=1.5'], match=r"max_iters=1\.5 .*should be an int")
    error_of(parse, ['--bias=1'], match=r"bias=1 .*should be True or False")
    error_of(parse, ['--n_layer=abc'], match=r"n_layer='abc' .*should be an int")
    error_of(parse, ['--learning_rate=fast'], match=r"learning_rate='fast' .*should be a float")
    assert parse(['--dataset=3'])['dataset'] == '3'   # a string setting takes the text as it is
    conf2 = tmp_path / 'badtype.py'
    conf2.write_text("eval_iters = 2.5\n")
    error_of(parse, [str(conf2)], match=r"eval_iters=2\.5 in .*badtype\.py should be an int")
    error_of(parse, ['--max_iters'], match=r"should look like --max_iters=value")
    error_of(parse, [str(tmp_path / 'nope.py')], match=r"config file '.*nope\.py' not found")
    conf3 = tmp_path / 'syntax.py'
    conf3.write_text("n_layer = = 2\n")
    error_of(parse, [str(conf3)], match=r"config file '.*syntax\.py' fails to run: SyntaxError")


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
    checkpoint.load_gpt(os.path.join(out, 'ckpt_early.pt'))               # a plain GPT


# ------------------------------------------------------------------------------------ resume

def test_resume_refuses_other_settings(dataset, base_run, tmp_path):
    """A resume whose settings differ from the checkpoint's in anything it computes, or whose length the checkpoint
    has already passed, is refused with one line instead of training something else (or forever)."""
    out = str(tmp_path / 'r')
    run(dataset, out, arm='base', max_iters=4, eval_interval=2, stop_iter=2)
    error_of(lambda: run(dataset, out, arm='base', max_iters=4, eval_interval=2, n_layer=3,
                         init_from='resume'), match=r"other settings: n_layer=3 \(checkpoint: 2\)")
    # anything that changes what the run computes: the batch, the schedule, the data stream
    for change in (dict(batch_size=8), dict(learning_rate=0.02), dict(seed=7), dict(max_iters=5),
                   dict(grad_accum=2), dict(eval_iters=3), dict(warmup_iters=1)):
        key = next(iter(change))
        error_of(lambda: run(dataset, out, arm='base', eval_interval=2, init_from='resume',
                             **{'max_iters': 4, **change}), match=rf"other settings: {key}=")
    # what it only writes or how it runs may change
    run(dataset, out, arm='base', max_iters=4, eval_interval=1, log_interval=3, init_from='resume')


def test_resume_may_change_only_where_and_how_it_runs():
    """The settings a resume may change are where it writes and logs and how it runs (and the base's
    path, whose bytes are checked); a change to any other setting is refused, each by name."""
    assert set(checkpoint.RESUME_MAY_CHANGE) == {'out_dir', 'init_from', 'stop_iter', 'eval_interval', 'log_interval',
                                                 'early_ckpt_frac', 'device', 'compile', 'peak_flops', 'base_ckpt'}
    cfg = dict(train.DEFAULTS, arm='hpr')
    for key, value in cfg.items():
        if key in checkpoint.RESUME_MAY_CHANGE or key == 'arm':
            continue
        other = (not value if type(value) is bool else value + 1 if type(value) is int else
                 value * 2 + 0.5 if type(value) is float else value + '_other')
        r = SimpleNamespace(c=SimpleNamespace(**cfg), cfg={**cfg, key: other}, ckpt_path='ckpt.pt', proj_dtype='float32')
        resume = dict(iter=1, loader={}, config=cfg, proj_dtype='float32')
        error_of(checkpoint.check_resume, r, resume, match=rf"other settings: {key}=")
    # a distillation checkpoint from before train.py logged CE, with losses not yet logged: its CE is unknown
    kd = dict(cfg, distill_alpha=0.5)
    r = SimpleNamespace(c=SimpleNamespace(**kd), cfg=kd, ckpt_path='ckpt.pt', proj_dtype='float32')
    resume = lambda loss, steps: dict(iter=1, loader={}, config=kd, pending=dict(loss=loss, steps=steps, time=0.0))
    error_of(checkpoint.check_resume, r, resume(2.5, 3), match=r"from before train\.py logged a distillation run's CE")
    checkpoint.check_resume(r, resume(2.5, 0))          # nothing pending: nothing unknown
    checkpoint.check_resume(r, resume([2.5, 2.0], 3))   # today's: the CE is kept


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


def test_pc_projections_run_once_per_step(dataset, base_run, tmp_path, monkeypatch):
    """The cost-free step in train.py: W_c is built once per optimizer step (plus once at
    construction and once for the final evaluation), whatever the number of micro-batches, and
    the naive forward is never called."""
    calls = {'materialize': 0, 'naive': 0}
    real_materialize, real_forward = pc.ProjectedGPT.materialize, pc.ProjectedGPT.forward
    def materialize(self, *a, **k):
        calls['materialize'] += 1
        return real_materialize(self, *a, **k)
    def forward(self, *a, **k):
        calls['naive'] += 1
        return real_forward(self, *a, **k)
    monkeypatch.setattr(pc.ProjectedGPT, 'materialize', materialize)
    monkeypatch.setattr(pc.ProjectedGPT, 'forward', forward)
    iters = 3
    run(dataset, tmp_path / 'once', arm='pc', base_ckpt=base_run['ckpt'], compression=0.5,
        max_iters=iters, eval_interval=iters, grad_accum=4)
    assert calls == {'materialize': 1 + iters + 1, 'naive': 0}


def test_pc_merged_model(dataset, arm_runs, base_run):
    out = arm_runs['pc']
    merged = checkpoint.load_gpt(os.path.join(out, 'merged.pt'))
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
    altered = without_hash(base)   # another base: not the bytes the run was trained from
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


# ------------------------------------------------------------------------------------ what train.py trains

def setup_run(dataset, out_dir, **overrides):
    """train.setup on a tiny config: the run as train.train would start it (optimizer, model, keep)."""
    torch.set_num_threads(1)
    return train.setup(make_cfg(dataset, out_dir, **overrides))


def test_what_each_arm_trains(dataset, base_run, arm_runs):
    """Through train.py: PC moves every P off its 0/1 selection and every R off zero, and never
    touches the base (its file and the frozen tensors stay bitwise the same); HPR moves every
    matrix off its hard-pruned slice. The merged model is the run's compressed GPT."""
    base_sha = hashlib.sha256(open(base_run['ckpt'], 'rb').read()).hexdigest()
    projected = checkpoint.load_projected(os.path.join(arm_runs['pc'], 'ckpt.pt'))
    assert hashlib.sha256(open(base_run['ckpt'], 'rb').read()).hexdigest() == base_sha
    base = load_gpt(base_run['ckpt'])
    params = dict(base.named_parameters())
    start = ProjectedGPT(base, projected.keep)          # the same projections at step 0
    for (name, proj), (_, proj0) in zip(projected.projections(), start.projections()):
        assert torch.equal(proj.weight, params[name]), name   # the frozen base, bitwise
        for kind in ('p_in', 'p_out', 'r'):
            moved, init = getattr(proj, kind), getattr(proj0, kind)
            if init is not None:
                assert (moved - init).abs().max() > 1e-6, (name, kind)
    merged = load_gpt(os.path.join(arm_runs['pc'], 'merged.pt'))
    states_equal(merged, projected.merge())
    hpr, pruned = load_gpt(os.path.join(arm_runs['hpr'], 'ckpt.pt')), hard_prune(base, projected.keep)
    pruned_params = dict(pruned.named_parameters())
    for name, p in hpr.named_parameters():
        assert (p - pruned_params[name]).abs().max() > 1e-6, name


@pytest.mark.parametrize('arm', ['base', 'hpr', 'pc'])
@pytest.mark.parametrize('decay_projections,decay_vectors', [(False, False), (True, True)])
def test_optimizer_groups_and_weight_decay(arm, decay_projections, decay_vectors, dataset, base_run, tmp_path):
    """Every trained tensor is in exactly one AdamW group, nothing else is: weight decay on the
    matrices (the base's, HPR's, PC's residuals R), on PC's projections P only with
    decay_projections, on vectors only with decay_vectors; PC's compressed matrices (W_c) and the
    frozen base are not trained."""
    over = arm_overrides(arm, base_run)
    r = setup_run(dataset, tmp_path, decay_projections=decay_projections, decay_vectors=decay_vectors,
                  weight_decay=0.25, **over)
    groups = r.optimizer.param_groups
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids))                                  # each tensor once
    trained = dict(r.projected.named_trainable()) if arm == 'pc' else dict(r.model.named_parameters())
    if arm == 'pc':
        every = {f'proj.{n}': p for n, p in r.projected.proj.named_parameters()}
        every.update({f'gpt.{n}': p for n, p in r.model.named_parameters() if p.dim() < 2})
        assert trained == every and all(not b.requires_grad for b in r.projected.proj.buffers())
    assert set(ids) == {id(p) for p in trained.values()}
    def wanted(name, p):
        if p.dim() < 2:
            return decay_vectors
        return decay_projections or not name.endswith(('p_in', 'p_out'))
    decayed = {id(p) for g in groups if g['weight_decay'] == 0.25 for p in g['params']}
    assert all(g['weight_decay'] in (0.0, 0.25) for g in groups)
    assert decayed == {id(p) for n, p in trained.items() if wanted(n, p)}
    assert any(n.endswith('.r') for n in trained) == (arm == 'pc')


@pytest.mark.parametrize('method', pc.METHODS)
def test_both_arms_keep_the_same_dimensions(method, dataset, base_run, tmp_path):
    """For every importance kind the two arms keep the same dimensions and start as the same model,
    bit for bit."""
    runs = {arm: setup_run(dataset, tmp_path / arm, **{**arm_overrides(arm, base_run), 'importance': method})
            for arm in ('hpr', 'pc')}
    for k in ('D', 'F'):
        assert torch.equal(runs['hpr'].keep[k], runs['pc'].keep[k])
    states_equal(runs['hpr'].model, runs['pc'].model)


def test_learning_rate_schedule(dataset, tmp_path):
    """Warmup from learning_rate/(warmup+1) at step 0 to learning_rate at step warmup_iters, then
    cosine decay to exactly min_lr at the last step; the log records each step's rate."""
    c = SimpleNamespace(learning_rate=1e-2, min_lr=1e-3, warmup_iters=3)
    total = 10
    lrs = [train.lr_at(i, c, total) for i in range(total)]
    assert lrs[0] == pytest.approx(1e-2 / 4) and lrs[2] == pytest.approx(3e-2 / 4)
    assert lrs[3] == pytest.approx(1e-2, abs=1e-15) and lrs[-1] == pytest.approx(1e-3, abs=1e-15)
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))               # decays every step after warmup
    assert lrs[6] == pytest.approx(1e-3 + 0.5 * (1 + math.cos(math.pi * 3 / 6)) * 9e-3)
    recs = by_iter(records(train_job(make_cfg(dataset, tmp_path, arm='base', max_iters=total, eval_interval=100,
                                              warmup_iters=3, learning_rate=1e-2, min_lr=1e-3))['out_dir']), 'train')
    assert [recs[i + 1]['lr'] for i in range(total)] == lrs


def test_clip_covers_every_trained_tensor(dataset, base_run, tmp_path, monkeypatch):
    """The clipped norm is torch's, over every tensor the arm trains (PC: P, R and vectors), and
    clipping scales all of them; with one process clip_gradients is clip_grad_norm_ bit for bit."""
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(4)]
    for p in ps:
        p.grad = torch.randn_like(p) * 3
    ref = [p.detach().clone().requires_grad_() for p in ps]
    for a, b in zip(ref, ps):
        a.grad = b.grad.clone()
    total = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    processes.clip_gradients(ps[:2], ps[2:], 0.5, world=1)
    for a, b in zip(ref, ps):
        assert torch.equal(a.grad, b.grad)
    assert total > 0.5
    seen = []
    real = torch.nn.utils.clip_grads_with_norm_
    def spy(params, max_norm, total_norm, *a, **k):
        params = list(params)
        seen.append(([id(p) for p in params], total_norm.item(),
                     torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()))
        return real(params, max_norm, total_norm, *a, **k)
    monkeypatch.setattr(torch.nn.utils, 'clip_grads_with_norm_', spy)
    r = setup_run(dataset, tmp_path, grad_clip=1e-3, **{**arm_overrides('pc', base_run), 'max_iters': 2})
    r.projected.materialize()
    train.train_step(r)
    ids, total, recomputed = seen[-1]
    assert sorted(ids) == sorted(id(p) for _, p in r.named) and total == pytest.approx(recomputed, rel=1e-6)
    assert any(n.startswith('proj.') and n.endswith('p_in') for n, _ in r.named)


def _magnitude_by_hand(model, scaled):
    """Residual dims and MLP units scored from the weights, matrix by matrix, written out longhand."""
    D, L = model.config.n_embd, model.config.n_layer
    tr, dims, units = model.transformer, [], [torch.zeros(model.config.d_ff) for _ in range(L)]
    col = lambda w: w.norm(dim=0)   # one norm per input dimension
    row = lambda w: w.norm(dim=1)   # one norm per output dimension
    norm = (lambda v: v / v.mean()) if scaled else (lambda v: v)
    readers = [tr.wte.weight, tr.wpe.weight] + ([] if model.config.tie_embeddings else [model.lm_head.weight])
    for l, blk in enumerate(tr.h):
        qkv = blk.attn.c_attn.weight
        readers += [qkv] if scaled else list(qkv.chunk(3, dim=0))
        readers.append(blk.mlp.c_fc.weight)
        units[l] += norm(row(blk.mlp.c_fc.weight)) + norm(col(blk.mlp.c_proj.weight))
    writers = [m for blk in tr.h for m in (blk.attn.c_proj.weight, blk.mlp.c_proj.weight)]
    dims = [norm(col(w)) for w in readers] + [norm(row(w)) for w in writers]
    d = torch.stack(dims).sum(0) if scaled else torch.stack(dims).mean(0)
    return d, torch.stack(units)


@pytest.mark.parametrize('tied', [True, False])
def test_magnitude_importance_by_hand(tied):
    """magnitude is the mean over matrices of raw column (readers) and row (writers) norms, q, k
    and v one by one, and MLP units the sum of their two norms; magnitude_scaled first scales each
    matrix's norms to mean 1 and takes c_attn whole."""
    m = tiny_gpt(11, tie_embeddings=tied)
    with torch.no_grad():
        m.transformer.h[0].attn.c_attn.weight[:32] *= 5           # queries larger than keys, values
    for method, scaled in (('magnitude', False), ('magnitude_scaled', True)):
        s = importance(m, method)
        d, f = _magnitude_by_hand(m, scaled)
        close(s['D'], d, rel=1e-6, what=method)
        close(s['F'], f, rel=1e-6, what=method)
    assert not torch.equal(select(importance(m, 'magnitude'), 16, 64)['D'],
                           select(importance(m, 'magnitude_scaled'), 16, 64)['D'])


def test_run_lengths_tokens_and_mfu(dataset, base_run, tmp_path, capsys):
    """A run's length from max_tokens or tokens_per_param (rounded up to whole steps), the tokens and
    epochs its records count, and MFU from peak_flops: the model's FLOPs per token times each
    process's tokens per second over the peak."""
    per_iter = TINY['batch_size'] * TINY['block_size'] * 2
    s = run(dataset, tmp_path / 'tok', arm='base', grad_accum=2, max_tokens=5 * per_iter - 1, eval_interval=100,
            peak_flops=1e9)
    assert s['iters'] == 5 and s['tokens'] == 5 * per_iter
    recs = by_iter(records(tmp_path / 'tok'), 'train')
    n_model = gpt.param_counts(load_gpt(base_run['ckpt']).config)['total']
    batches = train.Batches(dataset, 'train', TINY['block_size'], TINY['batch_size'], TINY['seed'])
    per_epoch = batches.per_epoch
    for i, r in recs.items():
        assert r['tokens'] == i * per_iter and r['epochs'] == pytest.approx(2 * i / per_epoch, abs=1e-6)
        flops = gpt.flops_per_token(load_gpt(os.path.join(tmp_path / 'tok', 'ckpt.pt')).config, TINY['block_size'])
        assert r['mfu'] == pytest.approx(flops * r['tok_per_s_per_process'] / 1e9)
        assert r['tok_per_s_per_process'] == r['tok_per_s']
    capsys.readouterr()
    s = run(dataset, tmp_path / 'tpp', arm='base', max_iters=0, tokens_per_param=0.1, eval_interval=100)
    assert s['iters'] == math.ceil(0.1 * n_model / (per_iter // 2))
    # the start line says the length in every unit: iterations, tokens and tokens per parameter
    first = capsys.readouterr().out.splitlines()[0]
    tokens = s['iters'] * (per_iter // 2)
    assert f"{n_model:,} params" in first and f"{s['iters']} iters = {tokens:,} tokens " \
        f"({tokens / n_model:.1f} per model parameter)" in first and '(0.1 per model parameter)' in first, first


def test_flops_per_token_by_hand():
    """6 FLOPs per matrix weight (forward and backward) plus the attention scores, the head's matmul
    included and the embedding lookups free."""
    cfg = tiny_cfg(n_embd=40, n_head=4, head_dim=16, d_ff=72, tie_embeddings=True)
    D, A, Fw, L = 40, 64, 72, 2
    blocks = L * (2 * 2 * D + D * 3 * A + 3 * A + A * D + D + D * Fw + Fw + Fw * D + D)   # with biases, LNs
    assert gpt.flops_per_token(cfg) == 6 * (blocks + V * D) + 12 * L * A * T
    assert gpt.flops_per_token(cfg, seq_len=4) == 6 * (blocks + V * D) + 12 * L * A * 4
    assert GPT(cfg).estimate_mfu(1000.0, 1e9) == pytest.approx(gpt.flops_per_token(cfg) * 1000 / 1e9)


@pytest.mark.parametrize('alpha', [0.0, 0.5])
def test_resume_between_log_records(alpha, dataset, base_run, tmp_path):
    """A checkpoint between two log records keeps the training losses not yet logged (a distillation
    run's CE too), so a resumed run logs exactly what the uninterrupted run logs (here: log every 4
    steps, checkpoints every 3)."""
    over = dict(arm_overrides('pc', base_run), max_iters=8, eval_interval=3, log_interval=4, distill_alpha=alpha)
    run(dataset, tmp_path / 'a', **over)
    run(dataset, tmp_path / 'b', stop_iter=3, **over)
    run(dataset, tmp_path / 'b', init_from='resume', **over)
    ra, rb = (by_iter(records(tmp_path / n), 'train') for n in ('a', 'b'))
    assert sorted(ra) == sorted(rb) == [4, 8]
    for i in ra:
        assert (rb[i]['loss'], rb[i]['steps'], rb[i].get('ce')) == (ra[i]['loss'], ra[i]['steps'], ra[i].get('ce'))
    assert all(('ce' in r) == bool(alpha) for r in ra.values())


def test_resume_refuses_another_resolved_proj_dtype(dataset, base_run, tmp_path):
    """proj_dtype=auto is float32 on CPU and bfloat16 on CUDA: a PC run resumed where auto means
    another dtype than its checkpoint's would compute something else, so it is refused."""
    out = tmp_path / 'pc'
    pc_run = dict(arm='pc', base_ckpt=base_run['ckpt'], compression=0.5, **ARM_LEN)
    run(dataset, out, stop_iter=3, **pc_run)
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ck['proj_dtype'] == 'float32' and ck['config']['proj_dtype'] == 'auto'
    ck = without_hash(ck)
    ck['proj_dtype'] = 'bfloat16'   # as a checkpoint written on CUDA
    torch.save(ck, out / 'ckpt.pt')
    error_of(lambda: run(dataset, out, init_from='resume', **pc_run),
             match=r"trained with other settings: proj_dtype='float32' \(checkpoint: 'bfloat16'\)")


def test_a_finished_model_is_not_resumed(dataset, base_run, tmp_path):
    """A merged.pt (or any plain model file) put where a run's ckpt.pt goes is one line saying it is
    a finished model, whatever arm is asked, not a line about the arm or proj_dtype."""
    out = tmp_path / 'merged_as_ckpt'
    out.mkdir()
    model = load_gpt(base_run['ckpt'])
    save_atomic(gpt_checkpoint(model, config=dict(make_cfg(dataset, out, arm='pc')), tokenizer={}), str(out / 'ckpt.pt'))
    for arm in ('base', 'pc', 'hpr'):
        extra = {} if arm == 'base' else dict(base_ckpt=base_run['ckpt'])
        error_of(lambda: run(dataset, out, arm=arm, init_from='resume', max_iters=2, **extra),
                 match=r"ckpt.pt is a finished model, not a training checkpoint: nothing to resume")


@pytest.mark.parametrize('where', ['before ckpt.pt', 'while writing ckpt.pt'])
def test_a_kill_between_shares_and_ckpt_after_a_resume_loses_nothing(where, dataset, base_run, tmp_path, monkeypatch):
    """A resumed PC run saves again at its checkpoint's own iteration. Killed after writing the new
    shares and before the new ckpt.pt, it leaves the old ckpt.pt naming shares that are still on
    disk and still its own: the run resumes again and ends bit for bit where an uninterrupted run
    ends (before the shares carried their checkpoint's token, the new share replaced the old one
    under the same name, and the old ckpt.pt could never be resumed)."""
    pc_run = dict(arm='pc', base_ckpt=base_run['ckpt'], compression=0.5, **ARM_LEN)
    whole = tmp_path / 'whole'
    run(dataset, whole, **pc_run)
    out = tmp_path / 'killed'
    run(dataset, out, stop_iter=3, **pc_run)
    def killed(*a, **k):
        raise KeyboardInterrupt()   # as a kill between the shares and ckpt.pt
    if where == 'before ckpt.pt':
        monkeypatch.setattr(checkpoint, 'write_main', killed)
    else:   # the new ckpt.pt is being written: the old one and every share it names must still be there
        real = checkpoint.save_checked
        monkeypatch.setattr(checkpoint, 'save_checked',
                            lambda obj, path: killed() if path.endswith('ckpt.pt') else real(obj, path))
    with pytest.raises(KeyboardInterrupt):
        run(dataset, out, init_from='resume', **pc_run)
    monkeypatch.undo()
    s = run(dataset, out, init_from='resume', **pc_run)
    assert s['iters'] == 6
    (_, a), (_, b) = trained_state(whole), trained_state(out)
    assert_same_tensors(a, b)
    ck = load_ckpt(out)
    assert sorted(f for f in os.listdir(out) if f.startswith('ckpt.pt.')) == sorted(ck['shards'])   # old ones gone


@pytest.mark.parametrize('point', ['before merged.pt', 'before summary.json'])
def test_a_kill_while_finishing_loses_nothing(point, dataset, base_run, arm_runs, tmp_path, monkeypatch):
    """A PC run killed after its last checkpoint, before the merged model or before the summary, is
    not finished (no summary.json, so compare.py would not reuse it); resumed, it writes the merged
    model and the summary of the uninterrupted run, bit for bit, and its log's records once each."""
    out = tmp_path / 'run'
    real_save, real_text = files.save_checked, files.write_text
    def killed(*a, **k):
        raise KeyboardInterrupt()
    if point == 'before merged.pt':
        monkeypatch.setattr(files, 'save_checked', lambda obj, path: killed() if path.endswith('merged.pt') else real_save(obj, path))
    else:
        monkeypatch.setattr(files, 'write_text', lambda path, text: killed() if path.endswith('summary.json') else real_text(path, text))
    with pytest.raises(KeyboardInterrupt):
        run(dataset, out, **arm_overrides('pc', base_run))
    monkeypatch.undo()
    assert not (out / 'summary.json').exists() and (out / 'merged.pt').exists() == (point == 'before summary.json')
    s = run(dataset, out, init_from='resume', **arm_overrides('pc', base_run))
    whole = json.loads(open(os.path.join(arm_runs['pc'], 'summary.json')).read())
    assert {k: v for k, v in s.items() if k not in ('out_dir', 'config', 'base_ckpt')} == \
        {k: v for k, v in whole.items() if k not in ('out_dir', 'config', 'base_ckpt')}
    assert_same_tensors(load_ckpt(out, 'merged.pt')['model'], load_ckpt(arm_runs['pc'], 'merged.pt')['model'])
    mine, theirs = records(out), records(arm_runs['pc'])
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ('ms_per_iter', 'tok_per_s', 'tok_per_s_per_process')}
                          for r in recs]
    assert strip(mine) == strip(theirs)


def test_resume_from_the_first_checkpoint(dataset, base_run, tmp_path, monkeypatch):
    """A run killed before its second checkpoint resumes from the one written at iteration 0 (no
    AdamW state yet) and ends where the uninterrupted run ends."""
    over = dict(arm_overrides('pc', base_run), max_iters=4, eval_interval=100)
    run(dataset, tmp_path / 'a', **over)
    real = train.train_step
    def killed(r):
        if r.it == 2:
            raise KeyboardInterrupt
        return real(r)
    monkeypatch.setattr(train, 'train_step', killed)
    with pytest.raises(KeyboardInterrupt):
        run(dataset, tmp_path / 'b', **over)
    monkeypatch.undo()
    assert load_ckpt(tmp_path / 'b')['iter'] == 0 and load_ckpt(tmp_path / 'b')['optimizer'] == {}
    run(dataset, tmp_path / 'b', init_from='resume', **over)
    assert_same_tensors(trained_state(tmp_path / 'a')[1], trained_state(tmp_path / 'b')[1])


def test_summary_describes_its_checkpoint(dataset, tmp_path):
    """summary.json means 'finished': a fresh run into a finished run's folder removes it (and the
    merged model) at once, so an interrupted rerun never leaves the old summary beside a new,
    half-trained checkpoint; a finished run's summary names its checkpoint's iteration."""
    out = tmp_path / 'again'
    s = run(dataset, out, arm='base', max_iters=4, eval_interval=2)
    assert json.load(open(out / 'summary.json'))['iters'] == s['iters'] == load_ckpt(out)['iter'] == 4
    run(dataset, out, arm='base', max_iters=4, eval_interval=2, stop_iter=2)
    assert not (out / 'summary.json').exists() and load_ckpt(out)['iter'] == 2


@pytest.mark.parametrize('method', ['activation', 'random'])
def test_kept_dimensions_by_hand(method, dataset, base_run, tmp_path):
    """Both arms keep the same dimensions: the top scores of the asked importance, computed on
    importance_batches calibration batches of the training split drawn with the run's seed
    (activation) or from the run's seed (random), at the widths the compression asks."""
    base = load_gpt(base_run['ckpt'])
    small, _ = pc.compressed_config(base.config, compression=0.5)
    calib = fixed_batches(dataset, 'train', TINY['block_size'], TINY['batch_size'], 3, seed=7)
    want = select(importance(base, method, calib if method == 'activation' else None, seed=7), small.n_embd, small.d_ff)
    other = select(importance(base, method, fixed_batches(dataset, 'train', TINY['block_size'], TINY['batch_size'], 3, seed=8)
                              if method == 'activation' else None, seed=8), small.n_embd, small.d_ff)
    assert not torch.equal(want['F'], other['F'])   # the seed matters here, so a run ignoring it would show
    for arm in ('pc', 'hpr'):
        r = setup_run(dataset, tmp_path / arm, arm=arm, base_ckpt=base_run['ckpt'], compression=0.5, importance=method,
                      importance_batches=3, seed=7, max_iters=2)
        assert torch.equal(r.keep['D'], want['D']) and torch.equal(r.keep['F'], want['F']), arm


@pytest.mark.parametrize('arm', ['base', 'pc', 'hpr'])
def test_every_arm_uses_the_asked_optimizer_settings(arm, dataset, base_run, tmp_path):
    """AdamW's betas, weight decay and learning rate are the run's settings in every arm (PC's
    projections and residuals included), not torch's defaults or the base's."""
    extra = {} if arm == 'base' else dict(base_ckpt=base_run['ckpt'], compression=0.5, importance='magnitude')
    r = setup_run(dataset, tmp_path / arm, arm=arm, beta1=0.8, beta2=0.97, weight_decay=0.05, learning_rate=3e-3,
                  decay_vectors=True, decay_projections=True, max_iters=2, **extra)
    groups = r.optimizer.param_groups
    assert all(g['betas'] == (0.8, 0.97) for g in groups)
    assert {g['weight_decay'] for g in groups if g['params']} == {0.05}
    assert sum(p.numel() for g in groups for p in g['params']) == r.n_trainable


@pytest.mark.parametrize('arm', ['pc', 'hpr'])
def test_both_arms_train_at_the_dropout_asked(arm, dataset, base_run, tmp_path):
    """dropout is the arm's setting, not the base's: the compressed GPT that PC and HPR train drops
    out at the rate asked, in every dropout of the model (embeddings, attention, residual, MLP)."""
    r = setup_run(dataset, tmp_path / arm, arm=arm, base_ckpt=base_run['ckpt'], compression=0.5,
                  importance='magnitude', dropout=0.25, max_iters=2)
    assert r.model.config.dropout == 0.25
    drops = [mod.p for mod in r.model.modules() if isinstance(mod, torch.nn.Dropout)]
    assert len(drops) == 1 + 2 * L and set(drops) == {0.25}
    assert {blk.attn.dropout for blk in r.model.transformer.h} == {0.25}


def test_a_non_finite_model_to_start_from_is_one_true_line(dataset, base_run, tmp_path):
    """A base with a NaN weight is refused before any work, naming the tensor; a base run started
    from a model whose loss is non-finite at once says it wrote no checkpoint (none exists), not that
    a last good one is kept."""
    model = load_gpt(base_run['ckpt'])
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 5] = float('nan')
    save_atomic(gpt_checkpoint(model, tokenizer={}), str(tmp_path / 'nan_base.pt'))
    for arm in ('pc', 'hpr'):
        error_of(train_job, make_cfg(dataset, tmp_path / arm, arm=arm, base_ckpt=str(tmp_path / 'nan_base.pt'),
                                     compression=0.5, max_iters=2),
                 match=r"nan_base\.pt has non-finite weights \(transformer\.h\.1\.mlp\.c_fc\.weight\)")
        assert not (tmp_path / arm / 'ckpt.pt').exists()
    model.save_pretrained(str(tmp_path / 'nan_folder'))
    error_of(train_job, make_cfg(dataset, tmp_path / 'from_nan', arm='base', init_from=str(tmp_path / 'nan_folder'),
                                 max_iters=2),
             match=r"non-finite validation loss at iter 0; it wrote no checkpoint; lower learning_rate")
    assert not (tmp_path / 'from_nan' / 'ckpt.pt').exists()


def test_a_failed_child_run_says_why(dataset, base_run, tmp_path):
    """compare.py --jobs=2 trains in child processes: a run that fails there is reported with the
    child's own line (here a base with a NaN weight), not only 'see train.log'."""
    model = load_gpt(base_run['ckpt'])
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float('nan')
    save_atomic(gpt_checkpoint(model, tokenizer={}), str(tmp_path / 'nan_base.pt'))
    cfg = make_cfg(dataset, tmp_path / 'child', arm='hpr', base_ckpt=str(tmp_path / 'nan_base.pt'), compression=0.5,
                   max_iters=2)
    error_of(compare.train_in_child, cfg, match=r"the run in .*child failed: the base .*nan_base\.pt has non-finite "
                                                r"weights \(transformer\.wte\.weight\).*\(its log: .*train\.log\)")


def test_non_finite_weights_are_never_saved(dataset, base_run, tmp_path, monkeypatch):
    """If a step leaves NaN in the weights while its loss was finite, the next checkpoint refuses to
    replace the last good one, and says so."""
    out = tmp_path / 'nanw'
    real_step = torch.optim.AdamW.step
    calls = {'n': 0}
    def step(self, *a, **k):
        out_ = real_step(self, *a, **k)
        calls['n'] += 1
        if calls['n'] == 3:                       # after step 3 (iterations 0, 1, 2 done)
            with torch.no_grad():
                self.param_groups[0]['params'][0].fill_(float('nan'))
        return out_
    monkeypatch.setattr(torch.optim.AdamW, 'step', step)
    error_of(train_job, make_cfg(dataset, out, arm='base', max_iters=6, eval_interval=3),
             match=r"non-finite validation loss at iter 3; the last good checkpoint .*ckpt\.pt \(iter 0\) is kept")
    monkeypatch.undo()
    ck = load_ckpt(out)
    assert ck['iter'] == 0 and all(torch.isfinite(t).all() for t in ck['model'].values())
    # the checkpoint itself refuses non-finite weights, whatever the loss says (PC: W_c included)
    for arm in ('base', 'pc'):
        r = setup_run(dataset, tmp_path / f'nan_{arm}', **arm_overrides(arm, base_run))
        checkpoint.save_checkpoint(r, r.ckpt_path)
        before = open(r.ckpt_path, 'rb').read()
        with torch.no_grad():
            next(p for p in r.model.parameters() if p.dim() == 2).view(-1)[0] = float('inf')
        error_of(checkpoint.save_checkpoint, r, r.ckpt_path, match=r"non-finite weights at iter 0; .* is not replaced")
        assert open(r.ckpt_path, 'rb').read() == before


def test_more_bad_settings(dataset, base_run, tmp_path):
    """Impossible settings are refused with one line before any work, and nothing is written."""
    out = tmp_path / 'refused'
    go = lambda **kw: (lambda: train_job(make_cfg(dataset, out, **{'arm': 'base', 'max_iters': 2, **kw})))
    for key, value, rule in (('grad_clip', -1.0, 'not be negative'), ('learning_rate', -1e-3, 'be positive'),
                             ('beta1', 1.0, r'be in \[0, 1\)'), ('beta2', -0.1, r'be in \[0, 1\)'),
                             ('dropout', 1.0, r'be in \[0, 1\)'), ('width_multiple', 0, 'be positive'),
                             ('weight_decay', -0.1, 'not be negative'), ('warmup_iters', -1, 'not be negative'),
                             ('distill_temperature', 0.0, 'be positive'), ('distill_alpha', 1.5, r'be in \[0, 1\]')):
        error_of(go(**{key: value}), match=rf"^error: {key}={value} must {rule}")
    for dev in ('gpu', 'mps', 'tpu'):
        error_of(go(device=dev), match=rf"device='{dev}' is not supported; use auto, cpu or cuda")
    error_of(go(importance='largest'), match=r"importance='largest' is not one of magnitude, magnitude_scaled")
    error_of(go(min_lr=0.5, learning_rate=0.1), match=r"min_lr=0\.5 is above learning_rate=0\.1")
    error_of(go(distill_alpha=0.5), match=r"distillation needs a teacher")
    assert not out.exists()
    afile = tmp_path / 'a_file'
    afile.write_text('not a folder')
    for target in (afile, afile / 'sub'):
        error_of(lambda: train_job(make_cfg(dataset, target, arm='base', max_iters=2)),
                 match=r"out_dir=.*a_file.* cannot be written: .*a_file is a file")


def test_torn_log_line_on_resume(dataset, tmp_path):
    """A kill in the middle of writing metrics.jsonl leaves half a line: the resume drops it and
    logs that step again."""
    out = tmp_path / 'torn'
    run(dataset, out, arm='base', max_iters=6, eval_interval=3, stop_iter=3)
    with open(out / 'metrics.jsonl', 'a') as f:
        f.write('{"kind": "train", "iter": 4, "lo')
    run(dataset, out, arm='base', max_iters=6, eval_interval=3, init_from='resume')
    recs = records(out)
    assert sorted(by_iter(recs, 'train')) == list(range(1, 7))


def test_distillation(dataset, base_run, tmp_path, monkeypatch):
    """distill_alpha=0 is the plain run bit for bit; the loss at alpha=1 is T^2 KL(teacher ||
    student) whose gradient is autograd's; the teacher (the frozen base) never changes, and PC's
    projections read its very tensors (no second copy)."""
    torch.manual_seed(0)
    s = torch.randn(3, 5, V, requires_grad=True)
    t = torch.randn(3, 5, V)
    T = 2.0
    got = train.distilled(torch.tensor(7.0), s, t, 1.0, T)
    p_t = torch.softmax(t / T, -1)
    want = T * T * (p_t * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    g1, = torch.autograd.grad(got, s)
    g2, = torch.autograd.grad(want, s)
    close(g1, g2, rel=1e-5)
    assert train.distilled(torch.tensor(7.0), s, t, 0.0, T).item() == 7.0
    mixed = train.distilled(torch.tensor(7.0), s, t, 0.25, T).item()
    assert mixed == pytest.approx(0.75 * 7.0 + 0.25 * want.item(), rel=1e-6)

    over = dict(arm_overrides('pc', base_run), max_iters=3, eval_interval=3)
    plain, zero = tmp_path / 'plain', tmp_path / 'zero'
    run(dataset, plain, **over)
    run(dataset, zero, distill_alpha=0.0, distill_temperature=3.0, **over)
    assert [r.get('loss') for r in records(plain)] == [r.get('loss') for r in records(zero)]
    # a distillation run logs its CE beside its objective: at the first step (the same weights and
    # batch as the plain run's) the CE is the plain run's loss, and the objective is not it
    kd = tmp_path / 'kd'
    run(dataset, kd, distill_alpha=0.5, **{**over, 'log_interval': 1})
    first = by_iter(records(kd), 'train')[1]
    assert first['ce'] == by_iter(records(plain), 'train')[1]['loss'] != first['loss']
    assert not any('ce' in r for r in records(plain))
    for arm in ('pc', 'hpr'):
        r = setup_run(dataset, tmp_path / f'd_{arm}', distill_alpha=0.5, distill_temperature=2.0,
                      **{**arm_overrides(arm, base_run), 'max_iters': 3})
        before = {k: v.clone() for k, v in r.teacher.state_dict().items()}
        assert not r.teacher.training and not any(p.requires_grad for p in r.teacher.parameters())
        if arm == 'pc':
            teacher = dict(r.teacher.named_parameters())
            assert all(proj.weight.data_ptr() == teacher[n].data_ptr() for n, proj in r.projected.projections())
            r.projected.materialize()
        for _ in range(3):
            train.train_step(r)
            if arm == 'pc':
                r.projected.materialize()
        for k, v in r.teacher.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert states_equal(r.teacher, load_gpt(base_run['ckpt'])) is None


def test_a_resumed_run_is_unfinished_until_it_ends(dataset, tmp_path, monkeypatch):
    """summary.json and merged.pt mean 'finished': a resume removes them at once and writes them again
    only when it ends, so a resume that dies leaves no finished-looking folder."""
    out = tmp_path / 'again'
    over = dict(arm='pc', base_ckpt=str(tmp_path / 'b' / 'ckpt.pt'), compression=0.5, max_iters=4, eval_interval=2)
    run(dataset, tmp_path / 'b', arm='base', max_iters=4, eval_interval=2)
    run(dataset, out, **over)
    assert (out / 'summary.json').exists() and (out / 'merged.pt').exists()
    monkeypatch.setattr(train, 'finish', lambda r: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(dataset, out, init_from='resume', **over)
    assert not (out / 'summary.json').exists() and not (out / 'merged.pt').exists()
    monkeypatch.undo()
    run(dataset, out, init_from='resume', **over)
    assert json.load(open(out / 'summary.json'))['iters'] == 4 and (out / 'merged.pt').exists()


def test_one_run_per_folder_and_stale_temporaries(dataset, tmp_path):
    """A folder another live run writes to is refused (it holds an flock on out_dir/.lock); a lock
    whose run is gone is taken over; the temporary files of writers killed mid-write are removed at
    start, a live writer's are kept; the lock is released when the run ends."""
    out = tmp_path / 'shared'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', (
        "import fcntl, os, sys, time\n"
        f"f = open({str(out / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        error_of(lambda: run(dataset, out, arm='base', max_iters=2),
                 match=rf"another run \(process {holder.pid}\) is writing to out_dir=")
    finally:
        holder.kill()
        holder.wait()
    dead = str(holder.pid)   # its lock went with it; its pid names a writer that is gone
    (out / f'ckpt.pt.{dead}.tmp').write_bytes(b'half a checkpoint')
    (out / f'summary.json.{os.getppid()}.tmp').write_bytes(b'a live writer')
    run(dataset, out, arm='base', max_iters=2)
    assert not (out / f'ckpt.pt.{dead}.tmp').exists() and (out / f'summary.json.{os.getppid()}.tmp').exists()
    assert not (out / '.lock').exists()                       # released when the run ended
    assert not glob.glob(str(out / '.lock*'))                 # and no stray temporary beside it


def test_more_bad_config(dataset, tmp_path):
    """A config file's setting of the wrong type (a stray comma, None) is one line, as is a preset
    given with an explicit shape, a seed too large, an infinite length; head_dim is a setting."""
    for text, match in (("learning_rate = 3e-4,\n", r"learning_rate=\(0\.0003,\) in .* should be a float"),
                        ("max_iters = None\n", r"max_iters=None in .* should be an int"),
                        ("import sys\nsys.exit(3)\n", r"fails to run: SystemExit")):
        conf = tmp_path / 'c.py'
        conf.write_text(text)
        error_of(train.parse_args, [str(conf)], match=match)
    conf.write_text("widths = {0.5: (64, 256)}\nn_layer = 3\n")            # helpers may stay in a config
    assert train.parse_args([str(conf)])['n_layer'] == 3
    go = lambda **kw: (lambda: train_job(make_cfg(dataset, tmp_path / 'x', **{'arm': 'base', 'max_iters': 2, **kw})))
    error_of(go(preset='300m', n_layer=3), match=r"preset='300m' sets the model's shape, and so does n_layer=3")
    error_of(go(seed=2 ** 70), match=r"seed=\d+ must be below 2\*\*63")
    error_of(go(max_iters=0, tokens_per_param=float('inf')), match=r"tokens_per_param=inf must be a finite number")
    error_of(go(stop_iter=5), match=r"stop_iter=5 is after the run's end \(max_iters=2\)")
    error_of(go(n_head=5, n_embd=32), match=r"n_embd=32 is not divisible by n_head=5.* or set head_dim")
    s = run(dataset, tmp_path / 'hd', arm='base', max_iters=1, n_head=5, n_embd=32, head_dim=8)
    assert s['model_args']['head_dim'] == 8 and s['model_args']['n_head'] == 5


def as_at_a_terminal():
    """In the child before exec: SIGINT as a terminal's Ctrl-C meets it. A shell starts background
    jobs with SIGINT ignored (and a parent may block it), which the child would inherit and keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_interrupt_is_one_line(dataset, tmp_path):
    """Ctrl-C stops train.py with one line and the last checkpoint kept."""
    out = tmp_path / 'ctrlc'
    args = [f"--{k}={v}" for k, v in {**TINY, 'dataset': dataset, 'out_dir': str(out), 'max_iters': 100000,
                                      'eval_interval': 5}.items()]
    proc = subprocess.Popen([sys.executable, TRAIN_PY] + args, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'),
                            preexec_fn=as_at_a_terminal)
    deadline = time.time() + 300   # a loaded machine can take a minute to import torch
    while not (out / 'ckpt.pt').exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (out / 'ckpt.pt').exists(), "train.py wrote no checkpoint within 300 s: the interrupt would test nothing"
    proc.send_signal(2)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and err.strip().splitlines()[-1].startswith("error: interrupted; the last checkpoint is kept")
    assert 'Traceback' not in err
    load_ckpt(out)


def test_hand_edited_files_are_one_line(tmp_path):
    """A meta.json that is a folder or has a bool or huge vocabulary, a shard that is a folder, a
    checkpoint whose model_args or tokenizer are not what train.py writes: one line each."""
    d = make_dataset(tmp_path / 'ds', [np.arange(100)])
    m = json.loads((d / 'meta.json').read_text())
    for vocab in (True, 10 ** 12):
        (d / 'meta.json').write_text(json.dumps({**m, 'vocab_size': vocab}))
        assert 'not a dataset manifest' in error_of(meta, d)
    (d / 'meta.json').write_text(json.dumps(m))
    (d / 'train0.bin').unlink()
    (d / 'train0.bin').mkdir()
    assert 'train0.bin is missing (or not a file)' in error_of(open_dataset, d, 'train')
    (tmp_path / 'm').mkdir()
    (tmp_path / 'm' / 'meta.json').mkdir()
    assert 'not a dataset manifest' in error_of(meta, tmp_path / 'm')
    ck = gpt_checkpoint(tiny_gpt())
    for args in (dict(ck['model_args'], n_layer='2'), [1, 2], dict(ck['model_args'], colour='red')):
        torch.save({**ck, 'model_args': args}, tmp_path / 'bad.pt')
        error_of(load_gpt, str(tmp_path / 'bad.pt'), match=r"(should be an int|holds no GPT config)")
    torch.save({**ck, 'tokenizer': 'char'}, tmp_path / 'tok.pt')
    assert checkpoint.load_base(str(tmp_path / 'tok.pt'))[1]['tokenizer'] == {}


def test_c4_and_bench_bad_options(tmp_path):
    """C4 prepare: JSON lines that are not objects, no workers, nothing to prepare, --out a file;
    bench.py: empty or non-positive sizes, an unknown device or option, an out_dir that is a file:
    one line each, before any work."""
    src = tmp_path / 'src'
    write_c4_shards(src.mkdir() or src)
    with gzip.open(src / 'c4-train.00000-of-01024.json.gz', 'wt') as f:
        f.write('[1, 2, 3]\n')
    msg = error_of(c4_prep.main, [f'--src={src}', f'--out={tmp_path / "o"}', '--workers=1', '--val_shards=0'])
    assert "line 1 is a JSON list, not an object with a 'text'" in msg
    error_of(c4_prep.main, [f'--src={src}', '--workers=0'], match=r"--workers=0: give 1 or more")
    error_of(c4_prep.main, ['--train_shards=0', '--val_shards=0'], match=r"nothing to prepare")
    afile = tmp_path / 'afile'
    afile.write_text('x')
    error_of(c4_prep.main, [f'--src={src}', f'--out={afile}', '--val_shards=0'], match=r"cannot create .*afile")
    for argv, match in ((['--batch_sizes='], r"need positive integers"), (['--micro_batches=0'], r"need positive"),
                        (['--reps=0'], r"--reps=0 must be at least 1"), (['--device=gpu'], r"device='gpu' is not"),
                        (['--bogus'], r"unknown setting 'bogus'"), (['--process_steps=1'], r"at least 2"),
                        ([f'--out_dir={afile}'], r"--out_dir=.*afile cannot be written")):
        error_of(bench.main, ['--quick', *argv], match=match)


def test_logged_loss_is_the_mean_of_its_steps(dataset, tmp_path):
    """A train record's loss is the mean over the steps it covers: logging every 3 steps gives the
    mean of the three per-step losses that logging every step gives."""
    one = records(train_job(make_cfg(dataset, tmp_path / 'one', arm='base', max_iters=6, eval_interval=100))['out_dir'])
    three = records(train_job(make_cfg(dataset, tmp_path / 'three', arm='base', max_iters=6, eval_interval=100,
                                       log_interval=3))['out_dir'])
    per_step = by_iter(one, 'train')
    grouped = by_iter(three, 'train')
    assert sorted(grouped) == [3, 6] and all(r['steps'] == 3 for r in grouped.values())
    for end in (3, 6):
        mean = sum(per_step[i]['loss'] for i in range(end - 2, end + 1)) / 3
        assert grouped[end]['loss'] == pytest.approx(mean, rel=1e-6)


def test_naive_pc_trains_what_the_cost_free_step_trains(dataset, base_run, tmp_path):
    """pc_naive=True (W_c rebuilt in every micro-batch, plain autograd) and the cost-free step give
    the same run to fp32 rounding, through train.py; only one process may run it."""
    over = dict(arm_overrides('pc', base_run), max_iters=4, eval_interval=2, grad_accum=2)
    fast, naive = run(dataset, tmp_path / 'fast', **over), run(dataset, tmp_path / 'naive', pc_naive=True, **over)
    ra, rb = by_iter(records(tmp_path / 'fast'), 'train'), by_iter(records(tmp_path / 'naive'), 'train')
    for i in ra:
        assert rb[i]['loss'] == pytest.approx(ra[i]['loss'], abs=1e-5)
    assert naive['val_loss'] == pytest.approx(fast['val_loss'], abs=1e-5)
    assert_same_tensors(drop_key_bias(trained_state(tmp_path / 'fast')[1]),
                        drop_key_bias(trained_state(tmp_path / 'naive')[1]), atol=1e-5)


def test_a_base_meets_data_it_cannot_read(dataset, base_run, tmp_path):
    """A base whose tokenizer or vocabulary is not the dataset's is refused with one line: a
    character model on GPT-2 BPE data, or a dataset with more token ids than the model has."""
    chars = write_dataset(tmp_path / 'chars')
    m = json.loads(open(os.path.join(chars, 'meta.json')).read())
    m.update(tokenizer='char', chars=''.join(chr(65 + i) for i in range(VOCAB)))
    open(os.path.join(chars, 'meta.json'), 'w').write(json.dumps(m))
    run(chars, tmp_path / 'cbase', arm='base', max_iters=1)
    bpe = write_dataset(tmp_path / 'bpe')
    m = json.loads(open(os.path.join(bpe, 'meta.json')).read())
    open(os.path.join(bpe, 'meta.json'), 'w').write(json.dumps({**m, 'tokenizer': 'gpt2'}))
    error_of(lambda: run(bpe, tmp_path / 'x', arm='pc', base_ckpt=str(tmp_path / 'cbase' / 'ckpt.pt'), max_iters=1),
             match=r"reads char \(48 characters\) tokens but dataset .*bpe is gpt2 tokens")
    other = write_dataset(tmp_path / 'other')   # a character vocabulary of another text
    m = json.loads(open(os.path.join(other, 'meta.json')).read())
    m.update(tokenizer='char', chars=''.join(chr(66 + i) for i in range(VOCAB)))
    open(os.path.join(other, 'meta.json'), 'w').write(json.dumps(m))
    error_of(lambda: run(other, tmp_path / 'z', arm='hpr', base_ckpt=str(tmp_path / 'cbase' / 'ckpt.pt'), max_iters=1),
             match=r"characters in only one of them: 'Aq'")
    wide = write_dataset(tmp_path / 'wide', vocab=VOCAB + 16)
    error_of(lambda: run(wide, tmp_path / 'y', arm='hpr', base_ckpt=base_run['ckpt'], max_iters=1),
             match=r"has 64 token ids but the model only 48")


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
    checkpoint.load_gpt(os.path.join(out, 'ckpt.pt'))
    trains = by_iter(records(out), 'train')
    assert max(trains) == 5 and all(math.isfinite(r['loss']) for r in trains.values())


def test_bad_inputs(dataset, base_run, tmp_path, monkeypatch):
    out = tmp_path / 'bad'
    go = lambda **kw: (lambda: train_job(make_cfg(dataset, out, **kw)))
    ok = dict(arm='base', max_iters=2, eval_interval=100)
    pc_ok = dict(arm='pc', base_ckpt=base_run['ckpt'], max_iters=2, eval_interval=100)

    error_of(go(**{**ok, 'dataset': '_no_such_dataset_for_tests'}),
             match=r"dataset not prepared.*no data/_no_such_dataset_for_tests/prepare\.py makes it: the datasets are c4")
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
    error_of(go(**{**pc_ok, 'compression': 1.5}), match=r"compression=1\.5 must be in \[0, 1\): the fraction")
    error_of(go(**{**ok, 'arm': 'distill'}), match=r"arm='distill' is not one of base, pc, hpr")
    error_of(go(**{**ok, 'init_from': 'gpt5'}), match=r"init_from='gpt5' is not scratch, resume, a pretrained name")
    error_of(go(**{**pc_ok, 'init_from': 'gpt2'}), match=r"init_from='gpt2' continues training a pretrained model with arm=base")
    error_of(go(**{**ok, 'max_tokens': 1000}), match=r"exactly one of max_iters, max_tokens")
    error_of(go(**{**ok, 'max_iters': 0}), match=r"exactly one of max_iters, max_tokens")
    error_of(go(**{**ok, 'init_from': 'resume'}), match=r"ckpt\.pt' does not exist")
    for key in ('eval_interval', 'log_interval', 'batch_size', 'grad_accum', 'block_size'):
        error_of(go(**{**ok, key: 0}), match=rf"{key}=0 must be positive")
    error_of(go(**{**ok, 'max_iters': -3}), match=r"max_iters=-3 must not be negative")
    error_of(go(**{**pc_ok, 'proj_dtype': 'fp16'}), match=r"proj_dtype='fp16' is not one of auto, float32, bfloat16")
    error_of(go(**{**ok, 'early_ckpt_frac': 2.0}), match=r"early_ckpt_frac=2\.0 must be in \[0, 1\)")
    msg = error_of(go(**{**ok, 'tokens_per_param': 40.0}), match=r"exactly one of max_iters")
    assert 'max_iters=2, tokens_per_param=40.0' in msg and '--tokens_per_param=0' in msg
    error_of(go(**{**ok, 'n_head': 64}), match=r"n_head=64 is larger than n_embd=32")
    if not torch.cuda.is_available():
        error_of(go(**{**ok, 'device': 'cuda'}), match=r"no CUDA GPU")
    assert not out.exists()                                  # nothing was written by a refused run

    # grad_accum must split over the processes: pretend to be rank 0 of 2 without a process group
    inits = []
    monkeypatch.setattr(processes.dist, 'init_process_group', lambda *a, **k: inits.append(k))
    for k, v in dict(RANK='0', WORLD_SIZE='2', LOCAL_RANK='0').items():
        monkeypatch.setenv(k, v)
    error_of(go(**{**ok, 'grad_accum': 3}), match=r"grad_accum=3 must be a multiple of the 2 processes")
    assert not inits                                          # refused before joining a process group


# ------------------------------------------------------------------------------------ DDP

def launch(dataset, out_dir, script=TRAIN_PY, probe=False, **overrides):
    """Start `torchrun --standalone --nproc_per_node=2 train.py --k=v ...` on CPU (gloo)."""
    cfg = {**TINY, 'dataset': str(dataset), 'out_dir': str(out_dir), **overrides}
    args = [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in cfg.items()]
    args += ['--probe'] if probe else []
    env = {k: v for k, v in os.environ.items()
           if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                             '--nproc_per_node=2', script] + args, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=180):
    """Wait for a launch; its exit code and output."""
    try:
        out = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def trained_state(out_dir):
    """Every trained tensor of a run, PC's projections gathered from every process's file."""
    path = os.path.join(out_dir, 'ckpt.pt')
    ck = checkpoint.load_checkpoint(path)
    state = dict(ck['model'])
    if ck['kind'] == 'pc':
        state.update(checkpoint.load_shards(ck, path, list(ck['owner']))[0])
    return ck, state


DDP_LEN = dict(max_iters=6, eval_interval=3, grad_accum=4)   # 2 micro-batches per process at 2


@pytest.fixture(scope='session')
def ddp_runs(dataset, base_run, tmp_path_factory):
    """2-process runs (base; PC uninterrupted; PC stopped at 3 then resumed at 2 processes) and the
    1-process runs of the same global batch."""
    d = tmp_path_factory.mktemp('ddp')
    arms = {'base': dict(arm='base', dropout=0.1, **DDP_LEN),   # dropout: masks follow the micro-batch
            'pc': dict(arm='pc', base_ckpt=base_run['ckpt'], compression=0.5, **DDP_LEN)}
    procs = {arm: launch(dataset, d / f'two_{arm}', **over) for arm, over in arms.items()}
    procs['stop'] = launch(dataset, d / 'two_pc_resumed', stop_iter=3, **arms['pc'])
    for arm, over in arms.items():   # while the launches run
        run(dataset, d / f'one_{arm}', **over)
    done = {k: finish(p) for k, p in procs.items()}
    for k, (code, out) in done.items():
        assert code == 0, f"torchrun {k} failed:\n{out[-3000:]}"
    stopped = trained_state(d / 'two_pc_resumed')[0]
    assert stopped['iter'] == 3 and len(stopped['shards']) == 2
    shutil.copytree(d / 'two_pc_resumed', d / 'one_pc_from_two')      # for a resume at 1 process
    shutil.copytree(d / 'two_pc_resumed', d / 'two_pc_truncated')     # for a resume with a broken share
    code, out = finish(launch(dataset, d / 'two_pc_resumed', init_from='resume', **arms['pc']))
    assert code == 0, out[-3000:]
    return d, arms


def test_two_processes_match_one(ddp_runs):
    """2 gloo processes with 2 micro-batches each train what 1 process trains on the same global
    batch: loss curves, every trained tensor (PC's P and R gathered from both processes) and the
    merged W_c agree to fp32 rounding, with the same kept dimensions; tokens/s and MFU are counted
    per process."""
    d, arms = ddp_runs
    for arm in arms:
        one, two = records(d / f'one_{arm}'), records(d / f'two_{arm}')
        for kind, key in (('train', 'loss'), ('eval', 'val_loss')):
            r1, r2 = by_iter(one, kind), by_iter(two, kind)
            assert sorted(r1) == sorted(r2) and r1, (arm, kind)
            for i in r1:
                assert r2[i][key] == pytest.approx(r1[i][key], abs=1e-5, rel=0), (arm, kind, i)
        for r in by_iter(two, 'eval').values():
            assert r['ranks_agree'] is True, (arm, r)
        for r in by_iter(two, 'train').values():
            assert r['tok_per_s_per_process'] == pytest.approx(r['tok_per_s'] / 2)
            assert r['tokens'] == r['iter'] * 4 * TINY['batch_size'] * TINY['block_size']
        (c1, s1), (c2, s2) = trained_state(d / f'one_{arm}'), trained_state(d / f'two_{arm}')
        assert c1['iter'] == c2['iter'] == 6
        # fp32 rounding: the two runs sum the same gradients in another order, and AdamW divides by
        # sqrt(v), so a rounding difference in a near-zero gradient moves a weight by up to a few 1e-6
        # after 6 steps at lr 1e-2 (a real fault moves it by the order of lr)
        assert_same_tensors(drop_key_bias(s1), drop_key_bias(s2), atol=1e-5)
        if arm == 'pc':
            assert any(k.endswith('p_in') for k in s2) and any(k.endswith('p_out') for k in s2)
            for k in ('D', 'F'):
                assert torch.equal(c1['keep'][k], c2['keep'][k])
            m1, m2 = (load_ckpt(d / f'{n}_pc', 'merged.pt')['model'] for n in ('one', 'two'))
            assert_same_tensors(drop_key_bias(m1), drop_key_bias(m2), atol=1e-5)


def test_owners_balance_bytes_as_well_as_flops():
    """assign_owners, by hand: largest FLOPs first, each matrix to the process whose larger share
    (of all projection FLOPs, or of all projection bytes) grows least. The last matrix here is cheap
    in FLOPs and big in bytes: by FLOPs alone it would go to process 0, which already holds the
    other big one; by the larger share it goes to process 1."""
    m = lambda flops, nbytes: dict(fwd=flops, bwd=0, frozen=nbytes // 4, inter=0, second_p=0, p=0, r=0)
    matrices = dict(a=m(100, 400), b=m(60, 4), c=m(40, 4), d=m(1, 400))
    assert processes.assign_owners(matrices, 2) == dict(a=0, b=1, c=1, d=1)
    assert processes.assign_owners(matrices, 1) == dict(a=0, b=0, c=0, d=0)


def test_each_process_holds_only_its_projections(ddp_runs, base_run):
    """The projected matrices are shared out: every base matrix has exactly one owner, both
    processes own some, the projection FLOPs are balanced, and each process's checkpoint file holds
    the P and R of its own matrices and nothing else."""
    d, _ = ddp_runs
    ck, _ = trained_state(d / 'two_pc')
    base = load_gpt(base_run['ckpt'])
    matrices = [n for n, p in base.named_parameters() if p.dim() == 2]
    assert list(ck['owner']) == matrices and set(ck['owner'].values()) == {0, 1}
    cost = costs.matrix_costs({n: tuple(p.shape) for n, p in base.named_parameters() if p.dim() == 2},
                                len(ck['keep']['D']), ck['keep']['F'].shape[1])
    assert ck['owner'] == processes.assign_owners(cost, 2)
    flops = {n: c['fwd'] + c['bwd'] for n, c in cost.items()}
    width, f = len(ck['keep']['D']), ck['keep']['F'].shape[1]
    assert flops == {n: sum(pc.matrix_flops(*s, out_first=pc.out_first_is_cheaper(*s)))
                     for n, p in base.named_parameters() if p.dim() == 2
                     for s in [costs.projection_shape(n, *p.shape, width, f)]}
    load = [sum(c for n, c in flops.items() if ck['owner'][n] == k) for k in (0, 1)]
    assert abs(load[0] - load[1]) <= max(flops.values())          # balanced to within one matrix
    for k, file in enumerate(ck['shards']):
        share = torch.load(d / 'two_pc' / file, weights_only=True)
        held = {name.split('.')[1] for name in share['model']}
        assert held == {n.replace('.', '_') for n in matrices if ck['owner'][n] == k}
        assert set(share['optimizer']) == set(share['model'])


def test_sharded_resume(ddp_runs, dataset):
    """A 2-process PC run stopped at iteration 3 and resumed at 2 processes ends bit for bit where
    the uninterrupted run ends; resumed at 1 process it ends there to fp32 rounding; the old shares
    are gone and a missing share is one clear line."""
    d, arms = ddp_runs
    (ca, sa), (cb, sb) = trained_state(d / 'two_pc'), trained_state(d / 'two_pc_resumed')
    assert cb['iter'] == 6
    assert_same_tensors(sa, sb)
    ra, rb = records(d / 'two_pc'), records(d / 'two_pc_resumed')
    for kind in ('train', 'eval'):
        assert {i: r.get('loss', r.get('val_loss')) for i, r in by_iter(ra, kind).items()} == \
            {i: r.get('loss', r.get('val_loss')) for i, r in by_iter(rb, kind).items()}
    # the same files, the shares named after the same iteration and process (each checkpoint's own token)
    no_token = lambda names: sorted(re.sub(r'\.[0-9a-f]{12}\.', '.', n) for n in names)
    assert no_token(os.listdir(d / 'two_pc_resumed')) == no_token(os.listdir(d / 'two_pc'))
    one = d / 'one_pc_from_two'
    s = run(dataset, one, init_from='resume', **arms['pc'])
    assert s['iters'] == 6
    c1, s1 = trained_state(one)
    assert len(c1['shards']) == 1
    assert_same_tensors(drop_key_bias(sa), drop_key_bias(s1), atol=1e-5)   # (see test_two_processes_match_one)
    # a share from another checkpoint of the same size, or gone: one line naming it
    share = one / c1['shards'][0]
    raw = share.read_bytes()                                # another checkpoint's share, the same size
    share.write_bytes(raw.replace(c1['saved'].encode(), b'f' * len(c1['saved'])))
    assert share.read_bytes() != raw and os.path.getsize(share) == c1['shard_bytes'][0]
    error_of(train_job, make_cfg(dataset, one, init_from='resume', **arms['pc']),
             match=r"a part of .*ckpt\.pt, is missing, incomplete or from another checkpoint")
    os.remove(share)
    error_of(train_job, make_cfg(dataset, one, init_from='resume', **arms['pc']),
             match=r"a part of .*ckpt\.pt, is missing, incomplete or from another checkpoint")


def test_a_broken_share_stops_every_process_with_one_line(ddp_runs, dataset):
    """A 2-process resume whose second share is truncated: the process that reads it and the one
    that does not both stop with the same one line naming the share, no gloo traceback."""
    d, arms = ddp_runs
    ck = torch.load(d / 'two_pc_truncated' / 'ckpt.pt', weights_only=True)
    share = d / 'two_pc_truncated' / ck['shards'][1]
    share.write_bytes(share.read_bytes()[:-100])
    code, out = finish(launch(dataset, d / 'two_pc_truncated', init_from='resume', **arms['pc']))
    assert code != 0
    lines = [l for l in out.splitlines() if l.startswith('error: ')]
    assert len(lines) == 2 and all(re.search(rf"{re.escape(share.name)}, a part of .*ckpt\.pt, is missing, "
                                             r"incomplete or from another checkpoint", l) for l in lines), out[-3000:]
    # (torchrun itself reports failed workers with a traceback of its own launcher, ChildFailedError)
    assert 'gloo' not in out.lower() and 'train.py", line' not in out and 'infra/' not in out, out[-3000:]


def flip_a_bit_of(path, tensor):
    """Flip one bit inside `tensor`'s bytes in the checkpoint file (same size; torch.load still reads it)."""
    raw = bytearray(open(path, 'rb').read())
    at = raw.find(tensor.contiguous().view(torch.uint8).numpy().tobytes()[:32])
    assert at > 0
    raw[at + 5] ^= 0x10
    open(path, 'wb').write(bytes(raw))


def test_flipped_bytes_are_one_line(dataset, base_run, tmp_path):
    """A checkpoint, a share or a merged model whose bytes changed on disk (one bit, same size) is
    refused with one line on load: every save keeps a sha256 of its contents inside it."""
    pc_run = dict(arm='pc', base_ckpt=base_run['ckpt'], compression=0.5, **ARM_LEN)
    for what in ('ckpt', 'share', 'merged'):
        out = tmp_path / what
        run(dataset, out, stop_iter=0 if what == 'merged' else 3, **pc_run)
        ck = load_ckpt(out)
        if what == 'ckpt':
            flip_a_bit_of(out / 'ckpt.pt', max(ck['model'].values(), key=lambda x: x.numel()))
            where = out / 'ckpt.pt'
        elif what == 'share':
            where = out / ck['shards'][0]
            share = torch.load(where, weights_only=True)
            flip_a_bit_of(where, max(share['model'].values(), key=lambda x: x.numel()))
        else:
            merged = torch.load(out / 'merged.pt', weights_only=True)
            flip_a_bit_of(out / 'merged.pt', merged['model']['transformer.wte.weight'])
            error_of(load_gpt, str(out / 'merged.pt'), match=r"merged\.pt is damaged: its contents differ")
            continue
        error_of(train_job, make_cfg(dataset, out, init_from='resume', **pc_run),
                 match=rf"{re.escape(where.name)} is damaged: its contents differ from what was saved")


def children(pid):
    """Process ids whose parent is `pid` (from /proc)."""
    kids = []
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='needs /proc and prctl')
def test_workers_die_with_their_launcher(dataset, tmp_path):
    """kill -9 of torchrun (the launcher) takes its training processes with it: none is left
    behind holding memory or a GPU."""
    out = tmp_path / 'orphans'
    proc = launch(dataset, out, arm='base', max_iters=100000, eval_interval=5, grad_accum=2)
    try:
        deadline = time.time() + 120
        while not (out / 'ckpt.pt').exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        workers = children(proc.pid)
        assert len(workers) == 2 and (out / 'ckpt.pt').exists(), proc.poll()
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while any(os.path.exists(f'/proc/{w}') and open(f'/proc/{w}/stat').read().split()[2] != 'Z'
                  for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        alive = [w for w in workers if os.path.exists(f'/proc/{w}')
                 and open(f'/proc/{w}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z']
        assert not alive, f"workers {alive} outlived their launcher"
    finally:
        for w in children(proc.pid):
            os.kill(w, 9)
        if proc.poll() is None:
            proc.kill()


def test_fingerprints_see_dtype_and_shape():
    """Two processes agree only on the same tensors: the same bytes as another dtype or shape, or in
    another order of a list, is another fingerprint; dict keys are read in sorted order."""
    fp = processes.fingerprint
    assert fp(torch.zeros(4)) == fp(torch.zeros(4))
    assert fp(torch.zeros(4)) != fp(torch.zeros(2, 2))
    assert fp(torch.zeros(4, dtype=torch.float32)) != fp(torch.zeros(4, dtype=torch.int32))
    assert fp([torch.ones(2), torch.zeros(2)]) != fp([torch.zeros(2), torch.ones(2)])
    assert fp(dict(a=1, b=torch.ones(1))) == fp(dict(b=torch.ones(1), a=1)) != fp(dict(a=2, b=torch.ones(1)))
    assert fp(dict(lr=1)) != fp(dict(seed=1)) and fp(dict(a=1, b=2)) != fp(dict(a=1, c=2))   # the keys count too


def test_processes_that_disagree_stop(dataset, base_run, tmp_path):
    """Processes started with different settings (here the second with another seed, hence other
    kept dimensions) all stop with one message and a non-zero exit, in bounded time, instead of
    training apart or hanging; ranks_agree tells equal from different models."""
    wrapper = tmp_path / 'wrapper.py'
    wrapper.write_text(
        "import os, runpy, sys, json, torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "if os.environ['RANK'] == '1':\n"
        "    sys.argv.append('--seed=7')\n"
        "if '--probe' in sys.argv:\n"
        "    from infra import processes\n"
        "    dist.init_process_group('gloo')\n"
        "    r = int(os.environ['RANK'])\n"
        "    same = processes.ranks_agree([torch.ones(3), torch.arange(4.)], 2)\n"
        "    other = processes.ranks_agree([torch.ones(3), torch.arange(4.) + r * 1e-6], 2)\n"
        f"    open(os.path.join({str(tmp_path)!r}, f'probe{{r}}.json'), 'w').write(json.dumps([same, other]))\n"
        "    dist.barrier(); dist.destroy_process_group(); sys.exit(0)\n"
        f"sys.argv[0] = {TRAIN_PY!r}\n"
        f"runpy.run_path({TRAIN_PY!r}, run_name='__main__')\n")
    t0 = time.time()
    proc = launch(dataset, tmp_path / 'apart', script=str(wrapper), arm='pc', base_ckpt=base_run['ckpt'],
                  importance='random', max_iters=4, eval_interval=2, grad_accum=2)
    code, out = finish(proc, timeout=120)
    assert code != 0 and time.time() - t0 < 120
    assert out.count('error: the 2 processes disagree on settings: start them all') >= 1, out[-2000:]
    assert not (tmp_path / 'apart' / 'ckpt.pt').exists()
    code, out = finish(launch(dataset, tmp_path / 'probe', script=str(wrapper), probe=True))
    assert code == 0, out[-2000:]
    assert [json.loads((tmp_path / f'probe{r}.json').read_text()) for r in (0, 1)] == [[True, False]] * 2


# ==================================================================================================
# compare.py and the paper-scale configs
# ==================================================================================================
# The comparison command end to end on tiny settings, its options and reuse rules, the tuned rates
# of the embedded race, and the paper's grid on the meta device.

def tiny_compare_args(tmp_path, ds, *extra):
    """compare.py options for a 2-layer base of 16 steps and arm runs of a few steps."""
    both = [f'--dataset={ds}', '--block_size=16', '--batch_size=4', '--eval_iters=2', '--log_interval=1',
            '--device=cpu']
    base = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--tokens_per_param=0.0', '--max_iters=16',
            '--warmup_iters=1', '--eval_interval=8']
    return ([f'--out_dir={tmp_path / "cmp"}', f'--base_dir={tmp_path / "base"}', '--last_steps=3',
             '--eval_interval=3', '--warmup_iters=2'] + both + ['--base.' + a[2:] for a in both + base]
            + list(extra))


def test_compare_distillation_measure(tmp_path):
    """compare.py --distill_alpha: the paper's measure of each run is its training CE, not its
    objective; a finished distillation run without a CE log is refused, by folder, before any work."""
    ds = write_dataset(tmp_path / 'ds')
    args = tiny_compare_args(tmp_path, ds, '--budgets=3', '--levels=0.5', '--lrs=2^-8', '--distill_alpha=0.5')
    race = compare.main(args)
    for r in race:
        logged = compare.records(r['out_dir'], 'train')
        assert r['train_loss'] == pytest.approx(sum(x['ce'] for x in logged) / len(logged))   # 3 steps of 1
        assert r['train_loss'] != pytest.approx(sum(x['loss'] for x in logged) / len(logged))
    path = os.path.join(race[0]['out_dir'], 'metrics.jsonl')
    old = [json.loads(line) for line in open(path)]
    files.write_text(path, ''.join(json.dumps({k: v for k, v in x.items() if k != 'ce'}) + '\n' for x in old))
    error_of(compare.main, args, match=rf"{re.escape(race[0]['out_dir'])} is a distillation run from before train\.py")


def test_compare_end_to_end(tmp_path, capsys):
    """compare.py trains a base and, with --early, a second base on a quarter of its steps with its
    own full schedule; sweeps both arms over the same rates at every budget, races each arm at its
    best held-out rate, writes figures and Table-1-shaped tables; a second call trains nothing."""
    ds = write_dataset(tmp_path / 'ds')
    args = tiny_compare_args(tmp_path, ds, '--budgets=3,6', '--levels=0.5', '--early=True', '--lrs=2^-9,2^-6')
    race = compare.main(args)
    assert len(race) == 8   # 1 level x 2 bases x 2 budgets x 2 arms, each at its best of 2 rates
    runs = json.loads((tmp_path / 'cmp' / 'compare.json').read_text())['runs']
    assert len(runs) == 16
    for r in race:
        same = [x for x in runs if all(x[k] == r[k] for k in ('level', 'base', 'iters', 'arm'))]
        assert sorted(x['lr'] for x in same) == [2 ** -9, 2 ** -6]
        assert r['val_loss'] == min(x['val_loss'] for x in same)
    for b in ('final', 'early'):
        for n in (3, 6):
            hpr, pc_ = (next(r for r in race if (r['base'], r['iters'], r['arm']) == (b, n, arm))
                        for arm in ('hpr', 'pc'))
            assert hpr['params'] == pc_['params'] and pc_['trainable_params'] > hpr['trainable_params']
            assert hpr['tokens'] == pc_['tokens'] == n * 4 * 16
            first = [compare.records(r['out_dir'], 'eval')[0]['val_loss'] for r in (hpr, pc_)]
            assert first[0] == first[1]   # the race starts level: the same model at step 0
    # the early base is a run of its own: a quarter of the steps, annealed to min_lr at its last one
    early = json.loads((tmp_path / 'base_early' / 'summary.json').read_text())
    assert early['iters'] == 4
    assert compare.records(str(tmp_path / 'base_early'), 'train')[-1]['lr'] == pytest.approx(
        early['config']['min_lr'])
    for png in ('compare.png', 'compare_lr.png'):
        assert (tmp_path / 'cmp' / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    md = (tmp_path / 'cmp' / 'compare.md').read_text()
    for r in race:
        assert f"{r['val_loss']:.4f}" in md and f"{r['train_loss']:.4f}" in md
    assert md.count('| magnitude | 50% | final | PC |') == 2 and md.count('| magnitude | 50% | early | HPR |') == 2
    ckpt = os.path.join(race[-1]['out_dir'], 'ckpt.pt')
    stamp = os.path.getmtime(ckpt)
    capsys.readouterr()
    assert compare.main(args) == race
    assert os.path.getmtime(ckpt) == stamp and capsys.readouterr().out.count('reusing') == 18


def test_compare_tables_are_their_runs(tmp_path):
    """Every number of compare.md, recomputed here from the runs' own summary.json and
    metrics.jsonl: the rate chosen for each arm (its best held-out loss, flagged at the edge of the
    sweep), each held-out cell, each cell of the paper's measure (the mean training loss of the last
    steps, weighted by the steps each log record holds), each bold mark (the better of each pair, in
    each table by its own measure), each difference (PC - HPR) and the sweep table. The runs' numbers
    are rewritten so that every choice matters: the best held-out rate is not the best training-loss
    rate, the weighting changes a mean, and one pair's order differs between the two measures."""
    ds = write_dataset(tmp_path / 'ds')
    lo, hi = 2 ** -9, 2 ** -6
    args = tiny_compare_args(tmp_path, ds, '--budgets=3,6', '--levels=0.5', '--lrs=2^-9,2^-6')
    compare.main(args)
    runs = json.loads((tmp_path / 'cmp' / 'compare.json').read_text())['runs']
    # (arm, iters, lr) -> (held-out loss, [(training loss, steps) of the log records, oldest first])
    crafted = {('hpr', 3, lo): (2.50, [(9.0, 1), (2.0, 1), (1.0, 2)]), ('hpr', 3, hi): (2.40, [(9.0, 1), (3.0, 1), (2.6, 2)]),
               ('pc', 3, lo): (2.45, [(9.0, 1), (2.2, 1), (1.1, 2)]), ('pc', 3, hi): (2.46, [(9.0, 1), (1.0, 1), (1.0, 2)]),
               ('hpr', 6, lo): (2.30, [(9.0, 4), (1.9, 1), (1.3, 1)]), ('hpr', 6, hi): (2.31, [(9.0, 4), (1.2, 1), (1.2, 1)]),
               ('pc', 6, lo): (2.33, [(9.0, 4), (1.5, 1), (1.0, 1)]), ('pc', 6, hi): (2.20, [(9.0, 4), (2.5, 1), (2.5, 1)])}
    for r in runs:
        val, train_recs = crafted[r['arm'], r['iters'], r['lr']]
        folder = r['out_dir']
        summary = json.loads(open(os.path.join(folder, 'summary.json')).read())
        summary['val_loss'] = val
        files.write_text(os.path.join(folder, 'summary.json'), json.dumps(summary))
        evals = compare.records(folder, 'eval')
        evals[-1]['val_loss'] = val
        it, lines = 0, []
        for loss, steps in train_recs:
            it += steps
            lines.append(dict(kind='train', iter=it, tokens=it * 64, loss=loss, steps=steps))
        files.write_text(os.path.join(folder, 'metrics.jsonl'), ''.join(json.dumps(x) + '\n' for x in evals + lines))

    def paper_measure(folder, n=3):   # the last n steps' mean, each record weighing its steps
        recs = [json.loads(l) for l in open(os.path.join(folder, 'metrics.jsonl')) if '"train"' in l]
        total = steps = 0
        for rec in reversed(recs):
            if steps >= n:
                break
            total, steps = total + rec['loss'] * rec['steps'], steps + rec['steps']
        return total / steps

    race = compare.main(args)
    md = (tmp_path / 'cmp' / 'compare.md').read_text()
    name = lambda lr: f"2^{int(math.log2(lr))}"
    chosen = {}
    for arm in ('hpr', 'pc'):
        for n in (3, 6):
            mine = [r for r in runs if (r['arm'], r['iters']) == (arm, n)]
            vals = {r['lr']: json.loads(open(os.path.join(r['out_dir'], 'summary.json')).read())['val_loss'] for r in mine}
            trains = {r['lr']: paper_measure(r['out_dir']) for r in mine}
            best = min(vals, key=vals.get)
            chosen[arm, n] = dict(lr=best, val=vals[best], train=trains[best], vals=vals, edge=True)   # 2 rates: always an edge
    # the choices matter: a best held-out rate that is not the best training-loss rate, a weighting
    # that changes a mean, and a pair in another order by the two measures
    assert any(min(c['vals'], key=c['vals'].get) != min({r['lr']: paper_measure(r['out_dir']) for r in runs
               if (r['arm'], r['iters']) == k}.items(), key=lambda kv: kv[1])[0] for k, c in chosen.items())
    assert paper_measure(next(r['out_dir'] for r in runs if (r['arm'], r['iters'], r['lr']) == ('hpr', 3, lo))) != (2.0 + 1.0) / 2
    assert any((chosen['pc', n]['val'] < chosen['hpr', n]['val']) != (chosen['pc', n]['train'] < chosen['hpr', n]['train'])
               for n in (3, 6))
    assert {(r['arm'], r['iters']): r['lr'] for r in race} == {k: c['lr'] for k, c in chosen.items()}
    base = next(r for r in race)
    params = f"{base['params']:,} | "
    for key in ('val', 'train'):
        for arm, other in (('hpr', 'pc'), ('pc', 'hpr')):
            cells = []
            for n in (3, 6):
                mine, theirs = chosen[arm, n][key], chosen[other, n][key]
                v = f"{mine:.4f}"
                cells.append(f"{f'**{v}**' if mine <= theirs else v} @ {name(chosen[arm, n]['lr'])} (edge)")
            trained = next(r['trainable_params'] for r in race if r['arm'] == arm)
            row = f"| magnitude | 50% | final | {arm.upper()} | {params}{trained:,} | " + ' | '.join(cells) + ' |'
            assert row in md, (key, row)
    diffs = ' | '.join(f"{chosen['pc', n]['val'] - chosen['hpr', n]['val']:+.4f} / "
                       f"{chosen['pc', n]['train'] - chosen['hpr', n]['train']:+.4f}" for n in (3, 6))
    assert f"| magnitude | 50% | final | {diffs} |" in md
    for arm in ('hpr', 'pc'):
        for n in (3, 6):
            c = chosen[arm, n]
            cells = ' | '.join(f"**{c['vals'][lr]:.4f}**" if lr == c['lr'] else f"{c['vals'][lr]:.4f}" for lr in (lo, hi))
            assert f"| magnitude | 50% | final | {n} | {arm.upper()} (edge) | {cells} |" in md
    # the base's line, from its own summary; the arm settings of the command line reached both arms
    b = json.loads((tmp_path / 'base' / 'summary.json').read_text())
    assert (f"Base (final): {b['params']:,} parameters; 2 layers, n_embd 32, d_ff 128; {b['tokens']:,} tokens "
            f"({b['tokens'] / b['params']:.1f} per parameter); validation loss {b['val_loss']:.4f}") in md
    assert b['config']['warmup_iters'] == 1
    for r in runs:
        c = json.loads(open(os.path.join(r['out_dir'], 'summary.json')).read())['config']
        assert (c['arm'], c['warmup_iters'], c['eval_interval'], c['max_iters'], c['learning_rate']) == \
            (r['arm'], 2, 3, r['iters'], r['lr'])


def test_compare_bad_options(tmp_path):
    """Every option is checked before any work, each with one line: nothing is trained (a wrong
    level no longer fails only after the base), and a boolean takes only true/false spellings."""
    ds = write_dataset(tmp_path / 'ds')
    ok = tiny_compare_args(tmp_path, ds)
    cases = [(['--levels=abc'], r"--levels=abc and --budgets=.* comma-separated"),
             (['--levels=0.5,1.5'], r"strictly between 0 and 1"),
             (['--budgets=0'], r"--budgets, --last_steps and --jobs must be positive"),
             (['--last_steps=x'], r"last_steps='x' in the command line should be an int"),
             (['--early=yes'], r"early='yes' in the command line should be True or False"),
             (['--mid=1'], r"mid=1 in the command line should be True or False"),
             (['--lrs=fast'], r"--lrs=fast should be 'tuned' or comma-separated rates"),
             (['--lrs=-1'], r"rates must be positive"),
             (['--lrs=1e999'], r"--lrs=1e999: rates must be positive, finite"),
             (['--importance=magnitude,weights'], r"--importance=magnitude,weights: use"),
             (['--compression=0.3'], r"--compression is set by compare.py .*--levels"),
             (['--learning_rate=0.1'], r"--learning_rate is set by compare.py .*--lrs"),
             (['--base.out_dir=x'], r"--base\.out_dir .*--base_dir"),
             (['--n_layerz=2'], r"unknown option --n_layerz: neither a compare.py option nor a train.py setting; did you mean --n_layer"),
             (['--base.bogus=1'], r"unknown option --base\.bogus: neither"),
             (['--seed'], r"'--seed' should look like --seed=value"),
             (['--distill_alpha=2.0'], r"distill_alpha=2\.0 must be in \[0, 1\]"),   # before any base trains
             (['--pc_naive=True'], r"pc_naive=True is PC's naive forward; drop it for arm=hpr"),
             (['--proj_dtype=half'], r"proj_dtype='half'"),
             (['--base.dataset=shakespeare_char'], r"pass the dataset to both"),
             ([f'--base={tmp_path / "none.pt"}'], r"--base races from the given checkpoint only"),
             (['oops'], r"'oops' should look like --key=value")]
    for extra, match in cases:
        error_of(compare.main, ok + extra, match=match)
    error_of(compare.main, [f'--base={tmp_path / "none.pt"}'], match=r"--base=.*none\.pt does not exist")
    error_of(compare.main, ['--base=gpt3'], match=r"'gpt3' is no checkpoint .*pretrained name")
    error_of(compare.main, [f'--base={tmp_path}'], match=r"has no model.safetensors: not a model folder")
    (tmp_path / 'pytorch_model.bin').write_bytes(b'')
    error_of(compare.main, [f'--base={tmp_path}'], match=r"has pytorch_model.bin, no model.safetensors: load it")
    assert not (tmp_path / 'base').exists() and not (tmp_path / 'cmp').exists()


def test_compare_reuses_only_finished_runs(tmp_path):
    """A run is reused only if its summary records exactly the asked settings and the ckpt.pt
    beside it is at the summary's last step: a base stopped, or restarted, mid-run is not done."""
    cfg = train.parse_args([f'--out_dir={tmp_path}'])   # a base run
    summary = dict(iters=10, config={**cfg, 'init_from': 'resume'})
    (tmp_path / 'summary.json').write_text(json.dumps(summary))
    torch.save(dict(iter=10), tmp_path / 'ckpt.pt')
    assert compare.finished(cfg) == summary              # how it started is no setting of the run
    torch.save(dict(iter=4), tmp_path / 'ckpt.pt')       # restarted, 4 steps in
    assert compare.finished(cfg) is None
    torch.save(dict(iter=10), tmp_path / 'ckpt.pt')
    assert compare.finished({**cfg, 'seed': 2}) is None  # other settings
    os.remove(tmp_path / 'ckpt.pt')
    assert compare.finished(cfg) is None
    # an arm run counts as done only while its base is the file it was trained from
    base = tmp_path / 'base.pt'
    torch.save(dict(iter=1), base)
    arm = tmp_path / 'arm'
    arm.mkdir()
    acfg = train.parse_args([f'--out_dir={arm}', '--arm=pc', f'--base_ckpt={base}'])
    done = dict(iters=10, config=acfg, base_sha256=checkpoint.base_sha256(str(base)))
    (arm / 'summary.json').write_text(json.dumps(done))
    torch.save(dict(iter=10), arm / 'ckpt.pt')
    assert compare.finished(acfg) == done
    torch.save(dict(iter=2), base)                       # the base trained again
    assert compare.finished(acfg) is None
    os.remove(base)
    assert compare.finished(acfg) is None


def test_compare_never_overwrites(tmp_path, dataset, base_run):
    """Another option puts an arm run in another folder, named after its settings; a base folder
    holding a base of other settings is refused with one line, never retrained over."""
    a = train.parse_args([os.path.join(ROOT, 'config', 'compare_shakespeare_char.py'), '--arm=pc'])
    names = {compare.run_name({**a, **change}, 0.5, 'final', 100, 'pc') for change in
             ({}, {'seed': 2}, {'decay_projections': False}, {'learning_rate': 0.002}, {'importance': 'random'})}
    assert len(names) == 5
    shutil.copytree(base_run['out_dir'], tmp_path / 'base')
    error_of(compare.main, tiny_compare_args(tmp_path, dataset),
             match=r"base holds a base trained with other settings: .* pass --base_dir=")
    assert not (tmp_path / 'cmp').exists()


def test_compare_from_a_given_base_in_child_processes(tmp_path, dataset, base_run):
    """--base races from an existing checkpoint, or a model folder, without training one; --jobs=2
    trains the arms in two child processes (one thread each) and gets the numbers of one process,
    bit for bit."""
    common = [f'--base={base_run["ckpt"]}', f'--dataset={dataset}', '--block_size=16', '--batch_size=4',
              '--eval_iters=2', '--log_interval=1', '--device=cpu', '--budgets=4', '--levels=0.5', '--eval_interval=2',
              '--warmup_iters=1', '--last_steps=2']
    one = compare.main(common + [f'--out_dir={tmp_path / "one"}'])
    two = compare.main(common + [f'--out_dir={tmp_path / "two"}', '--jobs=2'])
    assert sorted(r['base'] for r in one) == ['given', 'given']
    numbers = lambda race: sorted((r['arm'], r['val_loss'], r['train_loss']) for r in race)
    assert numbers(one) == numbers(two)
    assert all(os.path.isfile(os.path.join(r['out_dir'], 'train.log')) for r in two)
    # a model folder (a pretrained GPT-2 or an export) is a base like a checkpoint: the same race
    model, info = checkpoint.load_base(base_run['ckpt'])
    model.save_pretrained(str(tmp_path / 'folder'), tokenizer=info['tokenizer'])
    common[0] = f'--base={tmp_path / "folder"}'
    folder = compare.main(common + [f'--out_dir={tmp_path / "folder_race"}'])
    assert numbers(folder) == numbers(one)
    md = (tmp_path / 'folder_race' / 'compare.md').read_text()   # the folder's size, from its config.json
    assert f"{model.num_params():,} parameters; {model.config.n_layer} layers, n_embd {model.config.n_embd}" in md
    assert all(json.load(open(os.path.join(r['out_dir'], 'summary.json')))['base_sha256'] ==
               checkpoint.base_sha256(str(tmp_path / 'folder')) for r in folder)


def test_compare_continues_a_stopped_run(tmp_path, dataset, base_run, monkeypatch, capsys):
    """An arm run stopped part way (a kill, a lost sitting) is continued from its ckpt.pt, not begun
    again, and ends where an uninterrupted run ends, bit for bit."""
    common = [f'--base={base_run["ckpt"]}', f'--dataset={dataset}', '--block_size=16', '--batch_size=4',
              '--eval_iters=2', '--log_interval=1', '--device=cpu', '--budgets=6', '--levels=0.5', '--eval_interval=2',
              '--warmup_iters=1', '--last_steps=2']
    whole = compare.main(common + [f'--out_dir={tmp_path / "whole"}'])
    real, starts = train.train, []
    monkeypatch.setattr(train, 'train', lambda cfg: (starts.append(cfg['init_from']), real({**cfg, 'stop_iter': 3})))
    with pytest.raises(SystemExit, match='did not finish'):
        compare.main(common + [f'--out_dir={tmp_path / "cut"}'])
    monkeypatch.setattr(train, 'train', lambda cfg: (starts.append(cfg['init_from']), real(cfg)))
    capsys.readouterr()
    cut = compare.main(common + [f'--out_dir={tmp_path / "cut"}'])
    assert starts == ['scratch', 'scratch', 'resume', 'resume']
    assert capsys.readouterr().out.count('(resuming)') == 2
    numbers = lambda race: sorted((r['arm'], r['val_loss'], r['train_loss']) for r in race)
    assert numbers(cut) == numbers(whole)


def test_compare_restarts_a_stopped_run_whose_base_changed(tmp_path, dataset, base_run, monkeypatch, capsys):
    """A stopped arm run whose base has changed since is begun again, not continued on the new base."""
    base = tmp_path / 'base.pt'
    shutil.copy(base_run['ckpt'], base)
    common = [f'--base={base}', f'--dataset={dataset}', '--block_size=16', '--batch_size=4', '--eval_iters=2',
              '--log_interval=1', '--device=cpu', '--budgets=6', '--levels=0.5', '--eval_interval=2',
              '--warmup_iters=1', f'--out_dir={tmp_path / "cut"}']
    real, starts = train.train, []
    monkeypatch.setattr(train, 'train', lambda cfg: (starts.append(cfg['init_from']), real({**cfg, 'stop_iter': 3})))
    with pytest.raises(SystemExit, match='did not finish'):
        compare.main(common)
    ck = torch.load(base, weights_only=True)
    name = next(k for k, v in ck['model'].items() if v.is_floating_point())
    ck['model'][name] = ck['model'][name] + 0.01
    files.save_checked({k: v for k, v in ck.items() if k != 'content_sha256'}, str(base))
    monkeypatch.setattr(train, 'train', lambda cfg: (starts.append(cfg['init_from']), real(cfg)))
    capsys.readouterr()
    compare.main(common)
    assert starts == ['scratch'] * 4 and '(resuming)' not in capsys.readouterr().out


def test_compare_resumable_is_train_rule(tmp_path, dataset, base_run):
    """compare continues a stopped run exactly when train.py would accept the resume: another
    resolved proj_dtype (a PC folder carried to a GPU, say) starts it again; a setting the checkpoint
    records but train.py no longer has does not."""
    out = tmp_path / 'pc'
    cfg = make_cfg(dataset, out, **arm_overrides('pc', base_run))
    train_job({**cfg, 'stop_iter': 3})
    assert compare.resumable(cfg)
    path = str(out / 'ckpt.pt')
    ck = torch.load(path, weights_only=True)
    assert ck['proj_dtype'] == 'float32'
    resave = lambda c: files.save_checked({k: v for k, v in c.items() if k != 'content_sha256'}, path)
    resave({**ck, 'config': {**ck['config'], 'a_removed_setting': 1}})
    assert compare.resumable(cfg)
    resave({**ck, 'proj_dtype': 'bfloat16'})
    assert not compare.resumable(cfg)
    resave({**ck, 'config': {**ck['config'], 'learning_rate': 1.0}})
    assert not compare.resumable(cfg)


def test_compare_child_resume_adds_to_its_log(tmp_path, dataset, base_run):
    """A run continued in a child process (--jobs > 1) appends to its train.log: the log keeps the
    part before the stop."""
    cfg = make_cfg(dataset, tmp_path / 'hpr', **arm_overrides('hpr', base_run), log_interval=1)
    compare.train_in_child({**cfg, 'init_from': 'scratch', 'stop_iter': 3})
    first = (tmp_path / 'hpr' / 'train.log').read_text()
    compare.train_in_child({**cfg, 'init_from': 'resume'})
    log = (tmp_path / 'hpr' / 'train.log').read_text()
    assert 'iter 1:' in first and log.startswith(first) and f"iter {cfg['max_iters']}:" in log[len(first):]


def test_compare_kept_sets(dataset, base_run):
    """With several importances, compare.md says how much of the first one's kept set each keeps."""
    cfg = make_cfg(dataset, 'unused', arm='pc', compression=0.5)
    md = compare.kept_overlap([('final', base_run['ckpt'])], [0.5], ['magnitude', 'activation', 'random'], cfg)
    row = next(l for l in md.splitlines() if l.startswith('| 50% | final |'))
    cells = [c.strip() for c in row.strip('|').split('|')][2:]
    assert cells[0] == '100% / 100%' and len(cells) == 5   # + activation_gelu, and it against activation
    assert all(re.fullmatch(r'\d+% / \d+%', c) for c in cells)


def test_last_steps_loss(tmp_path):
    """The paper's measure averages per-step losses over the last N steps, weighting each log
    record by the steps it covers; a distillation run's is its CE, not its objective."""
    (tmp_path / 'metrics.jsonl').write_text(
        '{"kind": "train", "iter": 2, "loss": 4.0, "steps": 2}\n'
        '{"kind": "eval", "iter": 2, "val_loss": 9.0}\n'
        '{"kind": "train", "iter": 5, "loss": 1.0, "steps": 3}\n')
    assert compare.last_steps_loss(str(tmp_path), 3) == 1.0
    assert compare.last_steps_loss(str(tmp_path), 5) == pytest.approx((2 * 4.0 + 3 * 1.0) / 5)
    # a distillation run: the cross-entropy beside its objective; None where a record lacks it
    (tmp_path / 'metrics.jsonl').write_text(
        '{"kind": "train", "iter": 2, "loss": 4.0, "ce": 6.0, "steps": 2}\n'
        '{"kind": "train", "iter": 5, "loss": 1.0, "ce": 2.0, "steps": 3}\n')
    assert compare.last_steps_loss(str(tmp_path), 5, distilled=True) == pytest.approx((2 * 6.0 + 3 * 2.0) / 5)
    assert compare.last_steps_loss(str(tmp_path), 5) == pytest.approx((2 * 4.0 + 3 * 1.0) / 5)
    (tmp_path / 'metrics.jsonl').write_text('{"kind": "train", "iter": 2, "loss": 4.0, "steps": 2}\n')
    assert compare.last_steps_loss(str(tmp_path), 5, distilled=True) is None


def test_compare_rates():
    """--lrs takes numbers and powers of two; tables name a power of two as such."""
    assert compare.parse_rate('2^-10') == compare.parse_rate('2**-10') == 2 ** -10
    assert compare.parse_rate('0.003') == 0.003
    assert compare.rate_name(2 ** -10) == '2^-10' and compare.rate_name(0.003) == '0.003'


def test_shipped_base_is_the_configs_run():
    """data/shakespeare_char/base is the finished run of config/base_shakespeare_char.py: its summary
    records exactly the config's settings, its checkpoints load (their content hashes hold) at the
    summary's last step and at a quarter of it, and its loss is the last evaluation of its log."""
    shipped = os.path.join(ROOT, 'data', 'shakespeare_char', 'base')
    summary = json.loads(open(os.path.join(shipped, 'summary.json')).read())
    want = train.parse_args([os.path.join(ROOT, 'config', 'base_shakespeare_char.py')])
    assert compare.settings_of(summary['config']) == compare.settings_of(want)
    ckpt = checkpoint.load_checkpoint(os.path.join(shipped, 'ckpt.pt'))
    early = checkpoint.load_checkpoint(os.path.join(shipped, 'ckpt_early.pt'))
    assert ckpt['iter'] == summary['iters'] and early['iter'] == int(0.25 * summary['iters'])
    assert summary['tokens'] == summary['iters'] * 32 * 128 and summary['tokens'] >= 40 * summary['params']
    evals = [json.loads(l) for l in open(os.path.join(shipped, 'metrics.jsonl')) if '"eval"' in l]
    assert evals[-1]['iter'] == summary['iters'] and evals[-1]['val_loss'] == summary['val_loss']
    assert compare.finished({**want, 'out_dir': shipped}) == summary


def test_compare_copies_the_shipped_base(tmp_path, base_run):
    """A fresh clone races from the shipped base: compare.restore_shipped copies the shipped run whole
    into an empty base folder when the settings match, and does nothing otherwise (a folder that holds
    anything, a shipped run of other settings, --shipped_base='')."""
    cfg = json.loads(open(os.path.join(base_run['out_dir'], 'summary.json')).read())['config']
    target = tmp_path / 'base'
    compare.restore_shipped({**cfg, 'out_dir': str(target)}, base_run['out_dir'], 'x.py')
    assert compare.finished({**cfg, 'out_dir': str(target)}) is not None
    for name in os.listdir(base_run['out_dir']):
        assert (target / name).read_bytes() == open(os.path.join(base_run['out_dir'], name), 'rb').read()
    assert not glob.glob(str(tmp_path / '*.tmpdir'))
    held = tmp_path / 'held'
    held.mkdir()
    (held / 'note').write_text('mine')
    compare.restore_shipped({**cfg, 'out_dir': str(held)}, base_run['out_dir'], 'x.py')
    assert os.listdir(held) == ['note']
    for other, shipped in (({**cfg, 'n_embd': cfg['n_embd'] * 2}, base_run['out_dir']), (cfg, '')):
        compare.restore_shipped({**other, 'out_dir': str(tmp_path / 'none')}, shipped, 'x.py')
        assert not (tmp_path / 'none').exists()


# ------------------------------------------------------------------------------------ scans.py

def tiny_scan(tmp_path, monkeypatch, arms=('hpr', 'pc')):
    """scans.py on two tiny bases (one half the other's width), 4-step arm runs."""
    ds = write_dataset(tmp_path / 'ds')
    both = (f"dataset = {str(ds)!r}\nblock_size = 16\nbatch_size = 4\neval_iters = 2\nlog_interval = 1\n"
            f"device = 'cpu'\n")
    (tmp_path / 'base.py').write_text(
        both + f"arm = 'base'\nout_dir = {str(tmp_path / 'bases' / 'base_a')!r}\nn_layer = 1\nn_head = 2\n"
        "n_embd = 32\nmax_iters = 12\nwarmup_iters = 1\neval_interval = 6\n")
    (tmp_path / 'arms.py').write_text(both + "warmup_iters = 1\neval_interval = 2\nlearning_rate = 2 ** -6\n"
                                             "min_lr = learning_rate / 10\n")
    monkeypatch.setattr(scans, 'BASES', dict(a=[], b=['--n_embd=16']))
    monkeypatch.setattr(scans, 'DEFAULT_BASE', 'a')
    spec = dict(bases=['b', 'a'], budgets=[4], arms=list(arms))
    monkeypatch.setattr(scans, 'CLAIMS', dict(size=spec, quality=spec))
    monkeypatch.setattr(scans, 'MAX_WIDEN', 1)
    return [f'--base_config={tmp_path / "base.py"}', f'--arm_config={tmp_path / "arms.py"}',
            f'--out_dir={tmp_path / "scans"}', '--claim=size', '--levels=0.5', '--jobs=1',
            f'--ledger={tmp_path / "ledger.json"}']


def run_summaries(folder):
    """Every finished run under folder: its summary.json, read here apart from scans.py."""
    return [json.loads(open(p).read()) for p in glob.glob(os.path.join(folder, 'runs', '*', 'summary.json'))]


def test_scans_sweep_seeds_and_tables(tmp_path, monkeypatch):
    """Each cell sweeps its arm on the first seed over the prior rate, half and twice it, widens
    while the best is at an edge (up to MAX_WIDEN rates), runs the other seeds at the chosen rate
    only, and its table's cells are those runs: each arm's mean ± sd and PC - HPR paired by seed,
    recomputed here from the runs' own summary.json."""
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5,6,7']
    cells = scans.main(args)
    runs = run_summaries(tmp_path / 'scans')
    assert len(cells) == 4
    for c in cells:
        mine = [r for r in runs if r['config']['arm'] == c['arm'] and r['config']['base_ckpt'] == c['base_path']]
        sweep = {r['config']['learning_rate']: r['val_loss'] for r in mine if r['config']['seed'] == 5}
        rates = sorted(sweep)
        assert {2 ** -7, 2 ** -6, 2 ** -5} <= set(rates) and all(b / a == 2 for a, b in zip(rates, rates[1:]))
        best = min(sweep, key=sweep.get)
        assert c['lr'] == best
        assert best not in (rates[0], rates[-1]) or len(rates) == 3 + scans.MAX_WIDEN   # widened while at an edge
        others = [r for r in mine if r['config']['seed'] != 5]
        assert sorted(r['config']['seed'] for r in others) == [6, 7]
        assert all(r['config']['learning_rate'] == best and r['config']['min_lr'] == best / 10 for r in others)
    md = (tmp_path / 'scans' / 'size.md').read_text()
    for base in ('a', 'b'):
        val = {}
        for arm in ('hpr', 'pc'):
            c = next(c for c in cells if (c['base'], c['arm']) == (base, arm))
            val[arm] = {r['config']['seed']: r['val_loss'] for r in runs if r['config']['arm'] == arm
                        and r['config']['base_ckpt'] == c['base_path'] and r['config']['learning_rate'] == c['lr']}
            assert sorted(val[arm]) == [5, 6, 7]
            v = list(val[arm].values())
            assert f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f} (3)" in md
        d = [val['pc'][s] - val['hpr'][s] for s in (5, 6, 7)]
        assert f"| {base} | 50% | 4 | PC - HPR | {np.mean(d):+.4f} ± {np.std(d, ddof=1):.4f} | " \
               f"{np.std(d, ddof=1) / math.sqrt(3):.4f} |" in md
    info = json.loads((tmp_path / 'scans' / 'size.json').read_text())['bases']
    assert info['b']['params'] < info['a']['params'] and info['a']['tokens'] == 12 * 64
    assert (tmp_path / 'scans' / 'size.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    n = len(runs)
    assert scans.main([a for a in args if a != '--claim=size'] + ['--claim=quality']) == cells   # the same runs, trained once
    assert len(run_summaries(tmp_path / 'scans')) == n
    assert (tmp_path / 'scans' / 'quality.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_scans_ledger_stands_in_for_lost_runs(tmp_path, monkeypatch):
    """docs/scan_runs.json's promise: a machine without out/ takes each finished run from the ledger
    (same cells, same table, nothing trained), the entries hold what the runs' own summary.json and
    logs said, and an entry whose settings or base differ is not taken: that run trains again (and an
    entry from another base is not overwritten by it)."""
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5,6', '--bases=a']
    cells = scans.main(args)
    runs = {os.path.basename(r['out_dir']): r for r in run_summaries(tmp_path / 'scans')}
    entries = json.loads((tmp_path / 'ledger.json').read_text())
    assert sorted(entries) == sorted(runs)
    for name, r in runs.items():
        e = entries[name]
        assert (e['val_loss'], e['seed'], e['lr']) == (r['val_loss'], r['config']['seed'], r['config']['learning_rate'])
        assert e['train_loss'] == pytest.approx(np.mean([x['loss'] for x in compare.records(r['out_dir'], 'train')]))
        assert e['base_sha256'] == r['base_sha256']
    md = (tmp_path / 'scans' / 'size.md').read_text()
    assert f"The arm runs trained on: {scans.this_machine()} ({len(runs)})." in md   # every run, counted once
    shutil.rmtree(tmp_path / 'scans' / 'runs')            # out/ lost: a fresh clone with the ledger
    assert scans.main(args) == cells
    assert not os.path.isdir(tmp_path / 'scans' / 'runs') or not run_summaries(tmp_path / 'scans')   # nothing trained
    assert (tmp_path / 'scans' / 'size.md').read_text() == md
    assert json.loads((tmp_path / 'ledger.json').read_text()) == entries
    # an entry made with other settings, or from another base, is not taken: that run trains again
    pc = next(c for c in cells if c['arm'] == 'pc')['seeds'][1]
    hpr = next(c for c in cells if c['arm'] == 'hpr')['seeds'][1]
    entries[os.path.basename(pc['out_dir'])]['settings_sha256'] = '0' * 64
    entries[os.path.basename(hpr['out_dir'])].update(base_sha256='0' * 64, base_weights_sha256='0' * 64)
    (tmp_path / 'ledger.json').write_text(json.dumps(entries))
    val = lambda cs: [[r['val_loss'] for r in c['seeds']] for c in cs]
    assert val(scans.main(args)) == val(cells)
    assert sorted(r['out_dir'] for r in run_summaries(tmp_path / 'scans')) == sorted([pc['out_dir'], hpr['out_dir']])
    # the entry from another base stays (a committed table's run), the one of other settings is replaced
    after = json.loads((tmp_path / 'ledger.json').read_text())
    assert after[os.path.basename(hpr['out_dir'])] == entries[os.path.basename(hpr['out_dir'])]
    assert after[os.path.basename(pc['out_dir'])]['settings_sha256'] != '0' * 64
    assert {k: v for k, v in after.items() if k != os.path.basename(pc['out_dir'])} == \
        {k: v for k, v in entries.items() if k != os.path.basename(pc['out_dir'])}
    (tmp_path / 'ledger.json').write_text('{"half')
    with pytest.raises(SystemExit, match='ledger.json is not valid JSON'):
        scans.main(args)
    (tmp_path / 'ledger.json').write_text('[]')
    with pytest.raises(SystemExit, match='ledger.json is not a JSON object of runs'):
        scans.main(args)



def test_scans_from_ledger_trains_nothing_on_any_machine(tmp_path, monkeypatch):
    """--from_ledger=True: with no base and no run folder here (another machine, whose bases would
    train to other weights), the claim's table and figure come from the ledger and the bases'
    descriptions beside it, the same as the scan that trained them; a run or a base not there, or an
    entry from other base weights, is one error line; a base's description is never overwritten."""
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5,6']
    cells = scans.main(args)
    md = (tmp_path / 'scans' / 'size.md').read_text()
    bases = json.loads((tmp_path / 'scan_bases.json').read_text())
    for name in ('a', 'b'):             # each base as its own summary.json says, with its weights hash
        summary = json.load(open(tmp_path / 'bases' / f'base_{name}' / 'summary.json'))
        ckpt = str(tmp_path / 'bases' / f'base_{name}' / 'ckpt.pt')
        assert (bases[name]['params'], bases[name]['tokens'], bases[name]['val_loss']) == \
            (summary['params'], summary['tokens'], summary['val_loss'])
        assert bases[name]['base_weights_sha256'] == scans.base_weights_sha256(ckpt)
        assert bases[name]['machine'] == scans.this_machine()
    # the table's hours: every arm run's and base's logged steps (ms_per_iter x steps), read here
    def logged_seconds(folder):
        rows = [json.loads(line) for line in open(os.path.join(folder, 'metrics.jsonl'))]
        return sum(r['ms_per_iter'] * r['steps'] for r in rows if r['kind'] == 'train') / 1e3
    for name in ('a', 'b'):
        assert bases[name]['train_seconds'] == pytest.approx(logged_seconds(tmp_path / 'bases' / f'base_{name}'))
    # a base that is the shipped one is recorded as such, not as this machine's
    monkeypatch.setattr(compare, 'shipped_base', str(tmp_path / 'bases' / 'base_a'))
    os.remove(tmp_path / 'scan_bases.json')
    assert scans.main(args) == cells
    assert json.loads((tmp_path / 'scan_bases.json').read_text())['a']['machine'] == 'shipped with the repository'
    (tmp_path / 'scan_bases.json').write_text(json.dumps(bases))
    shutil.rmtree(tmp_path / 'bases')
    shutil.rmtree(tmp_path / 'scans')

    def no_training(*a, **k):
        raise AssertionError('--from_ledger trained something')
    monkeypatch.setattr(train, 'train', no_training)
    monkeypatch.setattr(compare, 'train_in_child', no_training)
    assert scans.main(args + ['--from_ledger=True']) == cells
    assert (tmp_path / 'scans' / 'size.md').read_text() == md and (tmp_path / 'scans' / 'size.png').is_file()
    assert not (tmp_path / 'bases').exists()
    ledger = json.loads((tmp_path / 'ledger.json').read_text())
    # the table's hours are every arm run's training time and every base's (here made whole hours)
    runs_used = {r['out_dir'] for c in cells for r in c['seeds'] + c['sweep_runs']}
    (tmp_path / 'ledger.json').write_text(json.dumps({k: {**e, 'train_seconds': 360.0} for k, e in ledger.items()}))
    (tmp_path / 'scan_bases.json').write_text(json.dumps({k: {**b, 'train_seconds': 7200.0} for k, b in bases.items()}))
    scans.main(args + ['--from_ledger=True'])
    assert f"{len(runs_used)} arm runs and 2 bases, {(2 * 7200 + 360 * len(runs_used)) / 3600:.2f} hours" in \
        (tmp_path / 'scans' / 'size.md').read_text()
    (tmp_path / 'ledger.json').write_text(json.dumps(ledger))
    (tmp_path / 'scan_bases.json').write_text(json.dumps(bases))
    name = os.path.basename(cells[-1]['seeds'][-1]['out_dir'])
    seed = cells[-1]['seeds'][-1]['seed']   # the error names the run by what it is, its seed too
    match = re.escape(f"run {name} (") + rf".*seed {seed}\) is not in"
    for broken in ({k: v for k, v in ledger.items() if k != name},
                   {**ledger, name: {**ledger[name], 'base_weights_sha256': '0' * 64}}):
        (tmp_path / 'ledger.json').write_text(json.dumps(broken))
        with pytest.raises(SystemExit, match=match):
            scans.main(args + ['--from_ledger=True'])
    (tmp_path / 'ledger.json').write_text(json.dumps(ledger))
    (tmp_path / 'scan_bases.json').write_text(json.dumps({'a': bases['a']}))
    with pytest.raises(SystemExit, match=r"base b is not in .*scan_bases.json; run the scan without --from_ledger"):
        scans.main(args + ['--from_ledger=True'])
    for bad in ('', str(tmp_path / 'missing.json'), str(tmp_path)):
        with pytest.raises(SystemExit, match="--from_ledger=True reads the ledger, and --ledger=.* is no file"):
            scans.main(args + ['--from_ledger=True', f'--ledger={bad}'])
    # a base trained again with other weights: its description stays as it was
    (tmp_path / 'scan_bases.json').write_text(json.dumps({'a': {**bases['a'], 'base_weights_sha256': '0' * 64}}))
    monkeypatch.undo()
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5', '--bases=a', '--arms=hpr']
    scans.main(args)
    after = json.loads((tmp_path / 'scan_bases.json').read_text())
    assert after['a']['base_weights_sha256'] == '0' * 64 and after['a']['params'] == bases['a']['params']

def test_scans_ledger_takes_runs_of_a_base_trained_again(tmp_path, monkeypatch):
    """A machine without out/ trains the scans' bases again (only the default base ships): the new
    checkpoint holds the same weights bit for bit but is another file (each save has its own id), and
    the ledger's runs from that base are still taken, nothing trained; a base of other weights is not."""
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5,6', '--bases=b']
    cells = scans.main(args)
    base = cells[0]['base_path']
    before = (checkpoint.base_sha256(base), scans.base_weights_sha256(base))
    shutil.rmtree(tmp_path / 'scans' / 'runs')
    shutil.rmtree(os.path.dirname(base))          # out/ lost: the base trains again
    scans._weights_sha.clear()
    assert scans.main(args) == cells
    assert checkpoint.base_sha256(base) != before[0] and scans.base_weights_sha256(base) == before[1]
    assert not run_summaries(tmp_path / 'scans')   # every arm run from the ledger
    entries = json.loads((tmp_path / 'ledger.json').read_text())
    for e in entries.values():                     # now of another base
        e['base_weights_sha256'] = '0' * 64
    (tmp_path / 'ledger.json').write_text(json.dumps(entries))
    shutil.rmtree(os.path.dirname(base))
    scans._weights_sha.clear()
    scans.main(args)
    assert len(run_summaries(tmp_path / 'scans')) == sum(len(c['seeds']) + len(c['sweep']) - 1 for c in cells)
    ck = torch.load(base, weights_only=True)       # the hash is of the weights: one changed weight changes it
    name = sorted(ck['model'])[-1]
    ck['model'][name] = ck['model'][name].clone()
    ck['model'][name].view(-1)[0] += 1.0
    torch.save(ck, tmp_path / 'other.pt')
    assert scans.base_weights_sha256(str(tmp_path / 'other.pt')) != scans.base_weights_sha256(base)

def test_scans_ledger_keeps_each_run_as_it_ends(tmp_path, monkeypatch):
    """A run's entry is written when that run ends, not when its batch does: a run that fails (or a
    kill) loses none of the runs that finished before it."""
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5', '--bases=a', '--arms=hpr']
    real, trained = train.train, []

    def third_fails(cfg):          # the base trains first, through train.train too
        if cfg['arm'] != 'base' and len(trained) == 2:
            raise SystemExit('error: stopped on purpose')
        real(cfg)
        if cfg['arm'] != 'base':
            trained.append(cfg['out_dir'])
    monkeypatch.setattr(train, 'train', third_fails)
    with pytest.raises(SystemExit, match='stopped on purpose'):
        scans.main(args)           # the sweep's batch: three rates, the third fails
    entries = json.loads((tmp_path / 'ledger.json').read_text())
    assert sorted(entries) == sorted(os.path.basename(d) for d in trained) and len(trained) == 2
    for d in trained:
        assert entries[os.path.basename(d)]['val_loss'] == json.loads(open(os.path.join(d, 'summary.json')).read())['val_loss']


def test_scans_run_that_stops_short_is_one_line(tmp_path, monkeypatch):
    """An arm run that ends before its last step (a stop_iter) gives the one 'did not finish' line,
    and the ledger takes nothing for it."""
    args = tiny_scan(tmp_path, monkeypatch) + ['--seeds=5', '--bases=a', '--arms=hpr']
    real = train.train
    monkeypatch.setattr(train, 'train', lambda cfg: real(cfg if cfg['arm'] == 'base' else {**cfg, 'stop_iter': 1}))
    with pytest.raises(SystemExit, match='did not finish'):
        scans.main(args)
    assert not (tmp_path / 'ledger.json').exists()


def test_scans_verdict_is_two_standard_errors():
    """A lead only when the mean paired difference is beyond twice its standard error."""
    assert scans.verdict([-0.030, -0.025, -0.040]) == 'PC leads'
    assert scans.verdict([0.030, 0.025, 0.040]) == 'HPR leads'
    d = [-0.01, 0.012, -0.004]                  # mean -0.0007, SE 0.0065: noise
    assert scans.verdict(d) == 'noise'
    m, sd, se = scans.spread([1.0, 2.0, 4.0])
    assert (m, sd, se) == pytest.approx((7 / 3, math.sqrt(7 / 3), math.sqrt(7 / 3) / math.sqrt(3)))
    # exactly at 2 SE is not a lead: mean 1, sd 2*sqrt(... ) chosen so that |mean| == 2 SE
    x = [1 - math.sqrt(1.5), 1, 1 + math.sqrt(1.5)]   # sd sqrt(1.5), SE sqrt(0.5); 2 SE = 1.414 > 1
    assert scans.verdict(x) == 'noise'
    assert scans.verdict([-0.03]) == 'one seed'
    d = [-0.01, -0.03, -0.05]                   # mean -0.03: beyond 2 SE (0.023), within 2 sd (0.04)
    assert scans.verdict(d) == 'PC leads'
    # differences pair the runs of one seed (the same data order), and only seeds both arms have
    cell = dict(seeds=[dict(seed=1, v=1.0), dict(seed=2, v=3.0), dict(seed=9, v=0.0)])
    other = dict(seeds=[dict(seed=2, v=1.5), dict(seed=1, v=2.5)])
    assert scans.paired(cell, other, 'v') == [-1.5, 1.5]


def test_semantic_faults_match_the_code():
    """Every hand-written fault of mutate.SEMANTIC still names code that occurs exactly once (a stale
    one would stop `mutate.py --semantic=True` with an error line)."""
    assert len(mutate.semantic_candidates()) == len(mutate.SEMANTIC)


def test_scans_recipes_figure_holds_every_bar(tmp_path, monkeypatch):
    """The recipes figure (a symlog axis, whose autoscale cuts error bars) shows every seed's
    difference and every mean ± 2 standard errors, a large one (+0.3) beside small ones (-0.015)."""
    import matplotlib.pyplot as plt
    diffs = dict(scratch=[0.20, 0.31, 0.45], hpr_kd=[-0.0150, -0.0146, -0.0153], pc_kd=[-0.020, -0.012, -0.019])
    cells = []
    for lvl in (0.5, 0.9):
        hpr = dict(arm='hpr', base='a', level=lvl, iters=4, seeds=[dict(seed=s, val_loss=1.6) for s in (1, 2, 3)])
        cells.append(hpr)
        cells += [dict(hpr, arm=arm, seeds=[dict(seed=s, val_loss=1.6 + d) for s, d in zip((1, 2, 3), ds)])
                  for arm, ds in diffs.items()]
    monkeypatch.setattr(plt, 'close', lambda fig: None)
    scans.plot(dict(claim='recipes', out_dir=str(tmp_path)), cells, {})
    lo, hi = plt.gcf().axes[0].get_ylim()
    for ds in diffs.values():
        m, se = np.mean(ds), np.std(ds, ddof=1) / math.sqrt(len(ds))
        assert lo < min(min(ds), m - 2 * se) and max(max(ds), m + 2 * se) < hi, (lo, hi, ds)
    plt.close('all')


def test_scans_recipes_arms(tmp_path, monkeypatch):
    """The recipes: from scratch trains HPR's shapes from random initialisation (not the pruned
    base), and the distillation arms are HPR and PC with distill_alpha, each at its own rate."""
    args = tiny_scan(tmp_path, monkeypatch, arms=('hpr', 'scratch', 'hpr_kd')) + ['--seeds=5', '--bases=a',
                                                                                  '--kd_alpha=0.25']
    cells = scans.main(args)
    runs = run_summaries(tmp_path / 'scans')
    by = lambda arm, alpha: [r for r in runs if r['config']['arm'] == arm and r['config']['distill_alpha'] == alpha]
    assert by('scratch', 0.0) and by('hpr', 0.25) and by('hpr', 0.0)
    hpr, scratch = by('hpr', 0.0)[0], by('scratch', 0.0)[0]
    assert hpr['model_args'] == scratch['model_args'] and hpr['params'] == scratch['params']
    first = lambda r: compare.records(r['out_dir'], 'eval')[0]['val_loss']
    assert abs(first(scratch) - math.log(VOCAB)) < 0.05   # random init: about uniform over the vocabulary
    assert first(hpr) < first(scratch) - 0.05            # the pruned base starts below it
    md = (tmp_path / 'scans' / 'size.md').read_text()
    assert '| a | 50% | 4 | SCRATCH - HPR |' in md and '| a | 50% | 4 | HPR_KD - HPR |' in md
    # a KD arm's paper's-measure cells are its training CE (not its objective), against HPR's
    kd_run = next(c for c in cells if c['arm'] == 'hpr_kd')['seeds'][0]['out_dir']   # the row's run
    logged = compare.records(kd_run, 'train')   # (fewer than 100 steps: the mean over all of them)
    mean = lambda key: sum(r[key] * r['steps'] for r in logged) / sum(r['steps'] for r in logged)
    kd_row = next(line for line in md.splitlines() if '| hpr_kd |' in line)
    assert kd_row.endswith(f"| {mean('ce'):.4f} ± 0.0000 (1) |") and f"{mean('loss'):.4f}" not in kd_row, kd_row
    hpr_run = next(c for c in cells if c['arm'] == 'hpr')['seeds'][0]['out_dir']
    pair = [x.strip() for x in next(line for line in md.splitlines() if '| HPR_KD - HPR |' in line).split('|')[1:-1]]
    assert pair[7] == f"{mean('ce') - compare.last_steps_loss(hpr_run, 100):+.4f} ± 0.0000", pair
    # a KD run from before train.py logged CE: its cells say so instead of showing the objective
    path = os.path.join(kd_run, 'metrics.jsonl')
    old = [json.loads(line) for line in open(path)]
    with open(path, 'w') as f:
        f.writelines(json.dumps({k: v for k, v in r.items() if k != 'ce'}) + '\n' for r in old)
    scans.main(args)
    md = (tmp_path / 'scans' / 'size.md').read_text()
    cells_ = [x.strip() for x in next(line for line in md.splitlines() if '| HPR_KD - HPR |' in line).split('|')[1:-1]]
    assert cells_[4:7] != ['', '', ''] and cells_[7].startswith('not logged') and cells_[8:] == ['', '']
    assert [c['arm'] for c in cells] == ['hpr', 'scratch', 'hpr_kd']



def scan_from_ledger(tmp_path, monkeypatch, *args):
    """scans.main(args) in tmp_path (the repository's config/ and data/, an out/ of its own) on a
    copy of docs/scan_runs.json; any run it would have to train fails the test."""
    root = os.path.dirname(os.path.abspath(__file__))
    for name in ('config', 'data'):
        os.symlink(os.path.join(root, name), tmp_path / name)
    shutil.copy(os.path.join(root, 'docs', 'scan_runs.json'), tmp_path / 'ledger.json')   # never written to
    monkeypatch.chdir(tmp_path)

    def no_training(*a, **k):
        raise AssertionError("a run of the docs' table is not in docs/scan_runs.json")
    monkeypatch.setattr(train, 'train', no_training)
    monkeypatch.setattr(compare, 'train_in_child', no_training)
    return scans.main(list(args) + ['--jobs=1', f'--ledger={tmp_path / "ledger.json"}'])


def test_docs_claim_tokens_table_is_the_ledgers(tmp_path, monkeypatch):
    """docs/experiments.md's promise for claim (3): its table is what `python scans.py --claim=tokens`
    makes from the runs in docs/scan_runs.json, which a fresh clone takes from there without training
    any. Each cell (each arm's mean ± sd @ rate, PC - HPR paired by seed with its SE, the verdicts on
    both measures) is recomputed here from the seeds' results, and the README's figures with them."""
    root = os.path.dirname(os.path.abspath(__file__))
    cells = scan_from_ledger(tmp_path, monkeypatch, '--claim=tokens')
    docs = open(os.path.join(root, 'docs', 'experiments.md')).read()
    section = docs[docs.index('### Claim (3)'):]
    rows = {tuple(r.split('|')[1:3]): [x.strip() for x in r.split('|')[1:-1]]
            for r in section.splitlines() if re.match(r'\| (50|90)% \| [0-9,]+ \|', r)}
    sd = lambda v: np.std(v, ddof=1)
    rate = lambda c: f"2^{round(math.log2(c['lr']))}" + ('' if c['swept'] else ' (config)')
    lead = lambda d: 'noise' if abs(np.mean(d)) <= 2 * sd(d) / math.sqrt(len(d)) else (
        'PC leads' if np.mean(d) < 0 else 'HPR leads')
    seen = set()
    for c in cells:
        if c['arm'] != 'pc':
            continue
        h = next(x for x in cells if (x['level'], x['iters'], x['arm']) == (c['level'], c['iters'], 'hpr'))
        assert [r['seed'] for r in c['seeds']] == [r['seed'] for r in h['seeds']] == [1337, 2, 3]
        row = rows[(f" {c['level']:.0%} ", f" {c['iters']:,} ")]
        hv, pv = ([r['val_loss'] for r in x['seeds']] for x in (h, c))
        assert row[3] == f"{np.mean(hv):.4f} ± {sd(hv):.4f} @ {rate(h)}", row
        assert row[4] == f"{np.mean(pv):.4f} ± {sd(pv):.4f} @ {rate(c)}", row
        for col, key in ((5, 'val_loss'), (7, 'train_loss')):
            d = [p[key] - q[key] for p, q in zip(c['seeds'], h['seeds'])]
            assert row[col] == f"{np.mean(d):+.4f} ± {sd(d):.4f} ({sd(d) / math.sqrt(3):.4f})", row
            assert row[col + 1] == lead(d), row
        seen.add((c['level'], c['iters']))
    assert len(seen) == len(rows) == 10
    # the README's claim (3): PC - HPR at 50%, 8.2M and 16.4M tokens, and the lead in standard errors
    readme = open(os.path.join(root, 'README.md')).read()
    item = readme[readme.index("3. *PC's lead grows with the retraining tokens*"):]
    d = {c['iters']: [p['val_loss'] - q['val_loss'] for p, q in zip(c['seeds'], next(
        x for x in cells if (x['level'], x['iters'], x['arm']) == (0.5, c['iters'], 'hpr'))['seeds'])]
        for c in cells if c['arm'] == 'pc' and c['level'] == 0.5}
    assert f"level to {np.mean(d[2000]):+.4f} at" in item.replace('\n   ', ' ')
    assert f"**{np.mean(d[4000]):+.4f} ± {sd(d[4000]):.4f}** at 16.4M (PC ahead by " \
           f"{abs(np.mean(d[4000])) / (sd(d[4000]) / math.sqrt(3)):.0f} standard errors)" in item.replace('\n   ', ' ')


def test_docs_claims_quality_and_size_tables_are_the_ledgers(tmp_path, monkeypatch):
    """docs/experiments.md's claims (1) and (2) tables are their runs in docs/scan_runs.json (their
    bases do not ship, so this reads the ledger's entries directly rather than running scans.py):
    each row's rate is the best its seed-1337 sweep tried ('(edge)' when that is the widest), and each
    arm's mean ± sd and PC - HPR paired by seed, with its SE and verdict, are recomputed from the
    entries at that rate; the README's standard-error counts for claim (1) with them. And both
    claims redraw with --from_ledger=True (every run and base of theirs is in docs/)."""
    root = os.path.dirname(os.path.abspath(__file__))
    ledger = json.load(open(os.path.join(root, 'docs', 'scan_runs.json')))
    docs = open(os.path.join(root, 'docs', 'experiments.md')).read()
    sd = lambda v: np.std(v, ddof=1)
    lead = lambda d: 'noise' if abs(np.mean(d)) <= 2 * sd(d) / math.sqrt(len(d)) else (
        'PC leads' if np.mean(d) < 0 else 'HPR leads')
    pair = lambda d: f"{np.mean(d):+.4f} ± {sd(d):.4f} ({sd(d) / math.sqrt(len(d)):.4f})"

    def runs(base, level, arm):   # {lr: {seed: entry}} of this cell's 1,000-step runs
        out = {}
        for name, e in ledger.items():
            if name.startswith(f"c{level}_{base}_1000_{arm}_magnitude_lr"):
                out.setdefault(e['lr'], {})[e['seed']] = e
        return out

    def check(section, n_rows, arm_cells):
        rows = [[x.strip() for x in r.split('|')[1:-1]] for r in section.splitlines() if re.match(r'\| e(48|96|144)_', r)]
        assert len(rows) == n_rows
        seen = {}
        for row in rows:
            base, level = row[0].replace(' (default)', ''), int(row[4].rstrip('%'))
            at = {}
            for arm, cell in zip(('hpr', 'pc'), arm_cells(row)):
                cell_runs = runs(base, level, arm)
                rate = re.search(r'2\^(-[0-9]+)', cell).group(1) if cell else None
                sweep = {lr: r[1337]['val_loss'] for lr, r in cell_runs.items() if 1337 in r}
                best = min(sweep, key=sweep.get)
                if rate is not None:
                    assert 2.0 ** int(rate) == best or '(config)' in cell, (row, sweep)
                    assert ('(edge)' in cell) == ('(config)' not in cell and best in (min(sweep), max(sweep))), row
                at[arm] = [cell_runs[best][s] for s in (1337, 2, 3)]
                if cell:
                    v = [e['val_loss'] for e in at[arm]]
                    assert cell.startswith(f"{np.mean(v):.4f} ± {sd(v):.4f} @ "), row
            for key, col in (('val_loss', -4), ('train_loss', -2)):
                d = [p[key] - h[key] for p, h in zip(at['pc'], at['hpr'])]
                assert row[col] == pair(d) and row[col + 1] == lead(d), row
            d = [p['val_loss'] - h['val_loss'] for p, h in zip(at['pc'], at['hpr'])]
            seen[(base, level)] = abs(np.mean(d)) / (sd(d) / math.sqrt(3))
        return seen

    # and the README's promise: each of these claims redraws from docs/ alone, training nothing
    monkeypatch.chdir(root)
    monkeypatch.setattr(train, 'train', lambda *a, **k: pytest.fail('--from_ledger trained a run'))
    monkeypatch.setattr(compare, 'train_in_child', lambda *a, **k: pytest.fail('--from_ledger trained a run'))
    for claim in ('quality', 'size'):
        scans.main([f'--claim={claim}', '--from_ledger=True', f'--out_dir={tmp_path}', '--jobs=1',
                    f"--ledger={os.path.join(root, 'docs', 'scan_runs.json')}"])
        assert (tmp_path / f'{claim}.png').is_file()
    quality = docs[docs.index('### Claim (1)'):docs.index('### Claim (2)')]
    se = check(quality, 10, lambda row: row[5:7])
    size = check(docs[docs.index('### Claim (2)'):docs.index('### The recipes')], 6, lambda row: ('', ''))
    readme = open(os.path.join(root, 'README.md')).read()
    item = readme[readme.index("1. *PC's lead grows"):readme.index("2. *PC's lead grows")].replace('\n   ', ' ')
    assert f"(PC ahead by {se[('e48_t14m', 50)]:.1f} standard errors)" in item
    assert f"(HPR ahead by {se[('e96_tpp160', 50)]:.1f} standard errors)" in item
    item = readme[readme.index("2. *PC's lead grows"):readme.index("3. *PC's lead grows")].replace('\n   ', ' ')
    assert f"at 90% (HPR ahead by {size[('e144_tpp40', 90)]:.1f} standard errors)" in item
    assert f"at 50% (HPR ahead by {size[('e144_tpp40', 50)]:.1f})" in item


def test_docs_recipes_tables_are_the_ledgers(tmp_path, monkeypatch):
    """docs/experiments.md's recipes tables (from scratch; distillation at 50% and at 90%) are what
    `python scans.py --claim=recipes` makes from docs/scan_runs.json, training nothing on a fresh
    clone: every arm's mean ± sd (and rate), each arm - HPR paired by seed with its SE and verdict on
    both measures, the sweeps the prose lists, and PC + KD - HPR + KD, recomputed from the seeds; and
    the README's figures for the recipes."""
    root = os.path.dirname(os.path.abspath(__file__))
    cells = scan_from_ledger(tmp_path, monkeypatch, '--claim=recipes')
    docs = open(os.path.join(root, 'docs', 'experiments.md')).read().replace('**', '')
    scratch_part = docs[docs.index('### The recipes: is compressing'):docs.index('### The recipes: distillation')]
    kd_part = docs[docs.index('### The recipes: distillation'):docs.index('### Claim (3)')]
    sd = lambda v: np.std(v, ddof=1)
    names = dict(hpr='HPR', pc='PC', scratch='scratch', hpr_kd='HPR + KD', pc_kd='PC + KD')
    cell = lambda level, arm: next(c for c in cells if (c['level'], c['arm']) == (level, arm))
    vals = lambda c, key='val_loss': [r[key] for r in c['seeds']]
    mean_sd = lambda v: f"{np.mean(v):.4f} ± {sd(v):.4f}"

    def diff(c, other, key='val_loss'):
        assert [r['seed'] for r in c['seeds']] == [r['seed'] for r in other['seeds']] == [1337, 2, 3]
        return [p[key] - q[key] for p, q in zip(c['seeds'], other['seeds'])]

    def pair(d, names_):   # the cell and its verdict: a lead only beyond two standard errors
        se = sd(d) / math.sqrt(len(d))
        word = 'noise' if abs(np.mean(d)) <= 2 * se else f"{names_[0] if np.mean(d) < 0 else names_[1]} leads"
        return [f"{np.mean(d):+.4f} ± {sd(d):.4f} ({se:.4f})", word]

    # a sweep as the prose lists it, the chosen (best) rate in bold: looked for in the unstripped text
    sweep = lambda c: ', '.join(f"2^{round(math.log2(r))}: " + (f"**{v:.4f}**" if r == c['lr'] else f"{v:.4f}")
                                for r, v in sorted(c['sweep'].items()))
    flat = lambda text: ' '.join(text.split())
    raw = flat(open(os.path.join(root, 'docs', 'experiments.md')).read())
    # from scratch: one row per level
    rows = {r.split('|')[1].strip(): [x.strip() for x in r.split('|')[1:-1]]
            for r in scratch_part.splitlines() if re.match(r'\| (50|90)% \|', r)}
    assert sorted(rows) == ['50%', '90%']
    for level in (0.5, 0.9):
        row, h, p, s = rows[f"{level:.0%}"], cell(level, 'hpr'), cell(level, 'pc'), cell(level, 'scratch')
        assert not h['swept'] and not p['swept'] and s['swept'] and not s['at_edge']
        assert row[1:4] == [mean_sd(vals(h)), mean_sd(vals(p)), f"{mean_sd(vals(s))} @ 2^{round(math.log2(s['lr']))}"], row
        assert row[4:6] == pair(diff(p, h), ('PC', 'HPR')) and row[6:8] == pair(diff(s, h), ('scratch', 'HPR')), row
        assert f"at {level:.0%} {sweep(s)}" in raw, sweep(s)
    # distillation: a table per level, each arm - HPR on held-out loss and on the paper's measure
    part = {0.5: kd_part[:kd_part.index('At 90%')], 0.9: kd_part[kd_part.index('At 90%'):]}
    for level, text in part.items():
        rows = {r.split('|')[1].strip(): [x.strip() for x in r.split('|')[1:-1]]
                for r in text.splitlines() if re.match(r'\| (HPR|PC)( \+ KD)? \|', r)}
        assert sorted(rows) == ['HPR', 'HPR + KD', 'PC', 'PC + KD'], rows
        h = cell(level, 'hpr')
        assert rows['HPR'][1] == mean_sd(vals(h))
        for arm in ('pc', 'hpr_kd', 'pc_kd'):
            c, row = cell(level, arm), rows[names[arm]]
            assert c['swept'] == arm.endswith('_kd') and not c['at_edge']
            assert row[1] == mean_sd(vals(c)), row
            assert row[2:4] == pair(diff(c, h), (names[arm], 'HPR')), row
            assert row[4:6] == pair(diff(c, h, 'train_loss'), (names[arm], 'HPR')), row
        for arm in ('hpr_kd', 'pc_kd'):
            assert f"{names[arm]} at {level:.0%} {sweep(cell(level, arm))}" in raw, (level, arm, sweep(cell(level, arm)))
        d = diff(cell(level, 'pc_kd'), cell(level, 'hpr_kd'))
        assert (f"PC + KD - HPR + KD is {np.mean(d):+.4f} ± {sd(d):.4f} (standard error "
                f"{sd(d) / math.sqrt(3):.4f}; paired by seed: {', '.join(f'{x:+.4f}' for x in d)})") in flat(text), d
    # the README's paragraph on the recipes: its gaps and standard-error counts
    readme = open(os.path.join(root, 'README.md')).read()
    item = flat(readme[readme.index('**Is compressing a base worth it at all here?'):].split('\n\n')[0])
    gap = lambda level, arm: abs(np.mean(diff(cell(level, arm), cell(level, 'hpr'))))
    ses = lambda level, arm: gap(level, arm) / (sd(diff(cell(level, arm), cell(level, 'hpr'))) / math.sqrt(3))
    paper_gap = lambda arm: abs(np.mean(diff(cell(0.5, arm), cell(0.5, 'hpr'), 'train_loss')))
    assert f"ends **{gap(0.5, 'scratch'):.2f}** (50%) and **{gap(0.9, 'scratch'):.2f}** (90%) behind HPR" in item
    assert (f"lead HPR by **{gap(0.5, 'hpr_kd'):.3f}** and **{gap(0.5, 'pc_kd'):.3f}** ({ses(0.5, 'hpr_kd'):.0f} and "
            f"{ses(0.5, 'pc_kd'):.0f} standard errors; {paper_gap('hpr_kd'):.3f} and {paper_gap('pc_kd'):.3f} on "
            f"the paper's measure") in item, item
    d50, d90 = (diff(cell(lv, 'pc_kd'), cell(lv, 'hpr_kd')) for lv in (0.5, 0.9))
    assert f"between them it is noise ({np.mean(d50):+.4f} ± {sd(d50):.4f})" in item
    assert (f"HPR + KD leads HPR by {gap(0.9, 'hpr_kd'):.3f}, PC + KD by **{gap(0.9, 'pc_kd'):.3f}**, and PC + KD - "
            f"HPR + KD is {np.mean(d90):+.3f} ± {sd(d90):.3f} ({abs(np.mean(d90)) / (sd(d90) / math.sqrt(3)):.1f} "
            f"standard errors") in item, item

ROOT = os.path.dirname(os.path.abspath(__file__))
PAPER = os.path.join(ROOT, 'config', 'paper_c4.py')
# the authors' widths (llm-random/nano configs/pc_project/llmr_{300,800}_{comp,prune}.yaml; 300M at
# 35% has none there) and learning rates (HPR: 2^-12 at "50", 2^-11 at "35"; PC: near 2^-14)
PAPER_WIDTHS = {('300m', 0.35): (768, 3072), ('300m', 0.5): (640, 2560), ('300m', 0.65): (480, 1920),
                ('800m', 0.35): (1152, 4608), ('800m', 0.5): (960, 3840), ('800m', 0.65): (768, 3072)}
PAPER_RATES = {('hpr', 0.35): 2 ** -12, ('hpr', 0.5): 2 ** -12, ('hpr', 0.65): 2 ** -11,
               ('pc', 0.35): 2 ** -14, ('pc', 0.5): 2 ** -14, ('pc', 0.65): 2 ** -14}


def paper(*args):
    return train.parse_args([PAPER] + list(args))


def test_paper_grid_is_complete():
    """One config holds the paper's grid: two sizes, each base at 80 and at 20 tokens per parameter
    (two runs, each with its own schedule), and PC and HPR at 35/50/65% from each base and for every
    budget, each run in its own folder; anything else is one line."""
    dirs = set()
    for size in ('300m', '800m'):
        for tpp in (80, 20):
            cfg = paper(f'--preset={size}', f'--tokens_per_param={tpp}.0')
            assert cfg['arm'] == 'base' and cfg['tokens_per_param'] == tpp and cfg['early_ckpt_frac'] == 0
            dirs.add(cfg['out_dir'])
            for arm in ('pc', 'hpr'):
                for comp in (0.35, 0.5, 0.65):
                    for tokens in (1_250_000_000, 10_000_000_000):
                        a = paper(f'--preset={size}', f'--arm={arm}', f'--compression={comp}',
                                  f"--base_ckpt={cfg['out_dir']}/ckpt.pt", f'--max_tokens={tokens}')
                        assert a['max_tokens'] == tokens and a['max_iters'] == a['tokens_per_param'] == 0
                        dirs.add(a['out_dir'])
    assert len(dirs) == 2 * 2 * (1 + 2 * 3 * 2)
    assert paper('--preset=300m')['out_dir'] == 'out/paper_300m_base80'
    assert paper('--preset=300m', '--arm=pc')['base_ckpt'] == 'out/paper_300m_base80/ckpt.pt'
    error_of(paper, match=r"needs --preset=300m or --preset=800m")
    error_of(paper, '--preset=300m', '--arm=hpr', '--compression=0.4', match=r"rates for --compression=0\.35, 0\.5")
    error_of(paper, '--preset=300m', '--arm=xyz', match=r"--arm=xyz is not an arm; give --arm=base, pc or hpr")


@pytest.mark.parametrize('size', ['300m', '800m'])
def test_paper_config(size):
    """Each size builds on the meta device with the parameter counts gpt.param_counts gives (the
    paper's names, ~305M and ~835M), lands every level on the authors' widths, trains each arm with
    the authors' optimizer settings and rates, and its header documents the counts it builds."""
    text = open(PAPER).read()
    base_cfg = paper(f'--preset={size}')
    base = gpt.preset(base_cfg['preset'], block_size=base_cfg['block_size'])
    with torch.device('meta'):
        n_base = gpt.GPT(base).num_params()
    assert n_base == gpt.param_counts(base)['total'] and f"{n_base:,}" in text
    assert abs(n_base / {'300m': 305e6, '800m': 835e6}[size] - 1) < 0.01
    assert base_cfg['batch_size'] * base_cfg['block_size'] * base_cfg['grad_accum'] == 262_144
    for comp in (0.35, 0.5, 0.65):
        for arm in ('pc', 'hpr'):
            cfg = paper(f'--preset={size}', f'--arm={arm}', f'--compression={comp}')
            small, removed = pc.compressed_config(base, cfg['compression'], multiple_of=cfg['width_multiple'])
            assert (small.n_embd, small.d_ff) == PAPER_WIDTHS[size, comp]
            assert small.n_head * small.head_dim == base.n_head * base.head_dim   # attention width kept
            with torch.device('meta'):
                n_small = gpt.GPT(small).num_params()
            assert n_small == gpt.param_counts(small)['total']
            assert re.search(rf"{size} {round(comp * 100)}%\s+{small.n_embd}/{small.d_ff}\s+{n_small:,}\s+"
                             rf"{removed:.1%}", text)
            assert cfg['learning_rate'] == PAPER_RATES[arm, comp] and cfg['min_lr'] == cfg['learning_rate'] / 10
            assert (cfg['beta1'], cfg['beta2'], cfg['warmup_iters'], cfg['weight_decay'], cfg['grad_clip']) == \
                (0.9, 0.999, 80, 0.1, 1.0)
            assert cfg['decay_projections'] and cfg['decay_vectors'] and cfg['importance'] == 'magnitude'
            assert cfg['dataset'] == 'c4' and cfg['base_ckpt'] == f"{base_cfg['out_dir']}/ckpt.pt"


def test_bench_paper_shapes_are_the_grid():
    """bench.py's paper rows (FLOPs, memory, per process) use the widths config/paper_c4.py trains."""
    shapes = {(name, c): (small.n_embd, small.d_ff) for name, _, small, _, c in bench.paper_shapes()}
    assert shapes == PAPER_WIDTHS


def test_paper_notebook_file(monkeypatch):
    """config/pc_300m_50.py, which the notebook reads, is config/paper_c4.py at 300M, PC, 50%."""
    monkeypatch.chdir(ROOT)
    assert train.parse_args(['config/pc_300m_50.py']) == paper('--preset=300m', '--arm=pc', '--compression=0.5')


# ==================================================================================================
# bench.py: smoke test, never a timing threshold
# ==================================================================================================
# Smoke test of bench.py at its smallest size (--quick): every table column and JSON key is there and
# every measured number is positive and finite. Never a timing threshold: this machine is shared.

STEP_KEYS = ['batch_size', 'micro_batches', 'tokens_per_step', 'hpr_s', 'pc_s', 'naive_s',
             'pc_over_hpr', 'naive_over_hpr', 'naive_over_pc', 'pc_over_hpr_min', 'pc_over_hpr_model',
             'samples']
FIXED_KEYS = ['materialize', 'backward_projections', 'projection_phase', 'adamw_pc',
              'adamw_hpr', 'fixed_cost']
CROSS_KEYS = ['batch_size', 'threshold', 'first_measured_tokens', 'interpolated_tokens', 'model_tokens']
MEM_PARTS = ['frozen_base', 'projections', 'residuals', 'optimizer_state', 'model_params_grads',
             'saved_projection_graph', 'activations_and_other']
FLOP_KEYS = ['model', 'compression', 'removed', 'n_embd', 'd_ff', 'compressed_params',
             'tokens_per_step', 'proj_fwd_flops', 'proj_bwd_flops', 'proj_flops', 'step_flops',
             'fraction', 'tokens_for_1pct', 'base_params', 'p_params', 'r_params', 'static_base_bytes',
             'static_hpr_bytes', 'static_pc_bytes', 'static_pc_over_hpr', 'static_pc_over_base',
             'teacher_flops', 'teacher_fraction']
MD_HEADERS = ['tokens/step', 'HPR ms', 'PC ms', 'naive ms', 'PC/HPR', 'naive/HPR', 'naive/PC',
              'projection_phase', 'fixed_cost', 'first measured', 'interpolated', 'model', '1+fixed/HPR',
              'peak (measured)', 'frozen_base', 'saved_projection_graph', 'static (parts without activations)',
              'proj/step', 'tokens for 1%', 'PC GiB', 'PC/base', 'PC GiB bf16 base', 'W_c MB', 'DDP MB', 'teacher/step',
              "train.py's optimizer step at 1 and 2 processes"]


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_quick(tmp_path):
    out = tmp_path / 'bench'
    res = bench.main(['--quick', f'--out_dir={out}', '--process_counts=1'])   # 2 processes: the DDP tests
    on_disk = json.loads((out / 'bench_results.json').read_text())
    md = (out / 'bench_results.md').read_text()
    assert set(on_disk) == {'meta', 'timing', 'memory', 'flops', 'processes'} == set(res)

    # 1. step time: one row per (batch size, micro-batches), every time and ratio measured
    rows = on_disk['timing']['configs']
    assert len(rows) == 2 * 3
    for r in rows:
        assert all(k in r for k in STEP_KEYS), r.keys()
        for k in STEP_KEYS[:-1]:
            assert positive(r[k]), (k, r[k])
        assert r['tokens_per_step'] == r['batch_size'] * r['micro_batches'] * 64
        for arm in bench.ARMS:
            assert r['samples'][arm] and all(positive(t) for t in r['samples'][arm])
    fixed = on_disk['timing']['fixed_cost']
    for k in FIXED_KEYS[:-1]:   # fixed_cost is a difference of medians, so it is not asserted > 0
        assert positive(fixed[k]), (k, fixed[k])
    assert math.isfinite(fixed['fixed_cost'])
    cross = on_disk['timing']['crossover']
    assert {(c['batch_size'], c['threshold']) for c in cross} == {(B, t) for B in (2, 4)
                                                                  for t in (1.10, 1.05)}
    for c in cross:   # a crossover may be out of reach at this size: None, or a positive number
        assert all(k in c for k in CROSS_KEYS)
        for k in CROSS_KEYS[2:]:
            assert c[k] is None or (math.isfinite(c[k]) and c[k] >= 0), (k, c[k])

    # 2. memory: the three arms, their measured peaks and PC's multiples
    mem = on_disk['memory']
    assert set(mem['arms']) == {'base', 'hpr', 'pc'}
    for arm, m in mem['arms'].items():
        assert positive(m['peak_bytes']), (arm, m['peak_bytes'])
        assert set(m['parts']) == set(MEM_PARTS)
        assert all(math.isfinite(v) for v in m['parts'].values())
    pc_parts = mem['arms']['pc']['parts']
    for k in MEM_PARTS[:-1]:   # activations_and_other is peak minus the parts: not asserted > 0
        assert positive(pc_parts[k]), (k, pc_parts[k])
    assert positive(mem['pc_over_hpr']) and positive(mem['pc_over_base'])
    # the parts are tensor sizes, so they must match the on-paper count for the same model
    # (AdamW's per-tensor step counters are the only extra bytes)
    static = on_disk['flops'][-1]['static_pc_bytes']
    assert abs(sum(v for k, v in pc_parts.items() if k != 'activations_and_other') - static) < 0.01 * static

    # 3. FLOPs: 300m and 800m at three compressions, plus the bench model
    flops = on_disk['flops']
    assert [(f['model'], f['compression']) for f in flops[:6]] == \
        [(m, c) for m in ('300m', '800m') for c in (0.35, 0.5, 0.65)]
    for f in flops:
        assert all(k in f for k in FLOP_KEYS)
        for k in FLOP_KEYS[1:]:
            assert positive(f[k]), (k, f[k])
        assert f['proj_bwd_flops'] <= 2 * f['proj_fwd_flops']   # the usual 2x is an upper bound
        # the teacher's forward: a third of the base's training FLOPs per token, against the step
        assert f['teacher_fraction'] == pytest.approx(
            f['teacher_flops'] / f['step_flops']) and 0.5 < f['teacher_fraction'] / (
            f['base_params'] / f['compressed_params'] / 3) < 1.5

    # 4. train.py at 1 and 2 processes, measured; and the per-process model at the paper's shapes
    measured = on_disk['processes']['measured']
    assert [r['processes'] for r in measured] == [1]
    for r in measured:
        assert positive(r['hpr_s']) and positive(r['pc_s']) and r['pc_over_hpr'] == pytest.approx(r['pc_s'] / r['hpr_s'])
    model = on_disk['processes']['model']
    assert [(r['model'], r['compression'], r['processes']) for r in model] == \
        [(m, c, w) for m in ('300m', '800m') for c in (0.35, 0.5, 0.65) for w in (1, 2, 4, 8)]
    for one, row in zip(flops[:6], model[::4]):          # 1 process: the whole-model tables
        assert row['pc_bytes'] == one['static_pc_bytes'] and row['wc_bytes'] == 0 == row['ddp_bytes']
        assert row['proj_share'] == pytest.approx(one['fraction'])
    for i in range(0, len(model), 4):
        rows = model[i:i + 4]
        for a, b in zip(rows, rows[1:]):                  # more processes: each holds and sends less
            assert b['pc_bytes'] < a['pc_bytes'] and b['pc_bytes_bf16'] < a['pc_bytes_bf16']
            assert b['hpr_bytes'] == a['hpr_bytes']
        for r in rows:                          # the split stays balanced; traffic below one W_c copy
            assert r['proj_share'] < 1.05 * rows[0]['proj_share']
            assert r['wc_bytes'] < 4 * rows[0]['hpr_bytes'] / 16   # (fp32 W_c < the compressed params)

    for h in MD_HEADERS:
        assert h in md, h
    assert positive(on_disk['meta']['wall_s'])


def test_saved_graph_bytes_is_deterministic():
    """bench's saved-graph bytes are the intermediates autograd keeps, every call the same, and
    they are what the on-paper model counts (a freed W_c's address reused by a new intermediate
    once made them vary from call to call)."""
    base_cfg = gpt.GPTConfig(**bench.QUICK)
    small, _ = compressed_config(base_cfg, 0.5)
    torch.manual_seed(0)
    base = GPT(base_cfg)
    model = ProjectedGPT(base, select(importance(base, 'magnitude'), small.n_embd, small.d_ff))
    sizes = {bench.saved_graph_bytes(model) for _ in range(8)}
    assert sizes == {costs.static_memory(base_cfg, small)['pc_parts']['saved_projection_graph']}
    # in bfloat16 autograd also keeps a bf16 copy of the second matmul's P: counted too
    model16 = ProjectedGPT(base, model.keep, proj_dtype=torch.bfloat16)
    assert bench.saved_graph_bytes(model16) == \
        costs.static_memory(base_cfg, small, base_bytes=2)['pc_parts']['saved_projection_graph']


def test_projection_flops_by_hand():
    """One layer, both axes compressed, counted by hand in the orders pc.Projection picks."""
    import gpt
    cfg = gpt.GPTConfig(n_layer=1, n_head=1, n_embd=4, d_ff=8, vocab_size=5, block_size=3, bias=False)
    small = gpt.GPTConfig(n_layer=1, n_head=1, n_embd=2, d_ff=6, vocab_size=5, block_size=3,
                          head_dim=4, bias=False)
    D, d, F, f, A, V, T = 4, 2, 8, 6, 4, 5, 3
    mm = lambda m, k, n: 2 * m * k * n
    fwd = (mm(V, D, d) + V * d                              # wte (tied lm_head counted once)
           + mm(T, D, d) + T * d                            # wpe
           + mm(3 * A, D, d) + 3 * A * d                    # c_attn: W @ P_in
           + mm(d, D, A) + d * A                            # attn.c_proj: P_out @ W
           + mm(F, D, d) + mm(f, F, d) + f * d              # c_fc: W @ P_in, then P_out @ .
           + mm(d, D, F) + mm(d, F, f) + d * f)             # mlp.c_proj: P_out @ W first (cheaper)
    bwd = (mm(V, D, d) + mm(T, D, d) + mm(3 * A, D, d) + mm(d, D, A)
           + mm(F, D, d) + 2 * mm(f, F, d) + mm(d, D, F) + 2 * mm(d, F, f))
    # in the other order mlp.c_proj would cost more: the order is the cheaper one
    other = mm(D, F, f) + mm(d, D, f) + mm(D, F, f) + 2 * mm(d, D, f)
    assert mm(d, D, F) + mm(d, F, f) + mm(d, D, F) + 2 * mm(d, F, f) < other
    assert costs.model_flops(cfg, small) == (fwd, bwd)


# ==================================================================================================
# notebooks/walkthrough.ipynb, executed headless with tiny settings
# ==================================================================================================
# Runs notebooks/walkthrough.ipynb top to bottom, headless, with tiny settings (about 40 s on 2 cores).
#
# The notebook runs in a copy of the repository's code under tmp_path, without any prepared data, so it
# also exercises the notebook's own data preparation, and everything it writes (data, runs, kernel
# files) stays under tmp_path. The committed notebook itself is not modified.
#
#     python -m pytest -q test_notebook.py

ROOT = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join('notebooks', 'walkthrough.ipynb')

# Same names as the notebook's settings cell, tiny values. OUT is filled in per test.
NOTEBOOK_SETTINGS = """\
# SETTINGS (tiny values from test_notebook.py)
OUT = {out!r}
THREADS = 1
BASE_ITERS = 6
BATCH = 4
EVAL_ITERS = 2
COMPRESSION = 0.5
IMPORTANCE = 'magnitude'
CALIB_BATCHES = 2
RACE_ITERS = 4
TIME_BATCH = 2
TIME_MICRO = [1, 2]
TIME_REPS = 1
SAMPLE_CHARS = 20
"""


def assigned(source):
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def copy_code(dst):
    """The code, configs, embedded corpus and notebook; no prepared data, runs or caches."""
    os.makedirs(dst)
    for name in os.listdir(ROOT):
        if name.endswith('.py'):
            shutil.copy2(os.path.join(ROOT, name), dst)
    skip = shutil.ignore_patterns('*.bin', 'meta.json', 'raw', 'train', 'val', '__pycache__',
                                  '*.tmp', '.ipynb_checkpoints')
    for folder in ('config', 'data', 'infra'):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(dst, folder), ignore=skip)
    os.makedirs(os.path.join(dst, 'notebooks'))
    shutil.copy2(os.path.join(ROOT, NOTEBOOK), os.path.join(dst, NOTEBOOK))


def test_notebook_runs_with_tiny_settings(tmp_path, monkeypatch):
    repo, out = tmp_path / 'repo', tmp_path / 'out'
    copy_code(repo)
    assert not (repo / 'data' / 'shakespeare_char' / 'meta.json').exists()
    # the kernel's own files (connection file, IPython history) go under tmp_path too
    monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'jupyter_runtime'))
    monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))

    nb = nbformat.read(repo / NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1 and cells[0].source.startswith('# SETTINGS'), \
        "the notebook needs exactly one code cell tagged 'parameters' starting with '# SETTINGS'"
    tiny = NOTEBOOK_SETTINGS.format(out=str(out))
    # a setting added to the notebook but not here would silently run at full size
    assert assigned(cells[0].source) == assigned(tiny), \
        f"settings differ: notebook {sorted(assigned(cells[0].source))}, test {sorted(assigned(tiny))}"
    cells[0].source = tiny
    for c in nb.cells:
        if c.cell_type == 'code':
            c.outputs = []

    # run from notebooks/, as Jupyter would when the notebook is opened there; raises on any error
    NotebookClient(nb, timeout=300, kernel_name='python3',
                   resources={'metadata': {'path': str(repo / 'notebooks')}}).execute()

    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
              if o.output_type == 'error']
    assert not errors
    images = sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
                 for o in c.outputs)
    assert images >= 7, f"expected the notebook's figures as image outputs, got {images}"
    for run in ('base/ckpt.pt', 'hpr/metrics.jsonl', 'pc/metrics.jsonl', 'pc/ckpt.pt', 'pc/merged.pt'):
        assert (out / run).exists(), run
    assert (repo / 'data' / 'shakespeare_char' / 'meta.json').exists()   # the notebook prepared it


# ==================================================================================================
# Pretrained models, export, sample.py: hf.load_pretrained / load_base / GPT.save_pretrained,
# export.py, sample.py
# ==================================================================================================
# Offline throughout: a "pretrained" GPT-2 is a small random transformers.GPT2LMHeadModel saved with
# save_pretrained; Hub names are checked with huggingface_hub's own offline mode and a stand-in
# download. transformers takes seconds to import: only the tests that compare with it import it.
os.environ.setdefault('HF_HUB_OFFLINE', '1')   # these tests never reach the Hub, on any machine


def transformers_lib():
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers


def hf_gpt2(folder, tied=True, vocab=V, seed=0, **kw):
    """A random transformers GPT-2 saved in `folder` (every tensor random: zero biases or unit
    LayerNorm gains would hide a tensor read into the wrong place). Returns the model."""
    transformers = transformers_lib()
    args = dict(vocab_size=vocab, n_positions=T, n_embd=32, n_layer=L, n_head=4, n_inner=72,
                tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None)
    args.update(kw)
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**args)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(str(folder))
    return hf


def all_logits(model, x):
    return model(x, x)[0]   # with targets: the logits of every position


def same_function(m, hf, x, atol=1e-5):
    torch.testing.assert_close(all_logits(m, x), hf(x).logits, rtol=0, atol=atol)


@pytest.mark.parametrize('tied', [True, False])
def test_from_pretrained_matches_transformers(tmp_path, tied):
    """A folder written by transformers loads into gpt.py with the same logits (within 1e-5, fp32):
    the Conv1D matrices transposed, n_inner as d_ff, a tied or untied head. load_base says where
    the weights came from and their sha256."""
    hf = hf_gpt2(tmp_path / 'hf', tied=tied)
    m = GPT.from_pretrained(str(tmp_path / 'hf')).eval()
    assert m.config == GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=4, n_embd=32, d_ff=72,
                                 tie_embeddings=tied)
    assert (m.lm_head.weight is m.transformer.wte.weight) == tied
    x, _ = batch(7)
    same_function(m, hf, x)
    m2, info = checkpoint.load_base(str(tmp_path / 'hf'))
    states_equal(m2, m)
    assert checkpoint.base_sha256(str(tmp_path / 'hf')) == info['sha256']
    weights = tmp_path / 'hf' / 'model.safetensors'
    assert info == dict(source=str(tmp_path / 'hf'), sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
                        tokenizer={})   # a 64-token vocabulary: not GPT-2's, so unknown
    assert GPT.from_pretrained(str(tmp_path / 'hf'), dropout=0.1).config.dropout == 0.1


def test_from_pretrained_openai_and_sharded_layouts(tmp_path):
    """OpenAI's files on the Hub name tensors without 'transformer.' and carry causal-mask buffers
    (h.N.attn.bias); a big model saved by transformers comes in shards with an index. Both load to
    the same model. A GPT-2-sized vocabulary means the GPT-2 tokenizer."""
    from safetensors.torch import load_file, save_file
    theirs = hf_gpt2(tmp_path / 'hf', vocab=hf.GPT2_VOCAB, n_embd=8, n_head=2, n_inner=16)
    ref = GPT.from_pretrained(str(tmp_path / 'hf')).eval()
    x, _ = batch(8)
    same_function(ref, theirs, x)
    openai = tmp_path / 'openai'
    openai.mkdir()
    shutil.copy(tmp_path / 'hf' / 'config.json', openai)
    state = {k.removeprefix('transformer.'): v for k, v in load_file(str(tmp_path / 'hf' / 'model.safetensors')).items()}
    for i in range(L):
        state[f'h.{i}.attn.bias'] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        state[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    save_file(state, str(openai / 'model.safetensors'))
    m, info = checkpoint.load_base(str(openai))
    states_equal(m, ref)
    assert checkpoint.base_sha256(str(openai)) == info['sha256']
    assert info['tokenizer'] == {'tokenizer': 'gpt2'}
    theirs.save_pretrained(str(tmp_path / 'sharded'), max_shard_size='200KB')
    assert len(glob.glob(str(tmp_path / 'sharded' / 'model-*.safetensors'))) > 1
    assert not (tmp_path / 'sharded' / 'model.safetensors').exists()
    states_equal(GPT.from_pretrained(str(tmp_path / 'sharded')), ref)
    shards = sorted(glob.glob(str(tmp_path / 'sharded' / 'model-*.safetensors')))
    assert checkpoint.load_base(str(tmp_path / 'sharded'))[1]['sha256'] == files.file_sha256(*shards) == \
        hashlib.sha256(b''.join(open(p, 'rb').read() for p in shards)).hexdigest()
    # a truncated index, or one naming a shard that is not there: one line each, for loading and hashing
    index = tmp_path / 'sharded' / 'model.safetensors.index.json'
    text = index.read_text()
    index.write_text(text[:len(text) // 2])
    for load in (GPT.from_pretrained, checkpoint.base_sha256):
        error_of(load, str(tmp_path / 'sharded'), match=r"model.safetensors.index.json is not a readable safetensors index")
    index.write_text(text)
    os.remove(shards[-1])
    for load in (GPT.from_pretrained, checkpoint.base_sha256):
        error_of(load, str(tmp_path / 'sharded'), match=rf"names {os.path.basename(shards[-1])}, which is not in")


def test_pretrained_names(tmp_path, monkeypatch):
    """gpt2 ... gpt2-xl resolve through huggingface_hub (OpenAI's repositories, only the config and
    safetensors files); without network and not in the cache, one line says how to get the folder;
    an unknown name is one line."""
    import huggingface_hub
    hf_gpt2(tmp_path / 'snapshot')
    asked = []

    def download(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, allow_patterns))
        return str(tmp_path / 'snapshot')

    monkeypatch.setattr(huggingface_hub, 'snapshot_download', download)
    m, info = checkpoint.load_base('gpt2-medium')
    assert asked[0][0] == 'openai-community/gpt2-medium' and 'model.safetensors' in asked[0][1]
    assert info['source'] == str(tmp_path / 'snapshot')
    assert checkpoint.base_sha256('gpt2-medium') == info['sha256']
    states_equal(GPT.from_pretrained('gpt2-xl'), m)
    assert asked[2][0] == 'openai-community/gpt2-xl'
    monkeypatch.undo()

    # the real download, offline and with an empty cache
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
    error_of(GPT.from_pretrained, 'gpt2', match=r"could not get gpt2 from the Hugging Face Hub .*"
             r"hf download openai-community/gpt2 config\.json model\.safetensors --local-dir gpt2.*pass that folder")
    error_of(GPT.from_pretrained, 'gpt3', match=r"'gpt3' is neither a model folder .* nor a pretrained "
             r"name \(gpt2, gpt2-medium, gpt2-large, gpt2-xl\)")
    error_of(checkpoint.load_base, 'gpt3', match=r"'gpt3' is no checkpoint \(\.pt\), model folder")
    error_of(checkpoint.base_sha256, 'gpt3', match=r"'gpt3' is no checkpoint \(\.pt\), model folder")
    error_of(checkpoint.base_sha256, 'gpt2', match=r"could not get gpt2 from the Hugging Face Hub")
    error_of(checkpoint.load_base, str(tmp_path / 'nope.pt'), match=r"checkpoint '.*nope\.pt' does not exist")


def test_pretrained_bad_folders(tmp_path, monkeypatch):
    """A folder that is not a GPT-2 gpt.py can compute is one line each: another architecture, no
    config.json, broken JSON, no safetensors file, a GPT-2 variant (exact GELU), weights that do not
    fit the config; and without safetensors installed, one line naming the requirements file."""
    hf_gpt2(tmp_path / 'ok')

    def variant(name, edit=None, drop=()):
        d = tmp_path / name
        shutil.copytree(tmp_path / 'ok', d)
        if edit:
            conf = json.loads((d / 'config.json').read_text())
            (d / 'config.json').write_text(json.dumps(edit(conf) or conf))
        for f in drop:
            os.remove(d / f)
        return str(d)

    llama = variant('llama', lambda c: c.update(model_type='llama'))
    error_of(GPT.from_pretrained, llama, match=r"holds a model_type='llama' model; gpt\.py reads GPT-2")
    error_of(GPT.from_pretrained, variant('noconf', drop=['config.json']), match=r"has no config\.json")
    (tmp_path / 'noconf' / 'ckpt.pt').write_bytes(b'')
    error_of(GPT.from_pretrained, str(tmp_path / 'noconf'), match=r"has no config\.json.*pass the file \(ckpt\.pt\)")
    bad = variant('badjson')
    (tmp_path / 'badjson' / 'config.json').write_text('{"model_type": "gpt2",')
    error_of(GPT.from_pretrained, bad, match=r"config\.json is not valid JSON")
    no_weights = variant('bin', drop=['model.safetensors'])
    error_of(GPT.from_pretrained, no_weights, match=r"has no model\.safetensors: not a model folder")
    (tmp_path / 'bin' / 'pytorch_model.bin').write_bytes(b'')
    error_of(GPT.from_pretrained, no_weights, match=r"has pytorch_model\.bin, no model\.safetensors.*save_pretrained it again")
    gelu = variant('gelu', lambda c: c.update(activation_function='gelu'))
    error_of(GPT.from_pretrained, gelu, match=r"has activation_function='gelu', which gpt\.py's GPT-2 does not compute")
    wide = variant('wide', lambda c: c.update(n_embd=64))
    error_of(GPT.from_pretrained, wide, match=r"weights of .* do not fit its config: .*is \(\d+, 32\), not")
    torn = variant('torn')
    (tmp_path / 'torn' / 'model.safetensors').write_bytes(b'\x00' * 20)
    error_of(GPT.from_pretrained, torn, match=r"is not a readable safetensors file")
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)   # as if not installed
    error_of(GPT.from_pretrained, str(tmp_path / 'ok'),
             match=r"need safetensors and huggingface_hub .*pip install -r requirements-pretrained\.txt")
    error_of(tiny_gpt().save_pretrained, str(tmp_path / 'x'), match=r"requirements-pretrained\.txt")


EXPORT_SHAPES = {'base': dict(), 'compressed': dict(n_embd=24, head_dim=8, d_ff=56),
                 'no_bias': dict(bias=False)}


def export_files(shape):
    """What an export of a character-level model holds: the weights and config; a shape
    transformers' GPT-2 cannot hold also gets its modeling code."""
    return sorted(['config.json', 'model.safetensors'] + ([] if shape == 'base' else list(hf.CODE_FILES)))


@pytest.mark.parametrize('tied', [True, False])
@pytest.mark.parametrize('shape', sorted(EXPORT_SHAPES))
def test_export_round_trip(tmp_path, tied, shape):
    """save_pretrained then from_pretrained gives back the same config, tying and tensors bit for bit
    (a base, a compressed model whose attention width is not n_embd, a model without biases), and
    the tokenizer through load_base. A second export over the first replaces it, leaving no
    temporary file."""
    m = tiny_gpt(11, tie_embeddings=tied, **EXPORT_SHAPES[shape])
    chars = ''.join(chr(ord('!') + i) for i in range(V))
    m.save_pretrained(str(tmp_path / 'm'), tokenizer={'tokenizer': 'char', 'chars': chars})
    assert sorted(os.listdir(tmp_path / 'm')) == export_files(shape)
    back, info = checkpoint.load_base(str(tmp_path / 'm'))
    assert back.config == m.config
    assert (back.lm_head.weight is back.transformer.wte.weight) == tied
    states_equal(back, m)
    assert info['tokenizer'] == {'tokenizer': 'char', 'chars': chars}
    x, y = batch(11)
    assert torch.equal(back(x, y)[0], m(x, y)[0])
    conf = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert conf['model_type'] == ('gpt2' if shape == 'base' else hf.WIDTHS_MODEL_TYPE)
    assert ('auto_map' in conf) == (shape != 'base')
    m2 = tiny_gpt(12, tie_embeddings=tied, **EXPORT_SHAPES[shape])
    m2.save_pretrained(str(tmp_path / 'm'))
    states_equal(GPT.from_pretrained(str(tmp_path / 'm')), m2)
    assert checkpoint.load_base(str(tmp_path / 'm'))[1]['tokenizer'] == {}
    assert sorted(os.listdir(tmp_path / 'm')) == export_files(shape)
    assert sorted(os.listdir(tmp_path)) == ['m']   # no temporary folder left beside it


def random_weights(m, seed):
    torch.manual_seed(seed)
    with torch.no_grad():   # every tensor random, as in hf_gpt2: zero biases would hide a misread one
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def greedy(m, x, n):
    """n greedy tokens after x, by gpt.py's forward alone (the last position's argmax)."""
    for _ in range(n):
        x = torch.cat([x, m(x)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize('tied', [True, False])
@pytest.mark.parametrize('shape', sorted(EXPORT_SHAPES))
def test_export_loads_in_transformers(tmp_path, tied, shape):
    """Every export loads in transformers with gpt.py's logits (within 1e-5, fp32) and greedy
    generate() gives gpt.py's tokens: a base in GPT2LMHeadModel (no custom code), a compressed model
    or one without biases through its own code with trust_remote_code=True. Without that flag
    transformers refuses the custom code instead of running it or misreading the widths."""
    transformers = transformers_lib()
    m = random_weights(tiny_gpt(13, tie_embeddings=tied, **EXPORT_SHAPES[shape]), 13)
    m.save_pretrained(str(tmp_path / 'e'))
    if shape == 'base':
        theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'e')).eval()
        assert type(theirs) is type(transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'e')))
    else:
        with pytest.raises(ValueError, match=r"trust_remote_code"):
            transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'e'), trust_remote_code=False)
        if shape == 'compressed':   # GPT-2's class cannot hold the widths: refused, not misread
            with pytest.raises(RuntimeError, match=r"ignore_mismatched_sizes"):
                transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'e'))
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'e'), trust_remote_code=True).eval()
        assert type(theirs).__name__ == 'GPTWidthsForCausalLM'
    assert (theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()) == tied
    x, _ = batch(13)
    same_function(m, theirs, x)
    prompt = x[:1, :5]
    out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=T - 5, do_sample=False)
    assert torch.equal(out, greedy(m, prompt, T - 5))
    # a left-padded batch (as generate() batches prompts of different lengths): each row computes
    # what gpt.py computes on the row without its padding
    short = x[1:, :9]
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1)
    both, mask = torch.cat([x[:1, :13], padded]), torch.tensor([[1] * 13, [0] * 4 + [1] * 9])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)   # (transformers' GPT-2 takes them from the mask in generate only)
    logits = theirs(both, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(logits[1, 4:], all_logits(m, short)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0], all_logits(m, x[:1, :13])[0], rtol=0, atol=1e-5)
    gen = theirs.generate(both, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(gen[1, 4:], greedy(m, short, 3)[0]) and torch.equal(gen[0], greedy(m, x[:1, :13], 3)[0])


def test_export_gpt2_tokenizer(tmp_path):
    """A GPT-2-BPE model's export carries GPT-2's tokenizer files, built offline from
    data/gpt2.tiktoken: AutoTokenizer.from_pretrained(folder) encodes as tiktoken does and decodes
    back to the same text. Each merge joins two tokens into the token of its rank. A character
    model gets no tokenizer files (its characters are in config.json)."""
    transformers = transformers_lib()
    m = tiny_gpt(19, vocab_size=hf.GPT2_VOCAB, n_embd=8, n_head=2)
    m.save_pretrained(str(tmp_path / 'e'), tokenizer={'tokenizer': 'gpt2'})
    assert sorted(os.listdir(tmp_path / 'e')) == sorted(['config.json', 'model.safetensors', *hf.TOKENIZER_FILES])
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'e'))
    enc = tokenizer.gpt2()
    texts = ["Hello world!  It's  a test.\n\nNew   lines\t tabs .", "Ünïcödé — ✓ 🤖🎉 中文 \u00a0nbsp",
             "   leading and trailing   ", "numbers 1234567 3.14 , ; !", "don't I'll we've 'S 're",
             "x" * 300, "<|endoftext|>two documents<|endoftext|>", "\r\n\x00\x7f bytes"]
    for text in texts:
        ids = tok(text)['input_ids']
        assert ids == enc.encode(text, allowed_special='all'), text
        assert tok.decode(ids) == text
    assert tok.eos_token_id == tokenizer.EOT
    merges = (tmp_path / 'e' / 'merges.txt').read_text(encoding='utf-8').splitlines()[1:]
    vocab = json.loads((tmp_path / 'e' / 'vocab.json').read_text(encoding='utf-8'))
    assert len(merges) == hf.GPT2_VOCAB - 257 and len(vocab) == hf.GPT2_VOCAB
    shown = tokenizer.byte_chars()
    assert sorted(shown) == list(range(256)) and len(set(shown.values())) == 256
    for rank, line in enumerate(merges, start=256):
        a, b = line.split(' ')
        assert vocab[a + b] == rank
    char = tiny_gpt(20, n_embd=24, head_dim=8)
    char.save_pretrained(str(tmp_path / 'c'), tokenizer={'tokenizer': 'char', 'chars': 'ab'})
    assert not set(os.listdir(tmp_path / 'c')) & set(hf.TOKENIZER_FILES)


def test_export_is_one_change(tmp_path, monkeypatch):
    """A kill or a failure at any point of an export over an earlier one leaves the earlier export
    whole (it loads bit for bit); the next export cleans up what the killed one left. A folder with
    files an export does not write is refused, never replaced."""
    old = tiny_gpt(21, n_embd=24, head_dim=8)
    old.save_pretrained(str(tmp_path / 'e'), tokenizer={'tokenizer': 'char', 'chars': 'ab'})
    new = tiny_gpt(22, n_embd=16, head_dim=8, d_ff=40)   # custom code: every kind of file is written
    real_write_json = hf.write_json
    for point in ('config', 'code', 'tokenizer', 'swap'):   # after the weights, the config, the code, all
        def fail(*a, **k):
            raise KeyboardInterrupt   # as a kill would stop it: no clean-up code of its own runs
        if point == 'code':
            monkeypatch.setattr(hf.shutil, 'copyfile', fail)
        elif point == 'config':
            monkeypatch.setattr(hf, 'write_json', fail)
        elif point == 'tokenizer':
            monkeypatch.setattr(hf, 'write_tokenizer', fail)
        else:
            monkeypatch.setattr(files, '_exchange', fail)
        with pytest.raises(KeyboardInterrupt):
            new.save_pretrained(str(tmp_path / 'e'), tokenizer={'tokenizer': 'gpt2'})
        monkeypatch.undo()
        back, info = checkpoint.load_base(str(tmp_path / 'e'))
        states_equal(back, old)
        assert info['tokenizer'] == {'tokenizer': 'char', 'chars': 'ab'}, point
    assert hf.write_json is real_write_json
    # a writer killed outright (os._exit: no finally) leaves its temporary folder; the next export removes it
    child = subprocess.run([sys.executable, '-c', (
        "import os, torch, gpt; from infra import hf\n"
        "hf.write_json = lambda *a: os._exit(9)\n"
        f"torch.manual_seed(0); m = gpt.GPT(gpt.GPTConfig(block_size=8, vocab_size={hf.GPT2_VOCAB}, n_layer=1, n_head=1, n_embd=4))\n"
        f"m.save_pretrained({str(tmp_path / 'e')!r})")], cwd=ROOT)
    assert child.returncode == 9
    assert len(glob.glob(str(tmp_path / 'e.*.tmpdir'))) == 1
    states_equal(checkpoint.load_base(str(tmp_path / 'e'))[0], old)
    new.save_pretrained(str(tmp_path / 'e'))
    states_equal(checkpoint.load_base(str(tmp_path / 'e'))[0], new)
    assert sorted(os.listdir(tmp_path)) == ['e']
    (tmp_path / 'e' / 'notes.txt').write_text('mine')
    error_of(new.save_pretrained, str(tmp_path / 'e'), match=r"holds files this write does not make \(notes\.txt\)")
    assert (tmp_path / 'e' / 'notes.txt').read_text() == 'mine'


def test_export_command(tmp_path, capsys, monkeypatch):
    """export.py SOURCE OUT_DIR: a checkpoint of a compressed GPT (as merged.pt) becomes a folder
    that reads back bit for bit with its tokenizer; a PC training checkpoint is refused with the
    path of its merged model; wrong arguments print the usage."""
    m = tiny_gpt(15, n_embd=24, head_dim=8, d_ff=56)
    chars = ''.join(chr(ord('A') + i) for i in range(V))
    save_atomic(gpt_checkpoint(m, tokenizer={'tokenizer': 'char', 'chars': chars}), str(tmp_path / 'merged.pt'))
    export.main([str(tmp_path / 'merged.pt'), str(tmp_path / 'out')])
    assert 'attention width 32 differs from n_embd=24' in capsys.readouterr().out
    m_pt, info_pt = checkpoint.load_base(str(tmp_path / 'merged.pt'))
    states_equal(m_pt, m)
    assert info_pt == dict(source=str(tmp_path / 'merged.pt'), tokenizer={'tokenizer': 'char', 'chars': chars},
                           sha256=hashlib.sha256((tmp_path / 'merged.pt').read_bytes()).hexdigest())
    assert checkpoint.base_sha256(str(tmp_path / 'merged.pt')) == info_pt['sha256']
    back, info = checkpoint.load_base(str(tmp_path / 'out'))
    states_equal(back, m)
    assert info['tokenizer']['chars'] == chars
    save_atomic(dict(gpt_checkpoint(m), kind='pc'), str(tmp_path / 'ckpt.pt'))
    error_of(export.main, [str(tmp_path / 'ckpt.pt'), str(tmp_path / 'out2')],
             match=r"is a pc training checkpoint, not a GPT; load the merged model written next to it "
                   r"\(.*merged\.pt\)")
    with pytest.raises(SystemExit, match=r"^error: give SOURCE and OUT_DIR: python export\.py SOURCE OUT_DIR"):
        export.main([str(tmp_path / 'merged.pt')])
    (tmp_path / 'afile').write_text('x')   # an OUT_DIR that cannot be a folder: one line
    error_of(export.main, [str(tmp_path / 'merged.pt'), str(tmp_path / 'afile' / 'out')],
             match=r"could not create .*afile/out")
    # --check without transformers: the one line comes before the folder is written
    monkeypatch.setitem(sys.modules, 'transformers', None)   # import transformers now raises ImportError
    error_of(export.main, [str(tmp_path / 'merged.pt'), str(tmp_path / 'out3'), '--check'],
             match=r"--check needs transformers \(.*\): pip install -r requirements-test\.txt")
    assert not (tmp_path / 'out3').exists()


def char_checkpoint(path, seed=16, chars=None, **kw):
    chars = chars or ''.join(chr(ord('0') + i) for i in range(V))   # '0' ... 'o': holds 'abc'
    m = tiny_gpt(seed, vocab_size=len(chars), **kw)
    save_atomic(gpt_checkpoint(m, tokenizer={'tokenizer': 'char', 'chars': chars}), str(path))
    return m, chars


def run_sample(*argv):
    return sample.sample(sample.parse_args(list(argv)))


def test_sample_char_checkpoint(tmp_path, capsys):
    """sample.py on a checkpoint with a character vocabulary: the prompt, then max_new_tokens
    characters of that vocabulary; the same seed gives the same samples, another seed others; the
    exported folder samples the same text; --start=FILE:path reads the prompt."""
    path = tmp_path / 'ckpt.pt'
    m, chars = char_checkpoint(path)
    args = (f'--init_from={path}', '--start=abc', '--num_samples=2', '--max_new_tokens=12', '--device=cpu')
    a = run_sample(*args, '--seed=1')
    assert len(a) == 2 and all(s.startswith('abc') and len(s) == 15 and set(s) <= set(chars) for s in a)
    assert a[0] != a[1]
    assert run_sample(*args, '--seed=1') == a
    assert run_sample(*args, '--seed=2') != a
    torch.manual_seed(1)   # what sample.py computes, by hand
    x = torch.tensor([[chars.index(c) for c in 'abc']])
    ids = m.generate(x, 12, temperature=0.8, top_k=200)[0].tolist()
    assert a[0] == ''.join(chars[i] for i in ids)
    greedy = run_sample(*args, '--top_k=1')
    assert greedy[0] == greedy[1]
    m.save_pretrained(str(tmp_path / 'export'), tokenizer={'tokenizer': 'char', 'chars': chars})
    assert run_sample(*args, '--seed=1', f'--init_from={tmp_path / "export"}') == a
    (tmp_path / 'prompt.txt').write_text('abc')
    assert run_sample(*args, '--seed=1', f'--start=FILE:{tmp_path / "prompt.txt"}') == a
    sample.main(list(args))
    assert capsys.readouterr().out.count('---------------\n') == 2


def test_sample_options_mean_what_they_say(tmp_path):
    """--top_k=0 samples among all tokens (generate with top_k=None), --top_k=k among k,
    --temperature divides the logits, --num_samples draws one after another from one seed."""
    path = tmp_path / 'ckpt.pt'
    m, chars = char_checkpoint(path, seed=26)
    x = torch.tensor([[chars.index(c) for c in 'abc']])
    for top_k, temperature in ((0, 1.3), (3, 0.6)):
        got = run_sample(f'--init_from={path}', '--start=abc', '--num_samples=2', '--max_new_tokens=10',
                         f'--top_k={top_k}', f'--temperature={temperature}', '--seed=5')
        torch.manual_seed(5)
        want = [''.join(chars[i] for i in m.generate(x, 10, temperature=temperature, top_k=top_k or None)[0].tolist())
                for _ in range(2)]
        assert got == want, (top_k, temperature)


def test_sample_gpt2_checkpoint(tmp_path):
    """sample.py on a GPT-2 BPE checkpoint (data/tokenizer.py, offline): the prompt is encoded with
    GPT-2's tokenizer and the sample decodes back to text starting with it; deterministic."""
    m = tiny_gpt(17, vocab_size=hf.GPT2_VOCAB, n_embd=8, n_head=2)
    path = tmp_path / 'ckpt.pt'
    save_atomic(gpt_checkpoint(m, tokenizer={'tokenizer': 'gpt2'}), str(path))
    args = (f'--init_from={path}', '--start=Hello, world', '--num_samples=1', '--max_new_tokens=5', '--seed=3')
    a = run_sample(*args)
    assert a == run_sample(*args) and a[0].startswith('Hello, world')
    enc = tokenizer.gpt2()
    torch.manual_seed(3)
    ids = m.generate(torch.tensor([enc.encode('Hello, world')]), 5, temperature=0.8, top_k=200)
    assert a[0] == enc.decode(ids[0].tolist())
    assert len(run_sample(f'--init_from={path}', '--start=', '--max_new_tokens=3')) == 3   # from <|endoftext|>


def test_sample_pc_checkpoint(arm_runs, tmp_path):
    """A PC run's ckpt.pt is rebuilt over its base and merged: it samples what its merged.pt samples.
    Without tokenizer information (the test dataset names none) it is one line."""
    pc_ckpt = os.path.join(arm_runs['pc'], 'ckpt.pt')
    error_of(run_sample, f'--init_from={pc_ckpt}', match=r"does not say which tokenizer it was trained with")
    chars = ''.join(chr(ord('0') + i) for i in range(VOCAB))
    paths = {}
    shutil.copytree(arm_runs['pc'], tmp_path / 'run')   # ckpt.pt names its shares of P and R beside it
    for name in ('ckpt.pt', 'merged.pt'):
        ckpt = without_hash(torch.load(os.path.join(arm_runs['pc'], name), weights_only=True))
        ckpt['tokenizer'] = dict(tokenizer='char', chars=chars)
        paths[name] = str(tmp_path / 'run' / name)
        torch.save(ckpt, paths[name])
    args = ('--start=0123', '--num_samples=2', '--max_new_tokens=8')
    a = run_sample(f"--init_from={paths['ckpt.pt']}", *args)
    assert a == run_sample(f"--init_from={paths['merged.pt']}", *args)


def test_sample_bad_inputs(tmp_path):
    """One line each: characters outside the vocabulary, an empty prompt for a character model, a
    missing prompt file, unknown or malformed options, a missing checkpoint."""
    path = tmp_path / 'ckpt.pt'
    char_checkpoint(path)
    ok = f'--init_from={path}'
    error_of(run_sample, ok, '--start=héllo!', match=r"characters the model's vocabulary lacks: '!', 'é'")
    error_of(run_sample, ok, '--start=', match=r"--start is empty")
    error_of(run_sample, ok, '--device=gpu', match=r"device='gpu' is not supported")
    error_of(run_sample, ok, '--temperature=1e999', match=r"--temperature=inf must be at least 0\.001 and finite")
    error_of(run_sample, ok, '--temperature=1e-40', match=r"must be at least 0\.001 .*--top_k=1")
    error_of(run_sample, ok, f'--seed={2 ** 70}', match=r"--seed=\d+ must be in")
    error_of(run_sample, ok, f'--start=FILE:{tmp_path / "none.txt"}', match=r"could not read the prompt file")
    error_of(sample.parse_args, ['--topk=5'], match=r"unknown setting 'topk'.*did you mean 'top_k'")
    error_of(sample.parse_args, ['--top_k=five'], match=r"top_k='five' in the command line should be an int")
    error_of(sample.parse_args, ['start=abc'], match=r"should look like --key=value")
    error_of(run_sample, ok, '--temperature=0', match=r"--temperature=0\.0 must be at least 0\.001")
    error_of(run_sample, match=r"give --init_from=")
    error_of(run_sample, f'--init_from={tmp_path / "nope.pt"}', match=r"does not exist")
    error_of(run_sample, '--init_from=gpt-5', match=r"--init_from=gpt-5 is no checkpoint \(\.pt\), model folder "
             r"or pretrained name \(gpt2, gpt2-medium, gpt2-large, gpt2-xl\)")
    m = tiny_gpt(18)
    save_atomic(gpt_checkpoint(m), str(tmp_path / 'old.pt'))   # from before checkpoints kept a tokenizer
    error_of(run_sample, f"--init_from={tmp_path / 'old.pt'}", match=r"does not say which tokenizer")


# ==================================================================================================
# eval.py: lm-eval's tasks scored with gpt.py's GPT, offline (tasks written here, local JSON data)
# ==================================================================================================

def lm_eval_tasks(folder, mc_docs, ppl_docs):
    """A multiple-choice task and a perplexity task in lm-eval's YAML format over local JSON lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (('mc', mc_docs), ('ppl', ppl_docs)):
        (folder / f'{name}.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs))
    (folder / 'tiny_mc.yaml').write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / 'tiny_ppl.yaml').write_text(
        f"task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'ppl.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n")
    return str(folder)


def log_p(m, ids, start, end, first=0, greedy=False):
    """sum of log p(ids[j] | ids[first:j]) for j in [start, end), one forward per token (gpt.py's
    last-position logits): a computation apart from eval.py's batched, padded one. greedy: also
    which of the ids[j] are the most likely token."""
    total, argmax = 0.0, []
    for j in range(start, end):
        logits = m(torch.tensor([ids[first:j]]))[0][0, -1]
        total += torch.log_softmax(logits.double(), -1)[ids[j]].item()
        argmax.append(logits.argmax().item() == ids[j])
    return (total, argmax) if greedy else total


def bpe_model(tmp_path, seed=23):
    m = random_weights(tiny_gpt(seed, vocab_size=hf.GPT2_VOCAB, n_embd=16, n_head=2), seed)
    save_atomic(gpt_checkpoint(m, tokenizer={'tokenizer': 'gpt2'}), str(tmp_path / 'm.pt'))
    return m, str(tmp_path / 'm.pt')


def test_eval_scores_are_gpt_log_likelihoods(tmp_path, monkeypatch):
    """eval.py through lm-eval on a tiny GPT-2-BPE model: every multiple-choice loglikelihood is
    log p(continuation | context) by gpt.py (the last block_size + 1 tokens when it is longer),
    accuracy is the share of questions whose right answer scores highest, every rolling
    loglikelihood is log p(text) over disjoint windows of block_size tokens, and the perplexity
    lm-eval reports comes from them; the JSON written is the table's numbers."""
    import eval as evaluation
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    m, path = bpe_model(tmp_path)
    enc = tokenizer.gpt2()
    words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', '.']
    rng = np.random.RandomState(0)
    mc = [dict(question=' '.join(rng.choice(words, 3 + 5 * i)), choices=['cat', 'dog ran', 'mat .'], label=i % 3)
          for i in range(4)]   # the last two questions are longer than the context: truncated
    for q in (' '.join(rng.choice(words, 4)) for _ in range(50)):   # and one answer the model finds greedily
        nxt = m(torch.tensor([enc.encode(q)]))[0][0, -1].argmax().item()
        text = enc.decode([nxt])
        if text.startswith(' ') and text[1:].strip() == text[1:] and enc.encode(q + text) == enc.encode(q) + [nxt]:
            mc.append(dict(question=q, choices=['cat', text[1:]], label=1))
            mc.append(dict(question=q, choices=['cat', text[1:] + ' mat'], label=1))   # greedy, then not
            break
    assert len(mc) == 6
    ppl = [dict(text=' '.join(rng.choice(words, n))) for n in (5, 20, 40)]   # one, two and three windows
    tasks = lm_eval_tasks(tmp_path / 'tasks', mc, ppl)
    out = tmp_path / 'r.json'
    results = evaluation.main([f'--model={path}', '--tasks=tiny_mc,tiny_ppl', f'--include_path={tasks}',
                               '--batch_size=3', f'--out={out}'])
    right, greedy_seen = 0, set()
    for sample in results['samples']['tiny_mc']:
        doc = sample['doc']
        scores = []
        for (ctx, cont), (ll, is_greedy) in zip(sample['arguments'], sample['filtered_resps']):
            assert ctx == doc['question'] and cont == ' ' + doc['choices'][len(scores)]
            whole, n_ctx = enc.encode(ctx + cont), len(enc.encode(ctx))
            start = max(0, len(whole) - (T + 1))   # one window: the last block_size + 1 tokens
            want, argmax = log_p(m, whole, n_ctx, len(whole), first=start, greedy=True)
            assert ll == pytest.approx(want, abs=1e-5) and is_greedy == all(argmax)   # every token
            greedy_seen.add((all(argmax), any(argmax)))
            scores.append(ll)
        right += int(np.argmax(scores)) == doc['label']
    assert any(len(enc.encode(d['question'])) > T for d in mc)
    assert greedy_seen == {(True, True), (False, True), (False, False)}   # all, some and none of the tokens greedy
    assert results['results']['tiny_mc']['acc,none'] == pytest.approx(right / len(mc))
    total_ll, total_words = 0.0, 0
    for sample in results['samples']['tiny_ppl']:
        text = sample['doc']['text']
        ids = enc.encode(text)
        ll = log_p(m, [tokenizer.EOT] + ids, 1, min(T, len(ids)) + 1)   # the first window, after <|endoftext|>
        for a in range(T, len(ids), T):   # each later window: T tokens ending before its last target
            e = min(a + T, len(ids))
            ll += log_p(m, ids, a, e, first=e - T - 1)
        assert sample['filtered_resps'][0] == pytest.approx(ll, abs=1e-4)
        total_ll, total_words = total_ll + ll, total_words + len(text.split())
    assert max(len(enc.encode(d['text'])) for d in ppl) > 2 * T
    assert results['results']['tiny_ppl']['word_perplexity,none'] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-6)
    saved = json.loads(out.read_text())
    assert saved['results']['tiny_mc']['acc,none'] == results['results']['tiny_mc']['acc,none']
    assert 'samples' not in saved and saved['average_acc'] == results['results']['tiny_mc']['acc,none']


def test_eval_generate_until_is_greedy_gpt(tmp_path):
    """generate_until continues greedily with gpt.py's argmax, stops after max_gen_toks tokens or
    at the first 'until' string, and returns the text before it."""
    import eval as evaluation
    m, _ = bpe_model(tmp_path, seed=24)
    enc = tokenizer.gpt2()
    lm = evaluation.gpt_lm(m, {'tokenizer': 'gpt2'})
    ctx = 'the cat sat'
    ids = greedy(m, torch.tensor([enc.encode(ctx)]), 6)[0].tolist()[len(enc.encode(ctx)):]
    text = enc.decode(ids)
    req = lambda until: SimpleNamespace(args=(ctx, {'until': until, 'max_gen_toks': 6}))
    stop = enc.decode(ids[3:4])
    assert lm.generate_until([req(['never-in-the-text']), req([stop])]) == [text, text.split(stop)[0]]
    assert len(text.split(stop)[0]) < len(text)


def test_eval_bad_inputs(tmp_path, monkeypatch):
    """One line each, and an unknown task is named before any model is loaded: no --model, a
    missing model, an empty or unknown task list, bad numbers, an --out that is no .json file, a
    character model asked about text outside its vocabulary, a model that names no tokenizer."""
    import eval as evaluation
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    real_manager = evaluation.task_manager
    tasks = lm_eval_tasks(tmp_path / 'tasks', [dict(question='ab', choices=['a', 'b'], label=0)],
                          [dict(text='abba')])
    run_eval = lambda *a: evaluation.main(list(a))
    t = f'--include_path={tasks}'
    # lm-eval's own 14,000 tasks take 15 s to index: here the registry is the tasks written above
    monkeypatch.setattr(evaluation, 'task_manager', lambda path, defaults: real_manager(path, False))
    error_of(run_eval, '--tasks=tiny_mc', t, match=r"give --model=")
    error_of(run_eval, '--model=gpt-5', match=r"--model=gpt-5 is no checkpoint \(\.pt\), model folder or pretrained name")
    error_of(run_eval, f'--model={tmp_path / "none.pt"}', '--tasks=tiny_nope', t, match=r"lm-eval has no task 'tiny_nope';")
    # a task file with a YAML syntax error: lm-eval skips it, so the line names the file
    shutil.copytree(tasks, tmp_path / 'broken')
    (tmp_path / 'broken' / 'tiny_bad.yaml').write_text('task: tiny_bad\ndataset_kwargs: {data_files: [x\n')
    error_of(run_eval, f'--model={tmp_path / "none.pt"}', '--tasks=tiny_bad', f'--include_path={tmp_path / "broken"}',
             match=r"no task 'tiny_bad', and .*tiny_bad\.yaml in --include_path is not valid YAML \(line 3, column 1: expected ','")
    # ... but a misspelt name is not blamed on a broken file that does not name it
    error_of(run_eval, f'--model={tmp_path / "none.pt"}', '--tasks=tiny_nope', f'--include_path={tmp_path / "broken"}',
             match=r"lm-eval has no task 'tiny_nope'; `python -m lm_eval ls tasks` lists them")
    error_of(run_eval, f'--model={tmp_path / "none.pt"}', '--tasks=tiny_mc', t, match=r"checkpoint '.*none\.pt' does not exist")
    error_of(run_eval, f'--model={tmp_path / "none.pt"}', '--tasks=,', match=r"--tasks is empty")
    error_of(run_eval, '--model=x.pt', '--limit=-1', match=r"--limit=-1 must not be negative")
    error_of(run_eval, '--model=x.pt', '--batch_size=0', match=r"--batch_size=0 must be positive")
    error_of(run_eval, '--model=x.pt', f'--out={tmp_path}', match=r"should name a \.json file")
    error_of(run_eval, '--model=x.pt', f'--include_path={tmp_path / "nope"}', match=r"is not a folder of task YAML")
    char_checkpoint(tmp_path / 'char.pt', chars=''.join(chr(ord('0') + i) for i in range(V)))
    error_of(run_eval, f'--model={tmp_path / "char.pt"}', '--tasks=tiny_mc', t,
             match=r"characters the model's vocabulary lacks: ' '")
    save_atomic(gpt_checkpoint(tiny_gpt(25)), str(tmp_path / 'old.pt'))
    error_of(run_eval, f'--model={tmp_path / "old.pt"}', '--tasks=tiny_mc', t, match=r"does not say which tokenizer")
    # what lm-eval itself cannot do: one line each, not its traceback
    _, bpe = bpe_model(tmp_path)
    error_of(run_eval, f'--model={bpe}', '--tasks=tiny_mc', t, '--num_fewshot=5',
             match=r"lm-eval refused --tasks=tiny_mc with --num_fewshot=5: ")   # one example only
    (tmp_path / 'tasks' / 'mc.jsonl').unlink()   # a task whose data file is gone (as a dataset not downloaded)
    error_of(run_eval, f'--model={bpe}', '--tasks=tiny_mc', t, match=r"lm-eval could not read a task's data "
             r"\(FileNotFoundError: .*without network, fetch the datasets once")
    (tmp_path / 'afile').write_text('x')
    error_of(run_eval, f'--model={bpe}', '--tasks=tiny_ppl', t, f'--out={tmp_path / "afile" / "r.json"}',
             match=r"--out=.*afile cannot be written: .*afile is a file; pick another --out")
    evaluation.main([f'--model={bpe}', '--tasks=tiny_ppl', t, f'--out={tmp_path / "new" / "dir" / "r.json"}'])
    assert (tmp_path / 'new' / 'dir' / 'r.json').exists()   # a missing folder is made


def test_eval_average_counts_each_task_once():
    """The average accuracy leaves out a group's own row, which repeats its tasks' accuracy."""
    import eval as evaluation
    results = dict(results={'grp': {'acc,none': 0.5}, 'a': {'acc,none': 0.2}, 'b': {'acc,none': 0.8},
                            'ppl': {'word_perplexity,none': 9.0}},
                   group_subtasks={'grp': ['a', 'b'], 'a': [], 'b': [], 'ppl': []})
    assert evaluation.average_acc(results) == pytest.approx(0.5) and 'grp' not in evaluation.leaf_tasks(results)
    results['results']['grp']['acc,none'] = 0.9   # a group's own figure changes nothing
    assert evaluation.average_acc(results) == pytest.approx(0.5)


def test_compare_eval_tasks(tmp_path, capsys, monkeypatch):
    """compare.py --eval_tasks scores each raced run's final model (a PC run's merged.pt, an HPR
    run's ckpt.pt) and the base with eval.py, writes each run's eval.json, and adds a table whose
    every cell is that run's score, the better of each PC/HPR pair in bold (higher accuracy, lower
    perplexity); a second call reuses every score."""
    import eval as evaluation
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    ds = write_dataset(tmp_path / 'ds')
    chars = ' abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU'
    assert len(chars) == VOCAB
    meta_path = tmp_path / 'ds' / 'meta.json'
    meta_ = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta_, tokenizer='char', chars=chars)))
    tasks = lm_eval_tasks(tmp_path / 'tasks', [dict(question=q, choices=['abc', 'xyz q'], label=i % 2)
                                               for i, q in enumerate(['the cat', 'a dog ran', 'on a mat'])],
                          [dict(text='the cat sat on a mat'), dict(text='a dog ran')])
    args = tiny_compare_args(tmp_path, ds, '--budgets=3', '--levels=0.5', '--eval_tasks=tiny_mc,tiny_ppl',
                             f'--eval_include_path={tasks}')
    race = compare.main(args)
    md = (tmp_path / 'cmp' / 'compare.md').read_text()
    table = md[md.index('**Downstream'):].split('\n\n')[1].splitlines()
    assert table[0] == '| importance | compression | base | arm | steps | tiny_mc (acc) | tiny_ppl (word_perplexity) | mean acc |'
    base_rec = json.loads((tmp_path / 'cmp' / 'eval_base_final.json').read_text())
    assert table[2].startswith('| | | final | base | | ') and f"{base_rec['scores']['tiny_mc']['acc']:.4f}" in table[2]
    rows = {}
    for r in race:
        rec = json.loads(open(os.path.join(r['out_dir'], 'eval.json')).read())
        if r['arm'] == 'pc':   # what was scored is the run's merged model
            direct = evaluation.evaluate(evaluation.parse_args([f"--model={os.path.join(r['out_dir'], 'merged.pt')}",
                                                                '--tasks=tiny_mc,tiny_ppl', f'--include_path={tasks}']))
            assert rec['scores'] == evaluation.scores(direct)
        rows[r['arm']] = (rec['scores']['tiny_mc']['acc'], rec['scores']['tiny_ppl']['word_perplexity'])
    lines = {a: next(l for l in table if f"| {a.upper()} | 3 |" in l) for a in ('hpr', 'pc')}
    for a, other in (('hpr', 'pc'), ('pc', 'hpr')):
        cells = [c.strip() for c in lines[a].split('|')[6:9]]
        acc, ppl = rows[a]
        want_acc = f"**{acc:.4f}**" if acc >= rows[other][0] else f"{acc:.4f}"
        want_ppl = f"**{ppl:.4f}**" if ppl <= rows[other][1] else f"{ppl:.4f}"
        assert cells[:2] == [want_acc, want_ppl]
        assert cells[2].strip('*') == f"{acc:.4f}"   # the mean over the one accuracy task
    capsys.readouterr()
    compare.main(args)
    assert '== lm-eval' not in capsys.readouterr().out
    error_of(compare.main, args + ['--eval_limit=-1', f'--out_dir={tmp_path / "other"}'],
             match=r"--eval_limit=-1 must not be negative")   # before any run
    error_of(compare.main, args + ['--eval_tasks=,', f'--out_dir={tmp_path / "other"}'],
             match=r"^error: --eval_tasks is empty")            # in compare.py's option names
    assert not (tmp_path / 'other').exists()
    # a task edited since the runs were scored is scored again
    (tmp_path / 'tasks' / 'mc.jsonl').write_text(''.join(json.dumps(dict(question='the cat', choices=['abc', 'xyz q'],
                                                                          label=0)) + '\n' for _ in range(2)))
    capsys.readouterr()
    compare.main(args)
    assert capsys.readouterr().out.count('== lm-eval') == 3   # the two arms and the base

