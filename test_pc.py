"""
The tests of the project, in one file:

    python -m pytest -q test_pc.py

Everything runs on CPU in float32 with tiny models and tiny data (the paper's presets are only
built on the meta device), so the whole file takes a few minutes on 2 cores. Each test says what
property it proves; equivalence tests compare numbers bit for bit or with tight tolerances.
"""
import ast
import copy
import glob
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import nbformat
import numpy as np
import pytest
import tiktoken
import torch
from nbclient import NotebookClient

import bench
import compare
import data.c4.prepare as c4_prep
import data.shakespeare.prepare as bpe_prep
import data.shakespeare_char.prepare as char_prep
import gpt
import pc
import train
from data import tokenizer
from data.loader import Batches, fixed_batches, meta, open_dataset
from gpt import (GPT, GPTConfig, PRESETS, adamw, gpt_checkpoint, load_checkpoint, load_gpt,
                 param_counts, preset, save_atomic)
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
    """If torch.save dies halfway through, save_atomic leaves the previous checkpoint intact."""
    path = str(tmp_path / 'ckpt.pt')
    m1 = tiny_gpt(1)
    save_atomic(gpt_checkpoint(m1), path)
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        with open(f, 'wb') as fh:
            fh.write(b'PK\x03\x04 half a file')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_atomic(gpt_checkpoint(tiny_gpt(2)), path)
    monkeypatch.setattr(torch, 'save', real_save)
    states_equal(load_gpt(path), m1)


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


def test_frozen_base_and_trained_projections():
    """Training never touches the frozen base (each Projection.weight buffer and the original base
    model stay bitwise equal); R starts at exactly zero and moves; every P leaves its 0/1 init."""
    base, keep, pc = make_pc(tied=False)
    base_before = copy.deepcopy(base.state_dict())
    bufs = {n: proj.weight.clone() for n, proj in pc.projections()}
    P0 = {n: p.detach().clone() for n, p in pc.proj.named_parameters()}
    params = dict(base.named_parameters())
    for n, proj in pc.projections():
        assert torch.equal(proj.weight, params[n]) and proj.weight.data_ptr() != params[n].data_ptr()
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
        t0 = time.time()
        enc = tokenizer.gpt2()
        assert time.time() - t0 < 5
    finally:
        tokenizer.gpt2.cache_clear()
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
def c4(tmp_path):
    src, out = tmp_path / "src", tmp_path / "c4"
    src.mkdir()
    texts = write_c4_shards(src)
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
    # interrupted in the middle of shard 1: its .bin never got renamed, a partial .tmp is left
    redo = out / "train" / "c4-train.00001-of-01024.bin"
    redo.unlink()
    (out / "train" / "c4-train.00001-of-01024.bin.tmp").write_bytes(b"\x01\x02\x03")
    capsys.readouterr()
    run_c4(src, out)
    printed = capsys.readouterr().out
    assert "2 shard(s) already done, 1 to do" in printed and "[1/1] train/c4-train.00001" in printed
    for p, content in before.items():
        assert p.read_bytes() == content
        assert (os.path.getmtime(p) == old) == (p != redo)  # finished shards were not rewritten
    assert not list(out.rglob("*.tmp")) and meta(out) == meta_before
    # a second run has nothing to do
    run_c4(src, out)
    assert "3 shard(s) already done, 0 to do" in capsys.readouterr().out


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
    assert "dataset not prepared" in msg and "`python data/_never_prepared/prepare.py`" in msg
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
    gpt.load_gpt(os.path.join(out, 'ckpt_early.pt'))               # a plain GPT


# ------------------------------------------------------------------------------------ resume

def test_resume_refuses_other_settings(dataset, base_run, tmp_path):
    """A resume whose model settings differ from the checkpoint's, or whose length the checkpoint
    has already passed, is refused with one line instead of training something else (or forever)."""
    out = str(tmp_path / 'r')
    run(dataset, out, arm='base', max_iters=4, eval_interval=2, stop_iter=2)
    error_of(lambda: run(dataset, out, arm='base', max_iters=4, eval_interval=2, n_layer=3,
                         init_from='resume'), match=r"other model settings: n_layer=3 \(checkpoint: 2\)")
    run(dataset, out, arm='base', max_iters=4, eval_interval=2, init_from='resume')
    error_of(lambda: run(dataset, out, arm='base', max_iters=3, eval_interval=2, init_from='resume'),
             match=r"is at iter 4, past this run's length \(3 iters\)")


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
    def materialize(self):
        calls['materialize'] += 1
        return real_materialize(self)
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
    for key in ('eval_interval', 'log_interval', 'batch_size', 'grad_accum', 'block_size'):
        error_of(go(**{**ok, key: 0}), match=rf"{key}=0 must be positive")
    error_of(go(**{**ok, 'max_iters': -3}), match=r"max_iters=-3 must not be negative")
    error_of(go(**{**pc_ok, 'proj_dtype': 'fp16'}), match=r"proj_dtype='fp16' should be auto or one of")
    error_of(go(**{**ok, 'early_ckpt_frac': 2.0}), match=r"early_ckpt_frac=2\.0 must be in \[0, 1\)")
    msg = error_of(go(**{**ok, 'tokens_per_param': 40.0}), match=r"exactly one of max_iters")
    assert 'max_iters=2, tokens_per_param=40.0' in msg and '--tokens_per_param=0' in msg
    error_of(go(**{**ok, 'n_head': 64}), match=r"n_head=64 is larger than n_embd=32")
    if not torch.cuda.is_available():
        error_of(go(**{**ok, 'device': 'cuda'}), match=r"no CUDA GPU")
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


def test_compare_bad_options(tmp_path):
    """Every option is checked before any work, each with one line: nothing is trained (a wrong
    level no longer fails only after the base), and a boolean takes only true/false spellings."""
    ds = write_dataset(tmp_path / 'ds')
    ok = tiny_compare_args(tmp_path, ds)
    cases = [(['--levels=abc'], r"--levels=abc and --budgets=.* comma-separated"),
             (['--levels=0.5,1.5'], r"strictly between 0 and 1"),
             (['--budgets=0'], r"--budgets, --last_steps and --jobs must be positive"),
             (['--last_steps=x'], r"--last_steps=x should be a int"),
             (['--early=yes'], r"--early=yes should be True or False"),
             (['--mid=1'], r"--mid=1 should be True or False"),
             (['--lrs=fast'], r"--lrs=fast should be 'tuned' or comma-separated rates"),
             (['--lrs=-1'], r"rates must be positive"),
             (['--importance=magnitude,weights'], r"--importance=magnitude,weights: use"),
             (['--importance=activation_gelu'], r"activation_gelu cannot be trained by train.py"),
             (['--compression=0.3'], r"--compression is set by compare.py .*--levels"),
             (['--learning_rate=0.1'], r"--learning_rate is set by compare.py .*--lrs"),
             (['--base.out_dir=x'], r"--base\.out_dir .*--base_dir"),
             (['--n_layerz=2'], r"unknown config key 'n_layerz'"),
             (['--proj_dtype=half'], r"proj_dtype='half'"),
             (['--base.dataset=shakespeare_char'], r"pass the dataset to both"),
             ([f'--base={tmp_path / "none.pt"}'], r"--base races from the given checkpoint only"),
             (['oops'], r"'oops' should look like --key=value")]
    for extra, match in cases:
        error_of(compare.main, ok + extra, match=match)
    error_of(compare.main, [f'--base={tmp_path / "none.pt"}'], match=r"--base=.*none\.pt does not exist")
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
    """--base races from an existing checkpoint without training one; --jobs=2 trains the arms in
    two child processes (one thread each) and gets the numbers of one process, bit for bit."""
    common = [f'--base={base_run["ckpt"]}', f'--dataset={dataset}', '--block_size=16', '--batch_size=4',
              '--eval_iters=2', '--log_interval=1', '--device=cpu', '--budgets=4', '--eval_interval=2',
              '--warmup_iters=1', '--last_steps=2']
    one = compare.main(common + [f'--out_dir={tmp_path / "one"}'])
    two = compare.main(common + [f'--out_dir={tmp_path / "two"}', '--jobs=2'])
    assert sorted(r['base'] for r in one) == ['given', 'given']
    numbers = lambda race: sorted((r['arm'], r['val_loss'], r['train_loss']) for r in race)
    assert numbers(one) == numbers(two)
    assert all(os.path.isfile(os.path.join(r['out_dir'], 'train.log')) for r in two)


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
    record by the steps it covers."""
    (tmp_path / 'metrics.jsonl').write_text(
        '{"kind": "train", "iter": 2, "loss": 4.0, "steps": 2}\n'
        '{"kind": "eval", "iter": 2, "val_loss": 9.0}\n'
        '{"kind": "train", "iter": 5, "loss": 1.0, "steps": 3}\n')
    assert compare.last_steps_loss(str(tmp_path), 3) == 1.0
    assert compare.last_steps_loss(str(tmp_path), 5) == pytest.approx((2 * 4.0 + 3 * 1.0) / 5)


def test_compare_rates():
    """--lrs takes numbers and powers of two; tables name a power of two as such."""
    assert compare.parse_rate('2^-10') == compare.parse_rate('2**-10') == 2 ** -10
    assert compare.parse_rate('0.003') == 0.003
    assert compare.rate_name(2 ** -10) == '2^-10' and compare.rate_name(0.003) == '0.003'


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
             'static_hpr_bytes', 'static_pc_bytes', 'static_pc_over_hpr', 'static_pc_over_base']
MD_HEADERS = ['tokens/step', 'HPR ms', 'PC ms', 'naive ms', 'PC/HPR', 'naive/HPR', 'naive/PC',
              'projection_phase', 'fixed_cost', 'first measured', 'interpolated', 'model', '1+fixed/HPR',
              'peak (measured)', 'frozen_base', 'saved_projection_graph', 'static (parts without activations)',
              'proj/step', 'tokens for 1%', 'PC GiB', 'PC/base']


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_quick(tmp_path):
    out = tmp_path / 'bench'
    res = bench.main(['--quick', f'--out_dir={out}'])
    on_disk = json.loads((out / 'bench_results.json').read_text())
    md = (out / 'bench_results.md').read_text()
    assert set(on_disk) == {'meta', 'timing', 'memory', 'flops'} == set(res)

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

    for h in MD_HEADERS:
        assert h in md, h
    assert positive(on_disk['meta']['wall_s'])


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
    assert bench.projection_flops(cfg, small) == (fwd, bwd)


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
    for folder in ('config', 'data'):
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
