"""
What PC's projections cost, counted from shapes alone (nothing is allocated: the 800M base works on
a laptop): FLOPs and bytes of each projected matrix, of the whole model, and of each process's
share under torchrun. The one cost model of the project: train.py's ownership split
(infra/processes.assign_owners), bench.py and the notebook all read it.

The paper's cost argument (section 3.4), in numbers: per optimizer step PC builds every
W_c = P_out W P_in + R once and pushes dL/dW_c into P and R once, a fixed cost that does not grow
with the tokens of the step (pc.matrix_flops counts one matrix); the rest of the step is the
compressed GPT's forward and backward, exactly HPR's.

    python -c "import costs, gpt, pc; b = gpt.preset('300m'); print(costs.model_flops(b, pc.compressed_config(b, 0.5, multiple_of=64)[0]))"
"""
import torch

import gpt
import pc
from infra import processes


def matrix_shapes(base_cfg):
    """{name: (out, in)} of every matrix of a GPT of this config (all of them are projected)."""
    with torch.device('meta'):
        base = gpt.GPT(base_cfg)
    return {name: tuple(w.shape) for name, w in base.named_parameters() if w.dim() == 2}


def projection_shape(name, out_dim, in_dim, n_embd, d_ff):
    """(out, in, out_c, in_c, has_in, has_out) of the projection of the base matrix `name` (out x in)
    when the residual width shrinks to n_embd and the MLP width to d_ff, read from pc.AXES."""
    out_role, in_role = pc.axes_of(name)
    width = {'D': n_embd, 'F': d_ff, None: None}
    return (out_dim, in_dim, width[out_role] or out_dim, width[in_role] or in_dim,
            in_role is not None, out_role is not None)


def matrix_costs(shapes, n_embd, d_ff):
    """What each base matrix's projection costs whoever holds it, {name: (out, in)} -> {name: dict}:
    forward and backward FLOPs (in the order pc.Projection picks) and the elements of its frozen base,
    of P, of R, and what autograd saves for the backward when both sides are projected: the
    intermediate (W P_in or P_out W) and the P of the second matmul (a copy of it when the
    matmuls run in another dtype than P's float32)."""
    costs = {}
    for name, (out_dim, in_dim) in shapes.items():
        s = projection_shape(name, out_dim, in_dim, n_embd, d_ff)
        out_c, in_c, has_in, has_out = s[2:]
        out_first = pc.out_first_is_cheaper(*s)
        fwd, bwd = pc.matrix_flops(*s, out_first=out_first)
        both = has_in and has_out
        costs[name] = dict(fwd=fwd, bwd=bwd, frozen=out_dim * in_dim, r=out_c * in_c,
                           p=(in_dim * in_c if has_in else 0) + (out_c * out_dim if has_out else 0),
                           inter=0 if not both else out_c * in_dim if out_first else out_dim * in_c,
                           second_p=0 if not both else in_dim * in_c if out_first else out_c * out_dim)
    return costs


def saved_elements(cost, base_bytes=4):
    """Elements autograd saves for one projection's backward (a matrix_costs entry, or a sum of
    them), in the projection dtype: the intermediate, and in bfloat16 (base_bytes 2) also the copy
    of the second matmul's P."""
    return cost['inter'] + (cost['second_p'] if base_bytes < 4 else 0)


def matrix_bytes(cost, base_bytes=4):
    """Bytes one matrix's projection holds (a matrix_costs entry): its frozen base slice and what the
    backward saves, in the projection dtype (base_bytes: 4 float32, 2 bfloat16); P and R in float32
    with gradients and AdamW's two moments (16 B each)."""
    return base_bytes * (cost['frozen'] + saved_elements(cost, base_bytes)) + 16 * (cost['p'] + cost['r'])


def model_costs(base_cfg, small_cfg):
    """matrix_costs of every matrix of the base, compressed to small_cfg's widths."""
    return matrix_costs(matrix_shapes(base_cfg), small_cfg.n_embd, small_cfg.d_ff)


def model_flops(base_cfg, small_cfg):
    """(forward, backward) FLOPs of building every W_c once and of pushing dL/dW_c into P and R."""
    costs = model_costs(base_cfg, small_cfg).values()
    return sum(c['fwd'] for c in costs), sum(c['bwd'] for c in costs)


def process_shares(base_cfg, small_cfg, world, base_bytes=4):
    """What each of `world` processes owns of PC's projections when training splits them
    (processes.assign_owners): its projection forward and backward FLOPs and its elements of frozen
    base, P, R and the saved intermediate (W_c has R's shape)."""
    costs = model_costs(base_cfg, small_cfg)
    owner = processes.assign_owners(costs, world, base_bytes)
    shares = [dict(fwd=0, bwd=0, frozen=0, p=0, r=0, inter=0, second_p=0) for _ in range(world)]
    for name, c in costs.items():
        for k in shares[owner[name]]:
            shares[owner[name]][k] += c[k]
    return shares


def static_memory(base_cfg, small_cfg, world=1, base_bytes=4):
    """Bytes one process holds besides activations (the most loaded one), fp32 and AdamW (param +
    grad + 2 states = 16 B per trained element), counted from shapes as train.py allocates them:
    every process holds the whole compressed GPT (W_c and vectors) with gradients and the vectors'
    AdamW state; PC's frozen base, P, R, their state and the saved intermediates only for the
    matrices it owns. base_bytes: 4 (float32) or 2 (proj_dtype=bfloat16). bench.py's measured
    memory arms reproduce the 1-process numbers for its model (test_bench_quick)."""
    shares = process_shares(base_cfg, small_cfg, world, base_bytes)
    n_base, n_small = gpt.param_counts(base_cfg)['total'], gpt.param_counts(small_cfg)['total']
    vectors_c = n_small - sum(s['r'] for s in shares)
    parts = max((dict(frozen_base=base_bytes * s['frozen'], projections=8 * s['p'], residuals=8 * s['r'],
                      optimizer_state=8 * (s['p'] + s['r'] + vectors_c), model_params_grads=8 * n_small,
                      # W_c itself is the GPT's matrices
                      saved_projection_graph=base_bytes * saved_elements(s, base_bytes))
                 for s in shares), key=lambda d: sum(d.values()))
    pc_bytes = sum(parts.values())
    return dict(base_bytes=16 * n_base, hpr_bytes=16 * n_small, pc_bytes=pc_bytes, pc_parts=parts,
                p_params=sum(s['p'] for s in shares), r_params=sum(s['r'] for s in shares),
                pc_over_hpr=pc_bytes / (16 * n_small), pc_over_base=pc_bytes / (16 * n_base))
