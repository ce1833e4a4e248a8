"""
Downstream evaluation through lm-evaluation-harness (lm-eval), for any model this project reads.

    pip install -r requirements-eval.txt
    python eval.py --model=out/pc_gpt2m/merged.pt
    python eval.py --model=out/hpr_gpt2m/ckpt.pt --tasks=wikitext,piqa --limit=200
    python eval.py --model=gpt2-medium --out=out/gpt2m_eval.json

--model is a train.py checkpoint (a base, an HPR run, a merged PC model, or a PC run's ckpt.pt,
rebuilt over its base and merged), a model folder (export.py's, or Hugging Face's GPT-2 layout) or
a pretrained name. The model is scored in this process through GPTLM below, lm-eval's model
interface written for gpt.py's GPT: no export, no transformers. Results are printed as lm-eval's
table, with the average accuracy over the tasks that report one, and written as JSON to --out.

The default tasks are the nine that the authors' trainer (llm-random/nano) scores at the end of
training (arc_easy, arc_challenge, hellaswag, piqa, winogrande, openbookqa, sciq, social_iqa,
lambada_standard), plus wikitext, the perplexity task of its per-run evaluation. The paper's poster
plots an average of downstream benchmarks without naming them; these are the ones its authors run,
and 'average' is their mean accuracy (acc, zero-shot), as far as this project can tell the poster's.
"""
import functools
import glob
import json
import math
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from data import tokenizer as tokenizers
from infra import checkpoint, settings
from infra.files import check_writable, write_text

AUTHORS_TASKS = ('arc_easy,arc_challenge,hellaswag,piqa,winogrande,openbookqa,sciq,social_iqa,'
                 'lambada_standard,wikitext')

# Defaults; each can be set with --key=value.
DEFAULTS = dict(
    model='',               # checkpoint (.pt), model folder, or gpt2 / gpt2-medium / gpt2-large / gpt2-xl
    tasks=AUTHORS_TASKS,    # lm-eval task or group names, comma-separated
    include_path='',        # a folder of your own lm-eval task YAML files (lm-eval's --include_path)
    num_fewshot=0,
    limit=0,                # at most this many examples per task (0: all), for a quick look
    batch_size=16,          # sequences per forward pass
    max_gen_toks=256,       # the longest generation of generate_until tasks (a task may ask less)
    device='auto',          # auto | cpu | cuda | cuda:1 ...
    seed=1234,              # lm-eval's seeds (few-shot sampling and its own shuffles)
    out='',                 # write the results as JSON here ('' : print only)
)


def parse_args(argv):
    """DEFAULTS, then --key=value (infra/settings.parse: the rules every script shares)."""
    return settings.parse(argv, DEFAULTS, config_files=False, doc=__doc__)


def lm_eval_lib():
    try:
        import lm_eval
        import lm_eval.evaluator
        import lm_eval.tasks
        import lm_eval.utils
        import lm_eval.api.model
    except ImportError as e:
        raise SystemExit(f"error: eval.py needs lm-evaluation-harness ({e.name} is missing): "
                         f"pip install -r requirements-eval.txt")
    return lm_eval


def gpt_lm(model, tokenizer, device='cpu', batch_size=16, max_gen_toks=256):
    """An lm-eval model (TemplateLM: lm-eval's own handling of contexts, continuations and empty
    contexts) that scores with gpt.py's GPT. Built by a function so that eval.py imports lm-eval only
    when it evaluates."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    encode, decode = tokenizers.codec(tokenizer, 'the model')
    block = model.config.block_size
    if tokenizer.get('tokenizer') == 'gpt2':
        eot = tokenizers.EOT
    else:   # a character model: a document starts after a newline, as in its training text
        eot = tokenizer['chars'].index('\n') if '\n' in tokenizer['chars'] else 0
    autocast = torch.autocast('cuda', dtype=torch.bfloat16) if device.startswith('cuda') else nullcontext()
    model = model.to(device).eval()

    @torch.no_grad()
    def log_probs(rows):
        """log-softmax of the next-token logits at every position of each row (rows of up to
        block_size tokens). Rows are padded on the right: a causal model's earlier positions never
        see the padding."""
        width = max(map(len, rows))
        x = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, :len(r)] = torch.tensor(r)
        x = x.to(device)
        with autocast:
            logits, _ = model(x, x)   # with targets, gpt.py returns every position's logits
        return F.log_softmax(logits.float(), dim=-1).cpu()

    class GPTLM(TemplateLM):
        @property
        def eot_token_id(self):
            return eot

        @property
        def max_length(self):
            return block

        def tok_encode(self, string, add_special_tokens=None, **kwargs):
            return encode(string) if string else []

        def tok_decode(self, ids, **kwargs):
            return decode(ids)

        def _loglikelihood_tokens(self, requests, disable_tqdm=False):
            """(sum of log p(continuation | context), whether every continuation token is the argmax)
            per request: the last block_size + 1 tokens of context + continuation, as lm-eval's
            Hugging Face model truncates. Long rows first, so each batch pads little."""
            order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
            out = [None] * len(requests)
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                rows = [(requests[i][1] + requests[i][2])[-(block + 1):][:-1] for i in chunk]
                lp = log_probs(rows)
                for j, i in enumerate(chunk):
                    cont = requests[i][2]
                    n = len(rows[j])
                    picked = lp[j, n - len(cont):n]
                    target = torch.tensor(cont)
                    logprob = picked.gather(1, target[:, None]).sum().item()
                    out[i] = (logprob, bool((picked.argmax(-1) == target).all()))
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial('loglikelihood', requests[i][0], out[i])
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            """log p(text), the whole text, in disjoint windows of block_size tokens (each window
            scored after what of the previous one fits), as lm-eval's perplexity tasks ask."""
            out = []
            for req in requests:
                (text,) = req.args
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=block, context_len=1)]
                scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
                out.append(sum(s for s, _ in scores))
                self.cache_hook.add_partial('loglikelihood_rolling', (text,), out[-1])
            return out

        @torch.no_grad()
        def generate_until(self, requests, disable_tqdm=False):
            """Greedy continuation of each context (sampling when the task asks for do_sample with a
            temperature), stopped at the first 'until' string or after max_gen_toks tokens."""
            out = []
            for req in requests:
                context, kw = req.args
                kw = dict(kw)
                until = kw.pop('until', None) or [decode([eot])]
                until = [until] if isinstance(until, str) else list(until)
                limit = kw.pop('max_gen_toks', max_gen_toks)
                temperature = kw.pop('temperature', 0.0) if kw.pop('do_sample', False) else 0.0
                ids = self.tok_encode(context) or [eot]
                new, text = [], ''
                for _ in range(limit):
                    logits = log_probs([(ids + new)[-block:]])[0, -1]
                    nxt = (torch.multinomial(F.softmax(logits / temperature, -1), 1).item()
                           if temperature > 0 else logits.argmax().item())
                    new.append(nxt)
                    text = decode(new)
                    if any(u in text for u in until):
                        break
                for u in until:   # what lm-eval's own models return: the text before the first stop
                    text = text.split(u)[0]
                out.append(text)
                self.cache_hook.add_partial('generate_until', (context, req.args[1]), text)
            return out

    return GPTLM()


def task_names(lm_eval, cfg, prefix=''):
    """The task list, each name checked against lm-eval's registry (and include_path) before any
    model is loaded or dataset read. prefix: what the options are called where they come from
    (compare.py's are --eval_tasks, --eval_include_path)."""
    opt = lambda key: f"--{prefix}{key}"
    if cfg['include_path'] and not os.path.isdir(cfg['include_path']):
        raise SystemExit(f"error: {opt('include_path')}={cfg['include_path']} is not a folder of task YAML files")
    names = [t.strip() for t in cfg['tasks'].split(',') if t.strip()]
    if not names:
        raise SystemExit(f"error: {opt('tasks')} is empty; give lm-eval task names, e.g. {opt('tasks')}=piqa,wikitext")
    manager = None
    if cfg['include_path']:   # only your own tasks: no need to index lm-eval's 14,000 (15 s)
        manager = task_manager(cfg['include_path'], False)
        if not set(names) <= set(manager.all_tasks):
            manager = None
    manager = manager or task_manager(cfg['include_path'], True)
    unknown = [t for t in names if t not in manager.all_tasks]
    bad = unknown and cfg['include_path'] and unparsed_yaml(cfg['include_path'], unknown[0])
    if bad:   # lm-eval skips a file it cannot parse, so its task is only "unknown"
        raise SystemExit(f"error: lm-eval has no task {unknown[0]!r}, and {bad[0]} in {opt('include_path')} "
                         f"is not valid YAML ({bad[1]}); fix that file")
    if unknown:
        raise SystemExit(f"error: lm-eval has no task {unknown[0]!r}; `python -m lm_eval ls tasks` lists "
                         f"them (a task of your own: {opt('include_path')}=<folder with its YAML>)")
    return names, manager


def unparsed_yaml(folder, name):
    """(path, why) of the first task file under folder that names `name` and does not parse as YAML, or None."""
    import yaml
    lenient = type('Lenient', (yaml.SafeLoader,), {})
    lenient.add_multi_constructor('!', lambda loader, suffix, node: None)   # lm-eval's tags: !function ...
    for path in sorted(glob.glob(os.path.join(folder, '**', '*.yaml'), recursive=True)):
        with open(path) as f:
            text = f.read()
        if name not in text:
            continue
        try:
            yaml.load(text, lenient)
        except yaml.YAMLError as e:
            mark = getattr(e, 'problem_mark', None)
            return path, (f"line {mark.line + 1}, column {mark.column + 1}: " if mark else '') + str(
                getattr(e, 'problem', None) or first_line(e))
    return None


@functools.lru_cache(maxsize=None)
def task_manager(include_path, defaults):
    """lm-eval's task index, built once per process (compare.py evaluates many models)."""
    import lm_eval.tasks
    return lm_eval.tasks.TaskManager(include_path=include_path or None, include_defaults=defaults)


def check(cfg, model_needed=True, prefix=''):
    """The numbers and the model, refused now with one line (prefix: as in task_names)."""
    for key in ('num_fewshot', 'limit'):
        if cfg[key] < 0:
            raise SystemExit(f"error: --{prefix}{key}={cfg[key]} must not be negative (0: {'none' if key == 'num_fewshot' else 'every example'})")
    for key in ('batch_size', 'max_gen_toks'):
        if cfg[key] < 1:
            raise SystemExit(f"error: --{prefix}{key}={cfg[key]} must be positive")
    if model_needed:
        checkpoint.check_model_spec(cfg['model'], '--model')


def evaluate(cfg):
    """lm-eval's results dict (its 'results', 'configs', 'samples', ...) for cfg's model and tasks."""
    check(cfg)
    lm_eval = lm_eval_lib()
    names, manager = task_names(lm_eval, cfg)
    device = settings.resolve_device(settings.check_device(cfg['device']))
    model, tokenizer = checkpoint.load_model(cfg['model'], 'cpu')
    tokenizers.codec(tokenizer, f"'{cfg['model']}'")   # one line now if it names no tokenizer
    lm = gpt_lm(model, tokenizer, device, cfg['batch_size'], cfg['max_gen_toks'])
    seed = cfg['seed']
    try:
        results = lm_eval.evaluator.simple_evaluate(
            model=lm, tasks=names, task_manager=manager, num_fewshot=cfg['num_fewshot'],
            limit=cfg['limit'] or None, log_samples=True, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000)
    except OSError as e:   # a dataset not in the cache without network, a task's data file missing
        raise SystemExit(f"error: lm-eval could not read a task's data ({type(e).__name__}: "
                         f"{first_line(e)}); without network, fetch the datasets once on a machine with it "
                         f"(HF_DATASETS_OFFLINE=1 then reads the cache), or give tasks of your own with --include_path")
    except ValueError as e:   # what lm-eval refuses in the tasks asked: a task twice, too few examples, ...
        raise SystemExit(f"error: lm-eval refused --tasks={cfg['tasks']} with --num_fewshot={cfg['num_fewshot']}: "
                         f"{first_line(e)}")
    results['average_acc'] = average_acc(results)
    return results


def first_line(e):
    return (str(e).splitlines() or [''])[0][:200]


def leaf_tasks(results):
    """The tasks of results['results'] that are not groups (a group's row repeats its tasks')."""
    groups = {g for g, subtasks in results.get('group_subtasks', {}).items() if subtasks}
    return {t: r for t, r in results['results'].items() if t not in groups}


def average_acc(results):
    """Mean zero-shot accuracy ('acc') over the tasks that report one (perplexity tasks do not);
    a group's own row is left out, so each of its tasks counts once."""
    accs = [r['acc,none'] for r in leaf_tasks(results).values() if isinstance(r.get('acc,none'), float)]
    return sum(accs) / len(accs) if accs else math.nan


def scores(results):
    """{task: {metric: value}} without lm-eval's filter suffix and stderr entries: what compare.py
    puts in its tables."""
    out = {}
    for task, r in results['results'].items():
        out[task] = {k.split(',')[0]: v for k, v in r.items()
                     if ',' in k and '_stderr' not in k and isinstance(v, (int, float))}
    return out


def report(results):
    """lm-eval's own table, then the average accuracy."""
    import lm_eval.utils
    return (lm_eval.utils.make_table(results).rstrip() + '\n\n'
            f"average accuracy over {sum('acc,none' in r for r in leaf_tasks(results).values())} tasks: "
            f"{results['average_acc']:.4f}\n")


def save(results, path):
    """The results without the per-example samples (kept by log_samples for checking), as JSON."""
    import lm_eval.utils
    kept = {k: v for k, v in results.items() if k != 'samples'}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(kept, indent=2, default=lm_eval.utils.handle_non_serializable) + '\n')


def main(argv):
    cfg = parse_args(argv)
    if cfg['out'] and (os.path.isdir(cfg['out']) or not cfg['out'].endswith('.json')):
        raise SystemExit(f"error: --out={cfg['out']} should name a .json file")
    if cfg['out']:   # refused now, not after the evaluation
        check_writable(os.path.dirname(os.path.abspath(cfg['out'])), option='--out')
    results = evaluate(cfg)
    print(report(results))
    if cfg['out']:
        save(results, cfg['out'])
        print(f"wrote {cfg['out']}")
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
