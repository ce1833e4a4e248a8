"""
Projected Compression (PC) and hard pruning (HPR) for the GPT of gpt.py.

PC shrinks the residual width D -> d and every block's MLP width F -> f. For each frozen base matrix
W (torch layout: out x in) it trains small projections and a residual, and never changes W:

    W_c = P_out @ W @ P_in + R      P_in: in x in_c,  P_out: out_c x out,  R: out_c x in_c

A matrix with only one compressed axis keeps only that side's projection. The compressed model is an
ordinary GPT whose matrices are the W_c. Each P starts as the 0/1 matrix that selects the dimensions
hard pruning would keep, and R starts at zero, so at step 0 PC *is* the hard-pruned model; training
then lets every base dimension leak back in through P.

Why it costs what HPR costs (the paper's section 3.4): per optimizer step we compute every W_c once,
load the values into the compressed GPT, run all micro-batches through that plain GPT exactly as HPR
would, and only then push the accumulated dL/dW_c through the small saved graph into P and R. The
projection work is a fixed cost per step, independent of the number of tokens.

    projected = ProjectedGPT(base, keep)   # P, R and the compressed GPT they feed
    projected.materialize()                # W_c = P_out W P_in + R, once per step
    for x, y in micro_batches:             # plain GPT forward/backward, like HPR
        loss = projected.gpt(x, y)[1] / n; loss.backward()
    projected.backward_projections()       # dL/dW_c -> dL/dP, dL/dR, one autograd call
    optimizer.step()
"""
import re
from dataclasses import replace

import torch
import torch.nn as nn

from gpt import GPT, param_counts

# The one table everything below reads. For each GPT tensor (block index written as '*'), the role of
# each axis: 'D' = residual width, 'F' = that block's MLP width, None = kept as is (vocabulary,
# positions, attention width). Importance, pruning, projection and merge all follow it.
AXES = {
    'transformer.wte.weight':             (None, 'D'),   # vocab x D
    'transformer.wpe.weight':             (None, 'D'),   # positions x D
    'transformer.h.*.ln_1.weight':        ('D',),
    'transformer.h.*.ln_1.bias':          ('D',),
    'transformer.h.*.attn.c_attn.weight': (None, 'D'),   # 3*attention width x D
    'transformer.h.*.attn.c_attn.bias':   (None,),
    'transformer.h.*.attn.c_proj.weight': ('D', None),   # D x attention width
    'transformer.h.*.attn.c_proj.bias':   ('D',),
    'transformer.h.*.ln_2.weight':        ('D',),
    'transformer.h.*.ln_2.bias':          ('D',),
    'transformer.h.*.mlp.c_fc.weight':    ('F', 'D'),
    'transformer.h.*.mlp.c_fc.bias':      ('F',),
    'transformer.h.*.mlp.c_proj.weight':  ('D', 'F'),
    'transformer.h.*.mlp.c_proj.bias':    ('D',),
    'transformer.ln_f.weight':            ('D',),
    'transformer.ln_f.bias':              ('D',),
    'lm_head.weight':                     (None, 'D'),   # vocab x D (absent when tied to wte)
}


def pattern(name):
    """The table key of a GPT tensor name: its block index written as '*'."""
    return re.sub(r'\.h\.\d+\.', '.h.*.', name)


def axes_of(name):
    return AXES[pattern(name)]


def layer_of(name):
    m = re.search(r'\.h\.(\d+)\.', name)
    return int(m.group(1)) if m else None


def kept(keep, role, layer):
    """Indices kept along an axis of this role (None: the axis is not compressed)."""
    if role is None:
        return None
    return keep['D'] if role == 'D' else keep['F'][layer]


def prune_tensor(name, w, keep):
    """The hard-pruned slice of one tensor: the kept entries along every compressed axis."""
    for axis, role in enumerate(axes_of(name)):
        idx = kept(keep, role, layer_of(name))
        if idx is not None:
            w = w.index_select(axis, idx.to(w.device))
    return w


# ----------------------------------------------------------------------------------------------
# Importance: one score per residual dimension (shared by all layers), one per MLP unit per layer.

# c_attn holds the query, key and value matrices stacked along its output axis; magnitude importance
# takes their column norms as three matrices, as a model with separate q, k, v projections would.
STACKED = {'transformer.h.*.attn.c_attn.weight': 3}
# Where activation importance reads |output|: the residual stream as the attention and the MLP read it
# (after ln_1 and ln_2), and every MLP unit before its nonlinearity (c_fc's output), as Minitron does.
ACTIVATION_POINTS = {'activation': {'ln_1': 'D', 'ln_2': 'D', 'mlp.c_fc': 'F'},
                     'activation_gelu': {'ln_1': 'D', 'ln_2': 'D', 'ln_f': 'D', 'mlp.gelu': 'F'}}
METHODS = ('magnitude', 'magnitude_scaled', 'activation', 'activation_gelu', 'random')


@torch.no_grad()
def importance(model, method, batches=None, seed=0):
    """Scores {'D': (D,), 'F': (n_layer, F)}; higher means more important.
    magnitude:        for every matrix that reads or writes a dimension, the L2 norm of the weights
                      it has along that dimension (a column for readers, a row for writers); D: the
                      mean over matrices (q, k and v counted one by one), F: the sum of the MLP's two
                      (the authors' definition, with GPT-2's position embedding as one more reader);
    magnitude_scaled: the same norms, each matrix's scaled to mean 1 first, q, k, v fused, so that no
                      single matrix (the big embeddings) decides;
    activation:       sum of |activation| on calibration batches after ln_1 and ln_2 (residual
                      dimensions) and at c_fc's output before the GELU (MLP units), as Minitron;
    activation_gelu:  the same, after every LayerNorm (ln_f too) and after the GELU;
    random:           a seeded random score, i.e. a random permutation."""
    cfg = model.config
    D = torch.zeros(cfg.n_embd)
    Fs = torch.zeros(cfg.n_layer, cfg.d_ff)
    def add(role, layer, s):
        (D if role == 'D' else Fs[layer]).add_(s.float().cpu())
    if method in ('magnitude', 'magnitude_scaled'):
        scaled, n_readers_writers = method == 'magnitude_scaled', 0
        for name, w in model.named_parameters():
            parts = 1 if scaled else STACKED.get(pattern(name), 1)
            for axis, role in enumerate(axes_of(name)):
                if w.dim() == 2 and role is not None:
                    for part in w.float().chunk(parts, dim=1 - axis):
                        norms = part.norm(dim=1 - axis)
                        add(role, layer_of(name), norms / norms.mean() if scaled else norms)
                        n_readers_writers += role == 'D'
        if not scaled:
            D /= n_readers_writers   # the mean over the matrices that read or write D (q, k, v one by one)
    elif method in ACTIVATION_POINTS:
        if not batches:
            raise SystemExit(f"error: importance={method} needs calibration batches")
        points, hooks = ACTIVATION_POINTS[method], []
        for name, mod in model.named_modules():
            role = next((r for suffix, r in points.items() if name.endswith(suffix)), None)
            if role:
                hook = lambda m, i, out, r=role, l=layer_of(name + '.'): add(r, l, out.abs().sum((0, 1)))
                hooks.append(mod.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            for x, _ in batches:
                model(x.to(next(model.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
    elif method == 'random':
        g = torch.Generator().manual_seed(seed)
        D, Fs = torch.rand(cfg.n_embd, generator=g), torch.rand(cfg.n_layer, cfg.d_ff, generator=g)
    else:
        raise SystemExit(f"error: unknown importance '{method}'; use one of {', '.join(METHODS)}")
    return {'D': D, 'F': Fs}


def select(scores, n_embd, d_ff):
    """Keep the top-scoring dimensions, in their original order: {'D': (d,), 'F': (n_layer, f)}."""
    top = lambda s, k: s.topk(k, dim=-1).indices.sort(dim=-1).values
    return {'D': top(scores['D'], n_embd), 'F': top(scores['F'], d_ff)}


# ----------------------------------------------------------------------------------------------
# Widths: from a target compression (fraction of the base's parameters removed, embeddings
# included, as the paper counts it) with d/D = f/F, or explicit.

def compressed_config(cfg, compression=None, n_embd=None, d_ff=None, multiple_of=1):
    """(GPTConfig of the compressed model, fraction of parameters actually removed)."""
    D, Fw = cfg.n_embd, cfg.d_ff
    shrink = lambda d, f: replace(cfg, n_embd=d, d_ff=f, head_dim=cfg.head_dim)
    removed = lambda c: 1 - param_counts(c)['total'] / param_counts(cfg)['total']
    if compression is not None and (n_embd is not None or d_ff is not None):
        raise SystemExit("error: give either compression or explicit widths (n_embd, d_ff), not both")
    if compression is not None:
        if not 0 < compression < 1:
            raise SystemExit(f"error: compression={compression} is impossible: it is the fraction of "
                             f"parameters to remove, strictly between 0 and 1 (e.g. 0.5)")
        # try every residual width on the grid (MLP width in proportion) and keep the closest
        candidates = [shrink(d, max(1, round(d * Fw / D))) for d in range(multiple_of, D, multiple_of)]
        if not candidates:
            raise SystemExit(f"error: n_embd={D} leaves no width below it in steps of {multiple_of}")
        best = min(candidates, key=lambda c: abs(removed(c) - compression))
        if abs(removed(best) - compression) > 0.05:
            raise SystemExit(f"error: compression={compression} is out of reach for this base: the "
                             f"closest width n_embd={best.n_embd} removes {removed(best):.3f}")
        return best, removed(best)
    if n_embd is None and d_ff is None:
        raise SystemExit("error: give compression=<fraction> or explicit widths n_embd / d_ff")
    d = n_embd if n_embd is not None else max(1, round(d_ff * D / Fw))
    f = d_ff if d_ff is not None else max(1, round(d * Fw / D))
    if not (0 < d <= D and 0 < f <= Fw):
        raise SystemExit(f"error: compressed widths n_embd={d}, d_ff={f} must be positive and at most "
                         f"the base's n_embd={D}, d_ff={Fw}")
    return shrink(d, f), removed(shrink(d, f))


# ----------------------------------------------------------------------------------------------
# HPR: the hard-pruned model.

@torch.no_grad()
def hard_prune(model, keep, dropout=None):
    """An ordinary smaller GPT holding the kept slices of every base tensor; retrain it normally.
    (dropout: the smaller GPT's; None keeps the base's.)"""
    cfg = replace(model.config, n_embd=len(keep['D']), d_ff=keep['F'].shape[1], head_dim=model.config.head_dim,
                  dropout=model.config.dropout if dropout is None else dropout)
    small = GPT(cfg).to(next(model.parameters()).device)
    base = dict(model.named_parameters())
    for name, p in small.named_parameters():
        p.copy_(prune_tensor(name, base[name], keep))
    return small


# ----------------------------------------------------------------------------------------------
# PC.

def selection(idx, n):
    """The 0/1 matrix (len(idx) x n) whose rows pick the kept dimensions."""
    return torch.eye(n)[idx.cpu()]


def matrix_flops(out_dim, in_dim, out_c, in_c, has_in, has_out, out_first=False):
    """(forward, backward) FLOPs of building one W_c = P_out W P_in + R and of pushing dL/dW_c into
    its projections (costs.py adds them up over the model and the processes). W is frozen, so the
    backward computes only dP (and dM, the gradient of the intermediate, when both sides are
    projected); R's gradient is dL/dW_c itself."""
    mm = lambda m, k, n: 2 * m * k * n
    if has_in and has_out:
        if out_first:   # N = P_out W (out_c x in), then N P_in: dP_in = N^T G, dN = G P_in^T, dP_out = dN W^T
            return mm(out_c, out_dim, in_dim) + mm(out_c, in_dim, in_c) + out_c * in_c, \
                mm(out_c, out_dim, in_dim) + 2 * mm(out_c, in_dim, in_c)
        # M = W P_in (out x in_c), then P_out M: dP_out = G M^T, dM = P_out^T G, dP_in = W^T dM
        return mm(out_dim, in_dim, in_c) + mm(out_c, out_dim, in_c) + out_c * in_c, \
            mm(out_dim, in_dim, in_c) + 2 * mm(out_c, out_dim, in_c)
    if has_in:
        return mm(out_dim, in_dim, in_c) + out_dim * in_c, mm(out_dim, in_dim, in_c)
    return mm(out_c, out_dim, in_dim) + out_c * in_dim, mm(out_c, out_dim, in_dim)


def out_first_is_cheaper(*shapes):
    """Whether (P_out W) P_in costs fewer FLOPs (forward + backward) than P_out (W P_in)."""
    return sum(matrix_flops(*shapes, out_first=True)) < sum(matrix_flops(*shapes, out_first=False))


class Projection(nn.Module):
    """W_c = P_out @ W @ P_in + R for one frozen base matrix W (out x in). With both projections it
    multiplies in whichever order costs fewer FLOPs for its shapes: P_out (W P_in), or (P_out W) P_in
    (cheaper for the MLP-out matrices). The matmuls run in `dtype` (the frozen base is stored in it);
    P and R stay float32 masters, and W_c is float32."""

    def __init__(self, weight, in_keep, out_keep, residual, dtype=None):
        super().__init__()
        out_dim, in_dim = weight.shape
        dev = weight.device
        # the frozen base is a buffer: never trained, and not saved (checkpoints point at the base);
        # in the base's own dtype it is the base's tensor itself (a teacher can share it), not a copy
        self.register_buffer('weight', weight.detach().to(dtype or weight.dtype), persistent=False)
        self.p_in = None if in_keep is None else nn.Parameter(selection(in_keep, in_dim).T.to(dev))
        self.p_out = None if out_keep is None else nn.Parameter(selection(out_keep, out_dim).to(dev))
        out_c, in_c = (out_dim if out_keep is None else len(out_keep), in_dim if in_keep is None else len(in_keep))
        self.r = nn.Parameter(torch.zeros(out_c, in_c, device=dev)) if residual else None
        self.out_first = out_first_is_cheaper(out_dim, in_dim, out_c, in_c, in_keep is not None,
                                              out_keep is not None)

    def forward(self):
        w = self.weight
        p_in = None if self.p_in is None else self.p_in.to(w.dtype)
        p_out = None if self.p_out is None else self.p_out.to(w.dtype)
        if p_out is not None and (p_in is None or self.out_first):
            w = p_out @ w
            p_out = None
        if p_in is not None:
            w = w @ p_in
        if p_out is not None:
            w = p_out @ w
        w = w.float()
        return w + self.r if self.r is not None else w


class ProjectedGPT(nn.Module):
    """The frozen base as projection modules, plus the compressed GPT they feed (`self.gpt`).
    Vectors (LayerNorm gains and biases, linear biases) are sliced once and trained directly inside
    `self.gpt`; its matrices are loaded from the projections once per optimizer step.

    `owned` (names of GPT matrices; None: all) is the share of the projections this process keeps:
    under torchrun each process builds, trains and steps only its own (train.py shares out the
    matrices with infra/processes.assign_owners and sends each new W_c with broadcast_wc). A matrix it does not own keeps no base slice, P or
    R here; its value in `self.gpt` is whatever it was last given (the hard-pruned slice at first:
    train.py sends every W_c before the first step uses it)."""

    def __init__(self, base, keep, residual=True, proj_dtype=None, owned=None, dropout=None):
        super().__init__()
        self.keep = {k: v.clone() for k, v in keep.items()}
        self.gpt = hard_prune(base, keep, dropout)   # vectors hold their kept entries, matrices the slices
        self.proj = nn.ModuleDict()
        self.names = []                     # the projected matrices this process owns, by GPT name
        for name, w in base.named_parameters():
            if w.dim() == 2 and (owned is None or name in owned):
                roles, layer = axes_of(name), layer_of(name)
                self.proj[name.replace('.', '_')] = Projection(
                    w, in_keep=kept(keep, roles[1], layer), out_keep=kept(keep, roles[0], layer),
                    residual=residual, dtype=proj_dtype)
                self.names.append(name)
        self.materialize(with_graph=False)   # matrices of self.gpt = W_c at step 0

    def projections(self):
        return [(n, self.proj[n.replace('.', '_')]) for n in self.names]

    def matrices(self):
        params = dict(self.gpt.named_parameters())
        return [params[n] for n in self.names]

    def named_trainable(self):
        """What the optimizer updates: projections, residuals and the compressed GPT's vectors."""
        matrices = {n for n, p in self.gpt.named_parameters() if p.dim() == 2}
        vectors = [(f'gpt.{n}', p) for n, p in self.gpt.named_parameters() if n not in matrices]
        return [(f'proj.{n}', p) for n, p in self.proj.named_parameters()] + vectors

    def materialize(self, with_graph=True):
        """Compute every W_c once and load the values into the GPT; with_graph keeps the small autograd
        graph that backward_projections needs (a step that only evaluates needs none)."""
        self._wc = [] if with_graph else None
        with torch.set_grad_enabled(with_graph):
            for (name, proj), p in zip(self.projections(), self.matrices()):
                wc = proj()
                p.data = wc.detach()   # the GPT's matrix now *is* W_c: shared memory, no second copy
                if with_graph:
                    self._wc.append(wc)

    def backward_projections(self):
        """Push the W_c gradients the micro-batches accumulated in the GPT's matrices through the
        saved graph into P and R, in one autograd call, then free them."""
        pairs = [(wc, p.grad) for wc, p in zip(self._wc, self.matrices()) if p.grad is not None]
        torch.autograd.backward([wc for wc, _ in pairs], [g for _, g in pairs])
        for p in self.gpt.parameters():
            if p.dim() == 2:
                p.grad = None
        self._wc = None

    def forward(self, idx, targets=None):
        """The naive PC forward: recompute every W_c inside each micro-batch and call the GPT with
        them. Same numbers as the cost-free step, paid once per micro-batch; for tests and bench."""
        wc = {name: proj() for name, proj in self.projections()}
        return torch.func.functional_call(self.gpt, wc, (idx, targets))

    @torch.no_grad()
    def merge(self):
        """The final plain GPT, with every W_c computed once. Save and load it like any GPT. (A
        process that owns only some projections takes the others' W_c from its GPT as last given.)"""
        merged = GPT(self.gpt.config).to(next(self.gpt.parameters()).device)
        merged.load_state_dict(self.gpt.state_dict())
        params = dict(merged.named_parameters())
        for name, proj in self.projections():
            params[name].copy_(proj())
        return merged
