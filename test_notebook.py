"""
Runs notebooks/walkthrough.ipynb top to bottom, headless, with tiny settings (about 40 s on 2 cores).

The notebook runs in a copy of the repository's code under tmp_path, without any prepared data, so it
also exercises the notebook's own data preparation, and everything it writes (data, runs, kernel
files) stays under tmp_path. The committed notebook itself is not modified.

    python -m pytest -q test_notebook.py
"""
import ast
import os
import shutil

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join('notebooks', 'walkthrough.ipynb')

# Same names as the notebook's settings cell, tiny values. OUT is filled in per test.
TINY = """\
# SETTINGS (tiny values from test_notebook.py)
OUT = {out!r}
THREADS = 1
BASE_ITERS = 6
BATCH = 4
EVAL_ITERS = 2
COMPRESSION = 0.5
IMPORTANCE = 'magnitude'
CALIB_BATCHES = 2
RACE_ITERS = 4
TIME_BATCH = 2
TIME_MICRO = [1, 2]
TIME_REPS = 1
SAMPLE_CHARS = 20
"""


def assigned(source):
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def copy_code(dst):
    """The code, configs, embedded corpus and notebook; no prepared data, runs or caches."""
    os.makedirs(dst)
    for name in os.listdir(ROOT):
        if name.endswith('.py'):
            shutil.copy2(os.path.join(ROOT, name), dst)
    skip = shutil.ignore_patterns('*.bin', 'meta.json', 'raw', 'train', 'val', '__pycache__',
                                  '*.tmp', '.ipynb_checkpoints')
    for folder in ('config', 'data'):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(dst, folder), ignore=skip)
    os.makedirs(os.path.join(dst, 'notebooks'))
    shutil.copy2(os.path.join(ROOT, NOTEBOOK), os.path.join(dst, NOTEBOOK))


def test_notebook_runs_with_tiny_settings(tmp_path, monkeypatch):
    repo, out = tmp_path / 'repo', tmp_path / 'out'
    copy_code(repo)
    assert not (repo / 'data' / 'shakespeare_char' / 'meta.json').exists()
    # the kernel's own files (connection file, IPython history) go under tmp_path too
    monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'jupyter_runtime'))
    monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))

    nb = nbformat.read(repo / NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1 and cells[0].source.startswith('# SETTINGS'), \
        "the notebook needs exactly one code cell tagged 'parameters' starting with '# SETTINGS'"
    tiny = TINY.format(out=str(out))
    # a setting added to the notebook but not here would silently run at full size
    assert assigned(cells[0].source) == assigned(tiny), \
        f"settings differ: notebook {sorted(assigned(cells[0].source))}, test {sorted(assigned(tiny))}"
    cells[0].source = tiny
    for c in nb.cells:
        if c.cell_type == 'code':
            c.outputs = []

    # run from notebooks/, as Jupyter would when the notebook is opened there; raises on any error
    NotebookClient(nb, timeout=300, kernel_name='python3',
                   resources={'metadata': {'path': str(repo / 'notebooks')}}).execute()

    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
              if o.output_type == 'error']
    assert not errors
    images = sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
                 for o in c.outputs)
    assert images >= 7, f"expected the notebook's figures as image outputs, got {images}"
    for run in ('base/ckpt.pt', 'hpr/metrics.jsonl', 'pc/metrics.jsonl', 'pc/ckpt.pt', 'pc/merged.pt'):
        assert (out / run).exists(), run
    assert (repo / 'data' / 'shakespeare_char' / 'meta.json').exists()   # the notebook prepared it
