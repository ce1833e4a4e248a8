"""
Hugging Face's GPT-2 layout: a folder with config.json and model.safetensors, as transformers and
OpenAI's files on the Hub hold GPT-2. gpt.GPT.from_pretrained and GPT.save_pretrained call this
file. A reader of the method may skip it: it only renames and transposes tensors.

The tensor names are gpt.py's (transformers saves "transformer.h.0.attn.c_attn.weight"; OpenAI's files
on the Hub leave out "transformer."), but the four Conv1D matrices are stored (in, out), the transpose
of nn.Linear's weight. safetensors and huggingface_hub are imported only here, so training needs
neither (requirements-pretrained.txt). A model whose widths transformers' GPT-2 cannot hold is
written with the modeling code in hf_code/ beside its weights (transformers' custom-code convention).
"""
import importlib
import json
import os
import shutil

import torch

from gpt import GPTConfig
from infra.files import write_folder

PRETRAINED = {name: f'openai-community/{name}' for name in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')}
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# model_type of an export that transformers' GPT-2 class cannot hold (attention width != n_embd,
# or no biases). Such a folder carries its own modeling code (hf_code/, transformers' custom-code
# convention): AutoModelForCausalLM loads it with trust_remote_code=True, and refuses it without.
WIDTHS_MODEL_TYPE = 'gpt2_independent_widths'
CODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'hf_code')
CODE_FILES = ('configuration_gpt_widths.py', 'modeling_gpt_widths.py')
AUTO_MAP = {'AutoConfig': 'configuration_gpt_widths.GPTWidthsConfig',
            'AutoModelForCausalLM': 'modeling_gpt_widths.GPTWidthsForCausalLM'}
TOKENIZER_FILES = ('vocab.json', 'merges.txt', 'tokenizer_config.json')
GPT2_VOCAB = 50257


def hf_compatible(cfg):
    """Whether transformers' GPT2LMHeadModel can hold this GPT: attention width = n_embd, biases."""
    return cfg.bias and cfg.n_head * cfg.head_dim == cfg.n_embd


def optional(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"error: pretrained models and exports need safetensors and huggingface_hub "
                         f"({module} is missing): pip install -r requirements-pretrained.txt")


def hf_config(cfg, tokenizer=None):
    """config.json for a GPT: Hugging Face's GPT-2 keys, plus gpt.py's own (head_dim, bias,
    tokenizer), which transformers keeps as unused attributes."""
    ok = hf_compatible(cfg)
    conf = dict(
        model_type='gpt2' if ok else WIDTHS_MODEL_TYPE,
        architectures=['GPT2LMHeadModel' if ok else 'GPTWidthsForCausalLM'],
        **({} if ok else {'auto_map': AUTO_MAP}),
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
        activation_function='gelu_pytorch_tanh',   # nn.GELU(approximate='tanh'), what gpt.py's MLP runs
        layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_embeddings,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        head_dim=cfg.head_dim, bias=cfg.bias, tokenizer=dict(tokenizer or {}))
    if (tokenizer or {}).get('tokenizer') == 'gpt2':
        conf.update(bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1)   # <|endoftext|>
    return conf


def config_from_hf(conf, where, dropout=0.0):
    """GPTConfig from a config.json in the layout above. What a GPT-2 config can say and this GPT
    cannot compute is refused, rather than loaded into a model that computes something else.
    dropout is a training setting, not part of the weights: 0.0 unless asked (as nanoGPT)."""
    kind = conf.get('model_type')
    if kind not in ('gpt2', WIDTHS_MODEL_TYPE):
        raise SystemExit(f"error: {where} holds a model_type={kind!r} model; gpt.py reads GPT-2 "
                         f"(model_type 'gpt2') and its own exports only")
    for key, allowed, default in (('activation_function', ('gelu_new', 'gelu_pytorch_tanh'), 'gelu_new'),
                                  ('layer_norm_epsilon', (1e-5,), 1e-5),
                                  ('scale_attn_weights', (True,), True),
                                  ('scale_attn_by_inverse_layer_idx', (False,), False),
                                  ('add_cross_attention', (False,), False)):
        if conf.get(key, default) not in allowed:
            raise SystemExit(f"error: {where} has {key}={conf[key]!r}, which gpt.py's GPT-2 does not "
                             f"compute (it computes {key}={allowed[0]!r})")
    own = kind == WIDTHS_MODEL_TYPE   # head_dim and bias mean something only in gpt.py's own exports
    return GPTConfig(block_size=conf.get('n_positions', 1024), vocab_size=conf.get('vocab_size', GPT2_VOCAB),
                     n_layer=conf.get('n_layer', 12), n_head=conf.get('n_head', 12),
                     n_embd=conf.get('n_embd', 768), head_dim=conf.get('head_dim', 0) if own else 0,
                     d_ff=conf.get('n_inner') or 0, bias=conf.get('bias', True) if own else True,
                     tie_embeddings=conf.get('tie_word_embeddings', True), dropout=dropout)


def download(name):
    """The Hub snapshot folder of a pretrained name (huggingface_hub's cache: downloaded once)."""
    hub = optional('huggingface_hub')
    try:
        return hub.snapshot_download(PRETRAINED[name], allow_patterns=[
            'config.json', 'model.safetensors', 'model.safetensors.index.json', 'model-*.safetensors'])
    except Exception as e:   # no network and not in the cache, a proxy, a full disk, ...
        raise SystemExit(f"error: could not get {name} from the Hugging Face Hub ({type(e).__name__}); "
                         f"without network, run `hf download {PRETRAINED[name]} config.json "
                         f"model.safetensors --local-dir {name}` on a machine with one and pass that folder")


def weight_files(folder):
    single = os.path.join(folder, 'model.safetensors')
    index = os.path.join(folder, 'model.safetensors.index.json')
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):   # sharded, as transformers saves big models
        try:
            with open(index) as f:
                names = sorted(set(json.load(f)['weight_map'].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SystemExit(f"error: {index} is not a readable safetensors index (no weight_map); "
                             f"download or save the model again")
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise SystemExit(f"error: {index} names {missing[0]}, which is not in {folder}; "
                             f"download or save the model again")
        return [os.path.join(folder, name) for name in names]
    if os.path.isfile(os.path.join(folder, 'pytorch_model.bin')):
        raise SystemExit(f"error: '{folder}' has pytorch_model.bin, no model.safetensors: load it in "
                         f"transformers and save_pretrained it again (that writes safetensors)")
    runs = sorted(f for f in os.listdir(folder) if f.endswith('.pt'))   # a train.py run's folder?
    raise SystemExit(f"error: '{folder}' has no model.safetensors: not a model folder in Hugging Face's layout"
                     + (f"; for a checkpoint in it, pass the file ({', '.join(runs)})" if runs else ""))


def load_pretrained(name_or_dir, dropout=0.0):
    """(GPT, where) from a folder in Hugging Face's GPT-2 layout (or one written by save_pretrained)
    or a pretrained name: gpt2, gpt2-medium, gpt2-large, gpt2-xl. where = dict(source=the folder's
    absolute path, files=its weight files, tokenizer=as load_base gives it); no hashing here, so
    sampling from gpt2-xl does not read its 6 GB twice (load_base hashes)."""
    if os.path.isdir(name_or_dir):
        folder = name_or_dir
    elif name_or_dir in PRETRAINED:
        folder = download(name_or_dir)
    else:
        raise SystemExit(f"error: '{name_or_dir}' is neither a model folder (config.json + "
                         f"model.safetensors) nor a pretrained name ({', '.join(PRETRAINED)})")
    st = optional('safetensors.torch')
    where = f"'{folder}'"
    try:
        with open(os.path.join(folder, 'config.json')) as f:
            conf = json.load(f)
    except FileNotFoundError:
        runs = sorted(f for f in os.listdir(folder) if f.endswith('.pt'))   # a train.py run's folder?
        raise SystemExit(f"error: {where} has no config.json: not a model folder in Hugging Face's layout"
                         + (f"; for a checkpoint in it, pass the file ({', '.join(runs)})" if runs else ""))
    except ValueError as e:   # bad JSON or bad UTF-8
        raise SystemExit(f"error: {where}/config.json is not valid JSON ({type(e).__name__})")
    if not isinstance(conf, dict):
        raise SystemExit(f"error: {where}/config.json is not a model config")
    cfg = config_from_hf(conf, where, dropout)
    files = weight_files(folder)
    state = {}
    for path in files:
        try:
            state.update(st.load_file(path))
        except Exception as e:   # truncated or not a safetensors file
            raise SystemExit(f"error: '{path}' is not a readable safetensors file ({type(e).__name__})")
    ours = {}
    for k, t in state.items():
        if k.endswith(('.attn.bias', '.attn.masked_bias')):
            continue   # the causal-mask buffers older transformers saved; not weights
        name = k if k.startswith('transformer.') or k == 'lm_head.weight' else 'transformer.' + k
        t = t.to(torch.float32)   # a half-precision file trains and samples in float32, as every GPT here
        ours[name] = t.t().contiguous() if name.endswith(CONV1D) else t
    if cfg.tie_embeddings and 'transformer.wte.weight' in ours:   # one tensor, stored once
        ours['lm_head.weight'] = ours['transformer.wte.weight']
    from infra.checkpoint import gpt_from_state   # (that file reads this one)
    model = gpt_from_state(cfg, ours, where)
    tokenizer = conf.get('tokenizer')
    if not isinstance(tokenizer, dict):   # a GPT-2 from elsewhere: its vocabulary says which
        tokenizer = {'tokenizer': 'gpt2'} if cfg.vocab_size == GPT2_VOCAB else {}
    return model, dict(source=os.path.abspath(folder), files=files, tokenizer=tokenizer)


def save_pretrained(model, out_dir, tokenizer=None):
    """Write out_dir in Hugging Face's GPT-2 layout, as one change (infra/files.write_folder: a kill
    leaves the previous export whole): model.safetensors and config.json, which load_pretrained
    reads back bit for bit. Widths that fit transformers' GPT-2 (attention width = n_embd, biases)
    load in its GPT2LMHeadModel; other widths get hf_code/'s two files and an auto_map, for
    AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True). `tokenizer` is kept in
    config.json ({'tokenizer': 'char', 'chars': ...} or {'tokenizer': 'gpt2'}); GPT-2 BPE also gets
    vocab.json, merges.txt and tokenizer_config.json, for AutoTokenizer.from_pretrained(out_dir)."""
    st = optional('safetensors.torch')
    tensors = {}
    for name, t in model.state_dict().items():
        if name == 'lm_head.weight' and model.config.tie_embeddings:
            continue   # one tensor, stored once under its embedding's name, as transformers does
        t = t.detach().cpu()
        tensors[name] = (t.t() if name.endswith(CONV1D) else t).contiguous()
    conf = hf_config(model.config, tokenizer)
    bpe = (tokenizer or {}).get('tokenizer') == 'gpt2'
    vocab_merges = None
    if bpe:
        from data.tokenizer import vocab_and_merges
        vocab_merges = vocab_and_merges()

    def write(folder):
        with open(os.path.join(folder, 'model.safetensors'), 'wb') as f:
            f.write(st.save(tensors, metadata={'format': 'pt'}))
        write_json(os.path.join(folder, 'config.json'), conf)
        if 'auto_map' in conf:
            for name in CODE_FILES:
                shutil.copyfile(os.path.join(CODE_DIR, name), os.path.join(folder, name))
        if bpe:
            write_tokenizer(folder, *vocab_merges, model.config.block_size)

    write_folder(out_dir, write, may_replace=('model.safetensors', 'config.json') + CODE_FILES + TOKENIZER_FILES)
    return out_dir


def write_json(path, obj):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + '\n')


def write_tokenizer(folder, vocab, merges, block_size):
    """GPT-2's tokenizer files, as the Hub's gpt2 holds them: AutoTokenizer builds GPT2Tokenizer from
    them and encodes as tiktoken does (<|endoftext|> in text is the special token, as with
    tiktoken's allowed_special='all'); no clean-up of spaces on decode, so text round-trips."""
    write_json(os.path.join(folder, 'vocab.json'), vocab)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    eot = '<|endoftext|>'
    write_json(os.path.join(folder, 'tokenizer_config.json'), dict(
        tokenizer_class='GPT2Tokenizer', bos_token=eot, eos_token=eot, unk_token=eot,
        add_prefix_space=False, clean_up_tokenization_spaces=False, model_max_length=block_size))
