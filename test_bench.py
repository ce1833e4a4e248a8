"""
Smoke test of bench.py at its smallest size (--quick): every table column and JSON key is there and
every measured number is positive and finite. Never a timing threshold: this machine is shared.
"""
import json
import math
import os

import bench

STEP_KEYS = ['batch_size', 'micro_batches', 'tokens_per_step', 'hpr_s', 'pc_s', 'naive_s',
             'pc_over_hpr', 'naive_over_hpr', 'naive_over_pc', 'pc_over_hpr_min', 'pc_over_hpr_model',
             'samples']
FIXED_KEYS = ['materialize', 'copy_wc', 'backward_projections', 'projection_phase', 'adamw_pc',
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
    """One layer, both axes compressed, counted by hand in pc.Projection's order."""
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
           + mm(D, F, f) + mm(d, D, f) + d * f)             # mlp.c_proj
    bwd = (mm(V, D, d) + mm(T, D, d) + mm(3 * A, D, d) + mm(d, D, A)
           + mm(F, D, d) + 2 * mm(f, F, d) + mm(D, F, f) + 2 * mm(d, D, f))
    assert bench.projection_flops(cfg, small) == (fwd, bwd)
