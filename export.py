"""
Export a GPT as a folder with model.safetensors and config.json (Hugging Face's GPT-2 layout).

    python export.py out/pc_gpt2m/merged.pt out/pc_gpt2m/export
    python export.py out/base_shakespeare_char/ckpt.pt out/base_shakespeare_char/export

The source is anything infra/checkpoint.load_base reads: a train.py checkpoint of a GPT (a base, an HPR run, a
merged PC model), a model folder, or a pretrained name. A PC run's ckpt.pt holds projections over a
frozen base, not a GPT: export the merged.pt written next to it when the run finished.

GPT.from_pretrained (and so train.py, sample.py and export.py) reads the folder back bit for bit.
A model whose widths fit transformers' GPT-2 (attention width = n_embd, with biases: every base)
also loads there: transformers.GPT2LMHeadModel.from_pretrained(folder). A compressed model keeps its
base's attention width while n_embd shrinks, which that class cannot hold; its config.json says
model_type 'gpt2_independent_widths' so that transformers refuses it instead of misreading it.
"""
import os
import sys

import gpt
from infra import checkpoint, hf


def main(argv):
    if argv in (['--help'], ['-h']):
        print(__doc__.strip())
        return None
    if len(argv) != 2 or any(a.startswith('-') for a in argv):
        raise SystemExit("error: give SOURCE and OUT_DIR: python export.py SOURCE OUT_DIR (SOURCE: a "
                         "checkpoint .pt, a model folder, or gpt2 / gpt2-medium / gpt2-large / gpt2-xl)")
    src, out_dir = argv
    model, info = checkpoint.load_base(src)
    model.save_pretrained(out_dir, tokenizer=info['tokenizer'])
    cfg = model.config
    why = ("it has no biases" if not cfg.bias else
           f"its attention width {cfg.n_head * cfg.head_dim} differs from n_embd={cfg.n_embd}")
    where = ("it also loads in transformers' GPT2LMHeadModel" if hf.hf_compatible(cfg) else
             f"{why}, which transformers' GPT-2 cannot hold: GPT.from_pretrained reads it, "
             f"transformers refuses it")
    print(f"wrote {os.path.join(out_dir, 'model.safetensors')} and config.json "
          f"({gpt.param_counts(model.config)['total']:,} parameters); {where}")
    return out_dir


if __name__ == '__main__':
    main(sys.argv[1:])
