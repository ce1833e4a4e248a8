"""
Checkpoints: what train.py writes and reads, and how any script finds a base (a train.py checkpoint,
a model folder, a pretrained name) and its hash. A reader of the method may skip this file: it only
makes sure a run resumes exactly where it stopped, with any number of processes, and that no kill
loses the last good checkpoint. Every file is read with torch.load(..., weights_only=True).

`ckpt.pt` holds everything but PC's projections: settings, iteration, data position, RNG, the kept
dimensions, the replicated tensors (a base's or HPR's whole model; PC's vectors) and their AdamW
state, keyed by name. Each process writes its own P and R (and their AdamW state) to a file of its
own, named after the iteration and the checkpoint's token, before process 0 writes `ckpt.pt`, which
names those files: an interruption at any point leaves the previous checkpoint whole.
"""
import glob
import os
import uuid
from dataclasses import asdict

import torch
import torch.distributed as dist

import pc
from gpt import GPT, GPTConfig
from infra import hf, processes
from infra.files import check_content, file_sha256, save_checked
from infra.settings import PROJ_DTYPES


def load_checkpoint(path, map_location='cpu'):
    """Read a checkpoint written by train.py, with one clear line for the usual mistakes."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint '{path}' does not exist; train one with train.py "
                         f"or check the path")
    try:   # memory-mapped: under torchrun the processes share one copy in the page cache
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:   # truncated file, a non-torch file, a pickle with code in it
        raise SystemExit(f"error: '{path}' is not a readable checkpoint ({type(e).__name__}); "
                         f"point at a .pt file written by train.py")
    if not isinstance(ckpt, dict) or 'model_args' not in ckpt or 'model' not in ckpt:
        raise SystemExit(f"error: '{path}' is not a checkpoint written by train.py")
    check_content(ckpt, path, "restore it from a copy, or train again (without init_from=resume)")
    return ckpt


def gpt_from_state(cfg, state, where):
    """The GPT of `cfg` holding exactly the tensors of `state` (torch names and layout), on their
    device. Built on the meta device, so a big model is neither randomly initialised nor held
    twice; a state that does not fit the config is one line naming the first tensors that differ."""
    with torch.device('meta'):
        model = GPT(cfg)
    want = {k: v.shape for k, v in model.state_dict().items()}
    problems = ([f"missing {k}" for k in sorted(want.keys() - state.keys())] +
                [f"unexpected {k}" for k in sorted(state.keys() - want.keys())] +
                [f"{k} is {tuple(state[k].shape)}, not {tuple(want[k])}" for k in sorted(want.keys() & state.keys())
                 if state[k].shape != want[k]])
    if problems:
        raise SystemExit(f"error: the weights of {where} do not fit its config: "
                         f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}")
    model.load_state_dict(state, assign=True)
    if cfg.tie_embeddings:   # assign made lm_head its own Parameter: tie it again
        model.lm_head.weight = model.transformer.wte.weight
    return model


def gpt_from_checkpoint(ckpt, path):
    """The plain GPT in a checkpoint dict read by load_checkpoint (a base, HPR or merged model)."""
    if ckpt.get('kind', 'gpt') != 'gpt':
        merged = os.path.join(os.path.dirname(path), 'merged.pt')
        raise SystemExit(f"error: '{path}' is a {ckpt['kind']} training checkpoint, not a GPT; "
                         f"load the merged model written next to it ({merged})")
    args = ckpt['model_args']
    if not isinstance(args, dict) or set(args) - set(GPTConfig.__dataclass_fields__):
        raise SystemExit(f"error: '{path}' holds no GPT config (model_args): point at a checkpoint "
                         f"written by train.py")
    return gpt_from_state(GPTConfig(**args), ckpt['model'], f"'{path}'")


def load_gpt(path, map_location='cpu'):
    """A plain GPT from a train.py checkpoint (a base, an HPR run, or a merged PC model)."""
    return gpt_from_checkpoint(load_checkpoint(path, map_location), path)


def gpt_checkpoint(model, **extra):
    """The dict a plain GPT is saved as; load_gpt reads it back."""
    raw = getattr(model, 'module', model)   # unwrap DDP
    raw = getattr(raw, '_orig_mod', raw)    # unwrap torch.compile
    return dict(kind='gpt', model_args=asdict(raw.config), model=raw.state_dict(), **extra)


def load_base(spec, map_location='cpu'):
    """(GPT, info) from anything a base can be: a train.py checkpoint (.pt: a base, HPR or merged
    model), a model folder (Hugging Face's GPT-2 layout, or written by save_pretrained) or a
    pretrained name (gpt2, gpt2-medium, gpt2-large, gpt2-xl).
    info = dict(source=absolute path of the .pt or folder the weights came from (for a name: its
    folder in the Hub cache), sha256=of the weights file (the .pt or model.safetensors;
    shards: of their bytes in order),
    tokenizer={'tokenizer': 'char', 'chars': ...} or {'tokenizer': 'gpt2'}, {} when unknown)."""
    spec = str(spec)
    if os.path.isfile(spec) or spec.endswith('.pt'):
        ckpt = load_checkpoint(spec, map_location)
        model = gpt_from_checkpoint(ckpt, spec)
        tokenizer = ckpt.get('tokenizer')
        return model, dict(source=os.path.abspath(spec), sha256=file_sha256(spec),
                           tokenizer=tokenizer if isinstance(tokenizer, dict) else {})
    if not os.path.isdir(spec) and spec not in hf.PRETRAINED:
        raise SystemExit(f"error: '{spec}' is no checkpoint (.pt), model folder (config.json + "
                         f"model.safetensors) or pretrained name ({', '.join(hf.PRETRAINED)})")
    model, where = hf.load_pretrained(spec)
    return model.to(map_location), dict(source=where['source'], sha256=file_sha256(*where['files']),
                                        tokenizer=where['tokenizer'])

def check_model_spec(spec, option):
    """One line now, before any work, if the `option` setting names nothing load_model can read."""
    if not spec:
        raise SystemExit(f"error: give {option}=<checkpoint .pt, model folder, or gpt2 / gpt2-medium / "
                         f"gpt2-large / gpt2-xl>")
    if not os.path.exists(spec) and not spec.endswith('.pt') and spec not in hf.PRETRAINED:
        raise SystemExit(f"error: {option}={spec} is no checkpoint (.pt), model folder or "
                         f"pretrained name ({', '.join(hf.PRETRAINED)})")


def load_model(spec, map_location='cpu'):
    """(GPT, tokenizer) from anything a finished model can be (sample.py and eval.py take it): what
    load_base reads, plus a PC run's ckpt.pt, rebuilt over its base and merged. tokenizer is the dict
    checkpoints carry ({} when unknown); data/tokenizer.codec turns it into (encode, decode)."""
    spec = str(spec)
    check_model_spec(spec, 'model')
    if os.path.isfile(spec) or spec.endswith('.pt'):
        ckpt = load_checkpoint(spec, map_location)
        tokenizer = ckpt.get('tokenizer')
        tokenizer = tokenizer if isinstance(tokenizer, dict) else {}
        if ckpt.get('kind', 'gpt') == 'pc':
            return load_projected(spec, map_location).merge(), tokenizer
        return gpt_from_checkpoint(ckpt, spec), tokenizer
    model, where = hf.load_pretrained(spec)   # not load_base: no hashing of gpt2-xl's 6 GB
    return model.to(map_location), where['tokenizer']


def base_sha256(spec):
    """What load_base(spec) gives as info['sha256'], without building the model: a cheap check that
    a base has not changed (a name is resolved in the Hub cache, downloaded only if missing)."""
    spec = str(spec)
    if os.path.isfile(spec) or spec.endswith('.pt'):
        if not os.path.isfile(spec):
            raise SystemExit(f"error: checkpoint '{spec}' does not exist")
        return file_sha256(spec)
    if os.path.isdir(spec):
        return file_sha256(*hf.weight_files(spec))
    if spec in hf.PRETRAINED:
        return file_sha256(*hf.weight_files(hf.download(spec)))
    raise SystemExit(f"error: '{spec}' is no checkpoint (.pt), model folder (config.json + "
                     f"model.safetensors) or pretrained name ({', '.join(hf.PRETRAINED)})")


def optimizer_state(optimizer, named):
    """AdamW's state keyed by tensor name, so a run resumes with any split of the projections."""
    state = optimizer.state_dict()['state']
    by_param = {id(p): n for n, p in named}
    order = [p for g in optimizer.param_groups for p in g['params']]
    return {by_param[id(p)]: state[i] for i, p in enumerate(order) if i in state}


def load_optimizer_state(optimizer, named, saved):
    """Give AdamW back its state by tensor name. A checkpoint written before the first step has none.
    Every tensor is copied: read from a memory-mapped file, AdamW would update it in place there."""
    if not saved:
        return
    by_param = {id(p): n for n, p in named}
    order = [p for g in optimizer.param_groups for p in g['params']]
    missing = [by_param[id(p)] for p in order if by_param[id(p)] not in saved]
    if missing:
        raise SystemExit(f"error: the checkpoint has no optimizer state for {missing[0]} (and "
                         f"{len(missing) - 1} more): it was written by another kind of run")
    sd = optimizer.state_dict()
    sd['state'] = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in saved[by_param[id(p)]].items()}
                   for i, p in enumerate(order)}
    optimizer.load_state_dict(sd)   # moves each to its tensor's device, as torch does


def save_checkpoint(r, path):
    """Write the run's state to `path`, PC's projections each process's own file beside it; never
    non-finite weights, so the last good checkpoint is not replaced by a broken one."""
    named = dict(r.named)
    mine = {n: p.detach() for n, p in named.items() if n.startswith('proj.')}   # PC: this process's P, R
    rest = r.model.state_dict() if r.projected is None else \
        {n: p.detach() for n, p in named.items() if not n.startswith('proj.')}
    checked_ = [*mine.values(), *rest.values(), *r.model.parameters()]   # PC: W_c too (P W P can overflow)
    finite = torch.tensor([float(all(torch.isfinite(t).all() for t in checked_))], device=r.dev)
    if r.world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        raise SystemExit(f"error: non-finite weights at iter {r.it}; {path} is not replaced (it holds "
                         f"the last good state); lower learning_rate or check the data")
    opt = optimizer_state(r.optimizer, r.named)
    token = [uuid.uuid4().hex]   # names this checkpoint in ckpt.pt and in every share of it
    if r.world > 1:
        dist.broadcast_object_list(token, src=0)
    shards = write_shards(r, path, mine, {n: v for n, v in opt.items() if n in mine}, token[0]) if r.projected else []
    if r.master:
        write_main(r, path, rest, {n: v for n, v in opt.items() if n not in mine}, shards, token[0])


def write_shards(r, path, tensors, optim, token):
    """Every process writes its own P and R (and their AdamW state) to `<path>.<iter>.<token>.<k>of<n>`;
    the names of all of them, once every one is on disk. The token makes every checkpoint's names
    new: a resume that saves again at its checkpoint's iteration never overwrites a share that the
    ckpt.pt still on disk names."""
    shards = [f"{os.path.basename(path)}.{r.it}.{token[:12]}.{k}of{r.world}" for k in range(r.world)]
    save_checked(dict(model=tensors, optimizer=optim, saved=token), os.path.join(r.c.out_dir, shards[r.rank]))
    if r.world > 1:
        dist.barrier()        # every share is on disk before ckpt.pt names it
    return shards


def write_main(r, path, model, optim, shards, token):
    """Process 0 writes `path` itself, naming the shares (with their sizes), then removes older
    checkpoints' shares."""
    sizes = [os.path.getsize(os.path.join(r.c.out_dir, s)) for s in shards]
    save_checked(dict(
        kind='pc' if r.projected is not None else 'gpt', model_args=asdict(r.model.config),
        model=model, optimizer=optim, shards=shards, shard_bytes=sizes, owner=r.owner, iter=r.it,
        best_val=r.best_val, config=dict(r.cfg), tokenizer=r.tokenizer, loader=r.train_batches.state_dict(),
        rng=torch.get_rng_state(), keep=r.keep, proj_dtype=r.proj_dtype, saved=token,
        pending=dict(loss=r.loss_sum.tolist(), steps=r.loss_steps, time=r.train_time), **r.base_info,
        **({'cuda_rng': torch.cuda.get_rng_state()} if r.device_type == 'cuda' else {})), path)
    for old in glob.glob(glob.escape(path) + '.*of*'):
        if os.path.basename(old) not in shards:
            os.remove(old)


def load_shards(ckpt, path, names):
    """The saved P and R (and their AdamW state) of the matrices `names`, from whichever process's
    file holds each; files are memory-mapped, so only these tensors are read."""
    folder, model, optim, files = os.path.dirname(path), {}, {}, {}
    for name in names:
        k = ckpt['owner'][name]
        if k not in files:
            file = os.path.join(folder, ckpt['shards'][k])
            broken = f"error: {file}, a part of {path}, is missing, incomplete or from another checkpoint; " \
                     f"start the run again without init_from=resume"
            if not os.path.isfile(file) or os.path.getsize(file) != ckpt['shard_bytes'][k]:
                raise SystemExit(broken)
            try:
                files[k] = torch.load(file, map_location='cpu', weights_only=True, mmap=True)
            except Exception:
                raise SystemExit(broken)
            if not isinstance(files[k], dict) or files[k].get('saved') != ckpt['saved']:
                raise SystemExit(broken)
            check_content(files[k], file, "start the run again without init_from=resume")
        prefix = f"proj.{name.replace('.', '_')}."
        model.update({n: t for n, t in files[k]['model'].items() if n.startswith(prefix)})
        optim.update({n: s for n, s in files[k]['optimizer'].items() if n.startswith(prefix)})
    return model, optim


def load_projected(path, map_location='cpu'):
    """The ProjectedGPT of a PC run's checkpoint, rebuilt over the base it names (all projections
    in this process), with its W_c materialized."""
    ckpt = load_checkpoint(path, map_location)
    if ckpt.get('kind') != 'pc':
        raise SystemExit(f"error: '{path}' is not a PC checkpoint; use infra/checkpoint.load_gpt for a plain GPT")
    if not os.path.exists(ckpt['base_ckpt']) or base_sha256(ckpt['base_ckpt']) != ckpt['base_sha256']:
        raise SystemExit(f"error: the base {ckpt['base_ckpt']} that '{path}' was trained from is "
                         f"missing or has changed")
    base, _ = load_base(ckpt['base_ckpt'], map_location)
    projected = pc.ProjectedGPT(base, ckpt['keep'], residual=ckpt['config']['residual'],
                                proj_dtype=PROJ_DTYPES[ckpt['proj_dtype']])
    shares, _ = load_shards(ckpt, path, projected.names)
    trained = dict(projected.named_trainable())
    with torch.no_grad():
        for n, t in {**ckpt['model'], **shares}.items():
            trained[n].copy_(t)
    projected.materialize(with_graph=False)
    return projected


# what a resume may change: where it writes and logs, how it runs; nothing that changes what it computes
RESUME_MAY_CHANGE = ('out_dir', 'init_from', 'stop_iter', 'eval_interval', 'log_interval', 'early_ckpt_frac',
                     'device', 'compile', 'peak_flops', 'base_ckpt')   # (the base's sha256 is checked)


def resume_refusal(resume, cfg, proj_dtype, path):
    """Why the checkpoint `resume` (read from path) cannot continue a run of the settings cfg, as an
    error line; None when it can: same arm and every setting that shapes what it computes. train.py
    refuses such a resume; compare.py starts such a run again instead."""
    if 'iter' not in resume or 'loader' not in resume or 'config' not in resume:   # merged.pt, an export
        return (f"error: {path} is a finished model, not a training checkpoint: nothing to "
                f"resume; use it as base_ckpt=, or sample from it")
    if resume['config'].get('arm') != cfg['arm']:
        return (f"error: {path} is an arm={resume['config'].get('arm')} run; "
                f"resume it with --arm={resume['config'].get('arm')}")
    changed = [f"{k}={cfg[k]!r} (checkpoint: {resume['config'].get(k)!r})" for k in cfg
               if k not in RESUME_MAY_CHANGE and resume['config'].get(k) != cfg[k]]
    if cfg['arm'] == 'pc' and resume.get('proj_dtype') != proj_dtype:
        changed.append(f"proj_dtype={proj_dtype!r} (checkpoint: {resume.get('proj_dtype')!r})")
    if changed:
        return (f"error: {path} was trained with other settings: "
                f"{', '.join(changed)}; resume with the checkpoint's settings")
    if cfg['distill_alpha'] and resume['pending']['steps'] and not isinstance(resume['pending']['loss'], list):
        return (f"error: {path} holds training losses not yet logged, from before train.py "
                f"logged a distillation run's CE; resume it with that train.py, or start the run again")
    return None


def check_resume(r, resume):
    """A resume continues the same run (resume_refusal's rule), or stops with its line."""
    why = resume_refusal(resume, r.cfg, r.proj_dtype, r.ckpt_path)
    if why:
        raise SystemExit(why)


def check_finite(base, spec):
    """A base with a NaN or inf weight is refused before any work: nothing trained from it is finite."""
    broken = next((n for n, t in base.state_dict().items() if not torch.isfinite(t).all()), None)
    if broken:
        raise SystemExit(f"error: the base {spec} has non-finite weights ({broken}); compress a "
                         f"base whose training ended at a finite loss")


def check_same_base(r, resume):
    """A resume of an arm run continues from the base it started from (the same bytes)."""
    if resume is not None and resume.get('base_sha256') != r.base_info['base_sha256']:
        raise SystemExit(f"error: base checkpoint {r.c.base_ckpt} is not the one {r.ckpt_path} was "
                         f"trained from ({resume.get('base_ckpt')}); pass that one as base_ckpt")


def restore(r, resume):
    """Continue exactly where the checkpoint stopped: weights, AdamW state, data position, RNG, the
    not yet logged training losses."""
    if resume['iter'] > r.total:
        raise SystemExit(f"error: {r.ckpt_path} is at iter {resume['iter']}, past this run's length "
                         f"({r.total} iters); give the length it was trained with")
    saved_opt = dict(resume['optimizer'])
    with torch.no_grad():
        if r.projected is None:
            r.model.load_state_dict(resume['model'])
        else:
            shares, shares_opt = processes.together(lambda: load_shards(resume, r.ckpt_path, r.projected.names),
                                                    r.world)
            saved_opt.update(shares_opt)
            trained = dict(r.named)
            for n, t in {**resume['model'], **shares}.items():
                if n in trained:
                    trained[n].copy_(t)
    load_optimizer_state(r.optimizer, r.named, saved_opt)
    r.it, r.best_val = resume['iter'], resume['best_val']
    r.saved_it = resume['iter']
    r.train_batches.load_state_dict(resume['loader'])
    torch.set_rng_state(resume['rng'])
    if r.device_type == 'cuda' and 'cuda_rng' in resume:
        torch.cuda.set_rng_state(resume['cuda_rng'])
    r.loss_sum += torch.tensor(resume['pending']['loss'], device=r.loss_sum.device)   # [loss, CE] (older: one number, the CE too)
    r.loss_steps, r.train_time = resume['pending']['steps'], resume['pending']['time']
