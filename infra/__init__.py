"""
The plumbing: everything that makes gpt.py, pc.py and train.py safe and distributed, and nothing a
reader of the method needs. Skip this package on a first read.

    settings.py    the one settings parser (defaults, config files, --key=value) and train.py's checks
    processes.py   torchrun: start, agreement, teardown; who owns which projection; the W_c broadcast;
                   the sharded gradient clip; a GPU's peak FLOP/s
    checkpoint.py  checkpoints and their per-process shares, resume, finding a base and its hash
    files.py       atomic writes, hashes, the run folder's lock and log
    hf.py          Hugging Face's GPT-2 layout (from_pretrained, save_pretrained)
"""
