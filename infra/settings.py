"""
Settings: the one parser every script uses (nanoGPT's configurator, with checks), the rules every
script shares (devices, data folders, tokenizers), and the checks of train.py's settings. A reader of
the method may skip this file: it only turns a command line into a dict, or into one clear line.

    defaults  ->  config files (plain Python, in order)  ->  --key=value (the command line wins)

One set of rules for every value: a setting takes the type of its default. A string takes the text as
it is ('--start=ROMEO:'; a quoted Python string is unquoted); an int a Python int literal; a float any
number ('1e-3', '2'; 'inf' and 'nan' are numbers that train.py's checks refuse as not finite); a bool True/true/False/false, and a bare
'--key' means True. An unknown key, a wrong type or a malformed argument is one line, before any work.
"""
import ast
import difflib
import math
import os
from types import SimpleNamespace

import torch

import pc
from infra import hf

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
PROJ_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}


def checked(key, value, defaults, where, text=None):
    """value as the setting `key` takes it, or one line. text: the command line's own spelling."""
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1)
        shown = [k for k in defaults if not k.startswith('_')]   # (_name: internal)
        raise SystemExit(f"error: unknown setting '{key}' in {where}"
                         + (f"; did you mean '{close[0]}'?" if close else f" (the settings: {', '.join(shown)})"))
    want = type(defaults[key])
    if want is str and text is not None and not isinstance(value, str):
        value = text   # a string setting takes the text as it is: --start=123, --dataset=3
    if want is bool and text in ('true', 'false'):
        value = text == 'true'
    if want is float and type(value) is int:
        value = float(value)
    if want is float and isinstance(value, str):
        try:   # inf, nan, 1e999: a number, which check_train then refuses as not finite
            value = float(value)
        except ValueError:
            pass
    if type(value) is not want:
        rule = 'be True or False' if want is bool else 'be an int' if want is int else f'be a {want.__name__}'
        raise SystemExit(f"error: {key}={value!r} in {where} should {rule}")
    return value


def parse(argv, defaults, config_files=True, rest=False, doc=None):
    """The settings: `defaults` (a dict), then config files (paths, in order; only if config_files),
    then --key=value overrides. A config file runs with every setting so far as its globals, the
    command line's included, so it can choose by them (`if arm == 'pc': ...`); the command line still
    wins. rest=True: (settings, the --key=value arguments whose key is not a setting, in order), for a
    script that passes them on. --help prints `doc` and the defaults."""
    if '--help' in argv or '-h' in argv:
        print((doc or '').strip() + '\n\nsettings (--key=value):')
        for k, v in defaults.items():
            if not k.startswith('_'):
                print(f"  --{k}={v!r}")
        raise SystemExit(0)
    cfg, overrides, files, unknown = dict(defaults), {}, [], []
    for arg in argv:
        if not arg.startswith('--'):
            if not config_files:
                raise SystemExit(f"error: '{arg}' should look like --key=value")
            files.append(arg)
            continue
        key, eq, text = arg[2:].partition('=')
        if rest and key not in defaults:   # the caller's to pass on (or refuse)
            unknown.append(arg)
            continue
        if not eq:
            if key not in defaults:
                checked(key, None, defaults, 'the command line')   # an unknown key: its own line
            if type(defaults[key]) is not bool:
                raise SystemExit(f"error: '{arg}' should look like --{key}=value")
            text = 'True'
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = text  # a bare string
        overrides[key] = checked(key, value, defaults, 'the command line', text)
    for path in files:
        if not os.path.isfile(path):
            hint = f"; for a setting, write --{path}" if '=' in path else ''
            raise SystemExit(f"error: config file '{path}' not found (see config/ for examples){hint}")
        before = {**cfg, **overrides}
        ns = dict(before)
        try:
            exec(open(path).read(), ns)
        except SystemExit as e:   # the config's own one line, or a bare exit
            if str(e.code).startswith('error: '):
                raise
            raise SystemExit(f"error: config file '{path}' fails to run: SystemExit: {e}")
        except Exception as e:
            raise SystemExit(f"error: config file '{path}' fails to run: {type(e).__name__}: {e}")
        for key, value in ns.items():
            assigned = key not in before or type(value) is not type(before[key]) or value != before[key]
            # a setting of any type (a stray comma makes a tuple); other names only if they look like
            # settings (a config may keep helpers: modules, functions, tables)
            if assigned and not key.startswith('_') and (key in defaults or isinstance(value, (bool, int, float, str))):
                cfg[key] = checked(key, value, defaults, path)
    cfg.update(overrides)
    return (cfg, unknown) if rest else cfg


# ------------------------------------------------------------------------------------------------
# Rules more than one script needs

def check_device(dev, auto=True):
    """The device rule: auto (if allowed), cpu, cuda or cuda:N, and CUDA only where there is a GPU."""
    if not ((auto and dev == 'auto') or dev in ('cpu', 'cuda') or dev.startswith('cuda:')):
        raise SystemExit(f"error: device='{dev}' is not supported; use {'auto, ' if auto else ''}cpu or cuda (cuda:N)")
    if dev.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f"error: device='{dev}' but this machine has no CUDA GPU; use "
                         f"{'--device=auto' if auto else '--device=cpu'}")
    return dev


def resolve_device(dev):
    return ('cuda' if torch.cuda.is_available() else 'cpu') if dev == 'auto' else dev


def resolve_proj_dtype(proj_dtype, dev):
    """PC's frozen-base and projection dtype on the resolved device dev: 'auto' is bf16 on CUDA, fp32 on CPU."""
    return proj_dtype if proj_dtype != 'auto' else 'bfloat16' if dev.startswith('cuda') else 'float32'


def data_folder(dataset):
    """The data-folder rule: a name under data/ (shakespeare_char, c4, ...) or a path."""
    return dataset if os.sep in dataset else os.path.join(HERE, 'data', dataset)


# What the numeric settings must be, checked before any work.
POSITIVE = ('block_size', 'batch_size', 'grad_accum', 'eval_interval', 'eval_iters', 'log_interval',
            'importance_batches', 'width_multiple', 'learning_rate', 'distill_temperature')
NOT_NEGATIVE = ('max_iters', 'max_tokens', 'tokens_per_param', 'stop_iter', 'warmup_iters', 'compressed_n_embd',
                'compressed_d_ff', 'min_lr', 'weight_decay', 'grad_clip', 'peak_flops', 'head_dim', 'd_ff', 'seed')
MODEL_SHAPE = ('n_layer', 'n_head', 'n_embd', 'head_dim', 'd_ff', 'bias', 'tie_embeddings')   # or a preset
BELOW_ONE = ('beta1', 'beta2', 'dropout', 'early_ckpt_frac', 'compression')   # in [0, 1)
CHOICES = dict(arm=('base', 'pc', 'hpr', 'scratch'), importance=pc.METHODS, proj_dtype=('auto', *PROJ_DTYPES))


def check_train(cfg, defaults):
    """One line for the first impossible setting of train.py, before any work; the settings as attributes."""
    for keys, ok, rule in ((POSITIVE, lambda v: v > 0, 'be positive'),
                           (NOT_NEGATIVE, lambda v: v >= 0, 'not be negative'),
                           (BELOW_ONE, lambda v: 0 <= v < 1, 'be in [0, 1)')):
        for key in keys:
            if not ok(cfg[key]):
                why = (": the fraction of the base's parameters to remove (0: give compressed_n_embd or "
                       "compressed_d_ff)" if key == 'compression' else '')
                raise SystemExit(f"error: {key}={cfg[key]} must {rule}{why}")
    for key, value in cfg.items():
        if type(value) is float and not math.isfinite(value):
            raise SystemExit(f"error: {key}={value} must be a finite number")
    if cfg['seed'] >= 2 ** 63:
        raise SystemExit(f"error: seed={cfg['seed']} must be below 2**63")
    if cfg['preset'] and any(cfg[k] != defaults[k] for k in MODEL_SHAPE):
        shape = ', '.join(f"{k}={cfg[k]}" for k in MODEL_SHAPE if cfg[k] != defaults[k])
        raise SystemExit(f"error: preset={cfg['preset']!r} sets the model's shape, and so does {shape}: "
                         f"give one or the other")
    if cfg['stop_iter'] and cfg['max_iters'] and cfg['stop_iter'] > cfg['max_iters']:
        raise SystemExit(f"error: stop_iter={cfg['stop_iter']} is after the run's end (max_iters="
                         f"{cfg['max_iters']})")
    if not 0 <= cfg['distill_alpha'] <= 1:
        raise SystemExit(f"error: distill_alpha={cfg['distill_alpha']} must be in [0, 1]")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise SystemExit(f"error: {key}={cfg[key]!r} is not one of {', '.join(allowed)}")
    if cfg['init_from'] not in ('scratch', 'resume', *hf.PRETRAINED) and not os.path.isdir(cfg['init_from']):
        raise SystemExit(f"error: init_from={cfg['init_from']!r} is not scratch, resume, a pretrained name "
                         f"({', '.join(hf.PRETRAINED)}) or a model folder")
    if cfg['init_from'] not in ('scratch', 'resume') and cfg['arm'] != 'base':
        raise SystemExit(f"error: init_from={cfg['init_from']!r} continues training a pretrained model with "
                         f"arm=base; to compress it, pass it as base_ckpt")
    if cfg['min_lr'] > cfg['learning_rate']:
        raise SystemExit(f"error: min_lr={cfg['min_lr']} is above learning_rate={cfg['learning_rate']}")
    check_device(cfg['device'])
    lengths = {k: cfg[k] for k in ('max_iters', 'max_tokens', 'tokens_per_param') if cfg[k]}
    if len(lengths) != 1:
        raise SystemExit(f"error: give exactly one of max_iters, max_tokens, tokens_per_param (now: "
                         f"{', '.join(f'{k}={v}' for k, v in lengths.items()) or 'none'}); "
                         f"set the others to 0, e.g. --tokens_per_param=0")
    if cfg['pc_naive'] and cfg['arm'] != 'pc':
        raise SystemExit(f"error: pc_naive=True is PC's naive forward; drop it for arm={cfg['arm']}")
    if cfg['distill_alpha'] and cfg['arm'] == 'base':
        raise SystemExit("error: distillation needs a teacher: use it with arm=pc, hpr or scratch (the base is the teacher)")
    return SimpleNamespace(**cfg)


def check_tokenizer(model_tokenizer, data_tokenizer, model_name, dataset):
    """A model trained on one tokenizer's ids cannot read another's: refuse when both are known."""
    if model_tokenizer and data_tokenizer and model_tokenizer != data_tokenizer:
        what = lambda t: t['tokenizer'] + (f" ({len(t.get('chars', ''))} characters)" if 'chars' in t else '')
        a, b = (str(t.get('chars', '')) for t in (model_tokenizer, data_tokenizer))
        only = sorted(set(a) ^ set(b))
        differ = ('' if model_tokenizer.get('tokenizer') != 'char' or data_tokenizer.get('tokenizer') != 'char'
                  else f" (characters in only one of them: {''.join(only[:20])!r})" if only
                  else " (the same characters, numbered in another order)")
        raise SystemExit(f"error: {model_name} reads {what(model_tokenizer)} tokens but dataset {dataset} is "
                         f"{what(data_tokenizer)} tokens{differ}; prepare the data with the model's tokenizer "
                         f"(GPT-2 BPE: data/shakespeare, data/c4)")


def check_fits(model_cfg, block_size, vocab, dataset, whose="the model's"):
    """The sequences and the token ids of the data must fit the model."""
    if block_size > model_cfg.block_size:
        raise SystemExit(f"error: block_size={block_size} is larger than {whose} context "
                         f"({model_cfg.block_size}); use --block_size<={model_cfg.block_size}")
    if vocab > model_cfg.vocab_size:
        raise SystemExit(f"error: dataset {dataset} has {vocab} token ids but the model only "
                         f"{model_cfg.vocab_size}; pick a matching dataset")
