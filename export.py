"""
Export a GPT as a folder in Hugging Face's GPT-2 layout, which transformers loads.

    python export.py out/pc_gpt2m/merged.pt out/pc_gpt2m/export
    python export.py out/base_shakespeare_char/ckpt.pt out/base_shakespeare_char/export
    python export.py out/pc_gpt2m/merged.pt out/pc_gpt2m/export --check   # then load it in transformers

The source is anything infra/checkpoint.load_base reads: a train.py checkpoint of a GPT (a base, an HPR run, a
merged PC model), a model folder, or a pretrained name. A PC run's ckpt.pt holds projections over a
frozen base, not a GPT: export the merged.pt written next to it when the run finished.

GPT.from_pretrained (and so train.py, sample.py and eval.py) reads the folder back bit for bit.
A model whose widths fit transformers' GPT-2 (attention width = n_embd, with biases: every base)
loads as transformers' own GPT2LMHeadModel. A compressed model keeps its base's attention width
while n_embd shrinks, which that class cannot hold: its folder carries its own modeling code
(infra/hf_code/) and loads with AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).
A GPT-2-BPE model's folder also holds GPT-2's tokenizer files, for AutoTokenizer.from_pretrained.

--check (needs transformers: requirements-test.txt) loads the written folder with
AutoModelForCausalLM (trust_remote_code=True where the folder carries code) and prints the largest
difference of its logits from gpt.py's on 4 random sequences of block_size tokens, and whether its
greedy generate() gives gpt.py's tokens.
"""
import sys

import torch

import gpt
from infra import checkpoint, hf


def main(argv):
    if argv in (['--help'], ['-h']):
        print(__doc__.strip())
        return None
    check = '--check' in argv
    argv = [a for a in argv if a != '--check']
    if len(argv) != 2 or any(a.startswith('-') for a in argv):
        raise SystemExit("error: give SOURCE and OUT_DIR: python export.py SOURCE OUT_DIR [--check] (SOURCE: "
                         "a checkpoint .pt, a model folder, or gpt2 / gpt2-medium / gpt2-large / gpt2-xl)")
    src, out_dir = argv
    if check:   # before anything is written
        try:
            import transformers  # noqa: F401  (check_in_transformers uses it)
        except ImportError as e:
            raise SystemExit(f"error: --check needs transformers ({e}): pip install -r requirements-test.txt")
    model, info = checkpoint.load_base(src)
    model.save_pretrained(out_dir, tokenizer=info['tokenizer'])
    cfg = model.config
    why = ("it has no biases" if not cfg.bias else
           f"its attention width {cfg.n_head * cfg.head_dim} differs from n_embd={cfg.n_embd}")
    where = ("transformers loads it as GPT2LMHeadModel" if hf.hf_compatible(cfg) else
             f"{why}, which transformers' GPT-2 cannot hold: the folder carries its own modeling code; "
             f"load it with AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)")
    kind = info['tokenizer'].get('tokenizer')
    tok = ("; GPT-2's tokenizer files for AutoTokenizer" if kind == 'gpt2' else
           "; a character vocabulary, kept in config.json as tokenizer.chars (transformers has no "
           "tokenizer for it)" if kind == 'char' else "; no tokenizer (the model names none)")
    print(f"wrote {out_dir} ({gpt.param_counts(model.config)['total']:,} parameters); {where}{tok}")
    if check:
        print(check_in_transformers(model.eval(), out_dir))
    return out_dir


@torch.no_grad()
def check_in_transformers(model, folder, n=4, new_tokens=20):
    """One line: transformers' logits against gpt.py's on n random sequences, and greedy tokens."""
    import transformers   # (main has checked that it imports)
    transformers.logging.set_verbosity_error()
    cfg = model.config
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=not hf.hf_compatible(cfg))
    theirs = theirs.float().eval()
    x = torch.randint(0, cfg.vocab_size, (n, cfg.block_size), generator=torch.Generator().manual_seed(0))
    ours = model(x, x)[0]   # with targets: every position's logits
    diff = (theirs(x).logits - ours).abs().max().item()
    ids = x[:1, :max(1, cfg.block_size - new_tokens)]
    mine = ids
    for _ in range(cfg.block_size - ids.shape[1]):
        mine = torch.cat([mine, model(mine)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    same = torch.equal(theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=mine.shape[1] - ids.shape[1]), mine)
    return (f"transformers ({type(theirs).__name__}): largest logit difference from gpt.py {diff:.3g} "
            f"over {n} x {cfg.block_size} tokens; greedy generate() of {mine.shape[1] - ids.shape[1]} "
            f"tokens {'the same as' if same else 'DIFFERENT from'} gpt.py's")


if __name__ == '__main__':
    main(sys.argv[1:])
