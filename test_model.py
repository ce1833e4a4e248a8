"""Tests for gpt.py (the GPT-2 model) and pc.py (Projected Compression and hard pruning).

Everything runs on CPU in float32 with tiny models; the big presets are only ever built on the
meta device. Run with: python -m pytest -q test_model.py
"""
import sys, os; sys.path.insert(0, os.path.dirname(__file__))  # noqa: E401,E702

import copy

import pytest
import torch

from gpt import (GPT, GPTConfig, PRESETS, adamw, gpt_checkpoint, load_checkpoint, load_gpt,
                 param_counts, preset, save_atomic)
from pc import ProjectedGPT, compressed_config, hard_prune, importance, select

torch.set_num_threads(1)   # robust when other jobs share the 2 cores

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
