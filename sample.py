"""
Sample text from a GPT, as nanoGPT's sample.py does.

    python sample.py --init_from=out/base_shakespeare_char/ckpt.pt --start="ROMEO:"
    python sample.py --init_from=out/pc_char/merged.pt --num_samples=1 --max_new_tokens=500
    python sample.py --init_from=gpt2-medium --start="FILE:prompt.txt" --top_k=50

init_from is a train.py checkpoint (a base, an HPR run, a merged PC model, or a PC run's ckpt.pt,
which is rebuilt over its base and merged), a folder written by export.py or in Hugging Face's GPT-2
layout, or a pretrained name (gpt2, gpt2-medium, gpt2-large, gpt2-xl). The tokenizer comes with the
model (a checkpoint's character vocabulary or GPT-2 BPE), so no dataset folder is needed.
"""
import sys
from contextlib import nullcontext

import torch

from data import tokenizer
from infra import checkpoint, settings

# Defaults; each can be set with --key=value.
DEFAULTS = dict(
    init_from='',           # checkpoint (.pt), model folder, or gpt2 / gpt2-medium / gpt2-large / gpt2-xl
    start='\n',             # the prompt, or FILE:path to read it from a file
    num_samples=3,
    max_new_tokens=200,
    temperature=0.8,        # < 1: less random, > 1: more
    top_k=200,              # sample among the k most likely tokens only (0: all)
    seed=1337,
    device='auto',          # auto | cpu | cuda | cuda:1 ...
)


def parse_args(argv):
    """DEFAULTS, then --key=value (infra/settings.parse: the rules every script shares)."""
    return settings.parse(argv, DEFAULTS, config_files=False, doc=__doc__)


def load(init_from, device='cpu'):
    """(GPT, (encode, decode)) from anything sample.py takes (see the top of this file)."""
    checkpoint.check_model_spec(init_from, '--init_from')
    model, tok = checkpoint.load_model(init_from, device)
    return model, tokenizer.codec(tok, f"'{init_from}'")


def sample(cfg):
    """The samples as strings (prompt included), as main prints them."""
    if cfg['num_samples'] < 1 or cfg['max_new_tokens'] < 0 or cfg['top_k'] < 0:
        raise SystemExit("error: --num_samples must be positive, --max_new_tokens and --top_k not negative")
    if not 1e-3 <= cfg['temperature'] < float('inf'):   # below, logits / temperature overflow: --top_k=1
        raise SystemExit(f"error: --temperature={cfg['temperature']} must be at least 0.001 and finite "
                         f"(for the most likely token every time, use --top_k=1)")
    if not 0 <= cfg['seed'] < 2 ** 63:
        raise SystemExit(f"error: --seed={cfg['seed']} must be in [0, 2**63)")
    device = settings.resolve_device(settings.check_device(cfg['device']))
    start = cfg['start']
    if start.startswith('FILE:'):
        try:
            with open(start[5:], encoding='utf-8') as f:
                start = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"error: could not read the prompt file '{start[5:]}' ({type(e).__name__})")

    model, (encode, decode) = load(cfg['init_from'], device)
    ids = encode(start)
    if not ids:
        raise SystemExit("error: --start is empty; give the model some text to continue, e.g. --start='\\n'")
    if max(ids) >= model.config.vocab_size:
        raise SystemExit(f"error: the tokenizer gives ids up to {max(ids)} but the model has "
                         f"{model.config.vocab_size}; the checkpoint's tokenizer does not fit its model")
    model.to(device)
    torch.manual_seed(cfg['seed'])
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if device.startswith('cuda') else nullcontext()
    x = torch.tensor(ids, dtype=torch.long, device=device)[None]
    out = []
    with ctx:
        for _ in range(cfg['num_samples']):
            y = model.generate(x, cfg['max_new_tokens'], temperature=cfg['temperature'],
                               top_k=cfg['top_k'] or None)
            out.append(decode(y[0].tolist()))
    return out


def main(argv):
    for text in sample(parse_args(argv)):
        print(text)
        print('---------------')


if __name__ == '__main__':
    main(sys.argv[1:])
