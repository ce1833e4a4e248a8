"""
Files: atomic writes, hashes, and a run's folder (its lock, its metrics log). A reader of the method
may skip this file: it only makes sure that a kill, a power loss or a full disk at any moment leaves
the previous good file in place, and that two runs never write into one folder.
"""
import ctypes
import fcntl
import glob
import hashlib
import json
import os
import shutil

import torch


def write_atomic(path, write):
    """Call write(f) on a temporary file beside `path`, make it durable, then rename it over `path`.
    A crash, a power loss or a full disk at any point leaves the previous file as it was: the
    rename happens only once the bytes are on disk, and the temporary file is removed on failure."""
    tmp = f"{path}.{os.getpid()}.tmp"   # unique to this writer: two processes never share one
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())         # data on disk before any name points at it
        os.replace(tmp, path)
    except BaseException as e:           # Ctrl-C included: never leave a stray temporary file
        try:
            os.remove(tmp)
        except OSError:
            pass
        # full disk, read-only or missing folder, permissions (torch.save reports a failed write as a
        # RuntimeError raised while handling the OSError)
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e, RuntimeError) and \
            isinstance(e.__context__, OSError) and not e.__suppress_context__ else None
        if cause is not None:
            raise SystemExit(f"error: could not write {path} ({cause.strerror or cause}); free some disk "
                             f"space or write to another folder (the previous file, if any, is unchanged)")
        raise
    sync_folder(path)


def sync_folder(path):
    """Make a rename in path's folder durable (some file systems cannot sync a folder: the file is)."""
    if os.name == 'posix':
        try:
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


def save_atomic(obj, path):
    """torch.save through write_atomic: a crash or a full disk mid-save keeps the previous file.
    (torch.save into a Python file, not a path: then a full disk is an OSError, not a RuntimeError.)"""
    write_atomic(path, lambda f: torch.save(obj, f))


def fingerprint(value):
    """sha256 of settings, tensors, and dicts and lists of them: each tensor's dtype, shape and
    bytes, each other value's repr, dict keys in sorted order. What processes compare to agree, and
    what a checkpoint keeps of its own contents."""
    h = hashlib.sha256()

    def feed(v):
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(v, dict):
            for k in sorted(v):
                feed(k)
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                feed(x)
        else:
            h.update(repr(v).encode())
    feed(value)
    return h.hexdigest()


def content_sha256(obj):
    """The fingerprint of a checkpoint dict without its own hash. Saved inside the checkpoint, it
    lets a load tell a file whose bytes changed on disk (same size, flipped bits: torch.load reads
    those without complaint)."""
    return fingerprint({k: v for k, v in obj.items() if k != 'content_sha256'})


def save_checked(obj, path):
    """save_atomic, with the content_sha256 of obj inside it (infra/checkpoint verifies it on load)."""
    save_atomic(dict(obj, content_sha256=content_sha256(obj)), path)


def check_content(obj, path, fix):
    """One line if a checkpoint saved by save_checked no longer holds what was saved."""
    if isinstance(obj, dict) and 'content_sha256' in obj and obj['content_sha256'] != content_sha256(obj):
        raise SystemExit(f"error: {path} is damaged: its contents differ from what was saved (the hash "
                         f"saved in it does not match); {fix}")


def write_text(path, text):
    write_atomic(path, lambda f: f.write(text.encode()))


def write_folder(folder, write, may_replace):
    """Write a whole folder as one change: write(tmp) fills a new folder beside `folder`, which then
    takes its place; a kill or a full disk at any point leaves the previous folder whole (or none).
    `folder`, if it exists, may hold only the names in may_replace (what a previous write wrote): a
    folder with other files is refused before any work, never replaced."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder):
        other = sorted(set(os.listdir(folder)) - set(may_replace))
        if other:
            raise SystemExit(f"error: {folder} holds files this write does not make ({', '.join(other[:5])}); "
                             f"write into a new or empty folder")
    elif os.path.exists(folder):
        raise SystemExit(f"error: {folder} is a file, not a folder; write to another path")
    try:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: could not create {folder} ({e.strerror or e}); write to another folder")
    remove_stale_temporaries(os.path.dirname(folder), glob.escape(os.path.basename(folder)) + '.*.tmpdir')
    tmp = f"{folder}.{os.getpid()}.tmpdir"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.mkdir(tmp)
        write(tmp)
        sync_folder(os.path.join(tmp, 'x'))
        if os.path.isdir(folder):
            _exchange(tmp, folder)           # the new folder in place, the old one now at tmp
        else:
            os.rename(tmp, folder)
        sync_folder(folder)
    except OSError as e:
        raise SystemExit(f"error: could not write {folder} ({e.strerror or e}); free some disk space or "
                         f"write to another folder (the previous folder, if any, is unchanged)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _exchange(a, b):
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE). Where the system has no such
    call, two renames, with the previous folder kept under a name beside it between them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, 'renameat2') and libc.renameat2(-100, a.encode(), -100, b.encode(), 2) == 0:
        return                                # -100: AT_FDCWD; 2: RENAME_EXCHANGE
    old = f"{b}.old.{os.getpid()}.tmpdir"
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder, pattern='*.tmp'):
    """Remove the temporaries (`<name>.<pid>.tmp` files, `<folder>.<pid>.tmpdir` folders) that
    writers killed mid-write left in folder. A writer still alive keeps its own."""
    for tmp in glob.glob(os.path.join(glob.escape(folder), pattern)):
        pid = tmp.rsplit('.', 2)[-2]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.remove(tmp)


def file_sha256(*paths):
    """sha256 of the files' bytes, in order (one file: its usual sha256)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# A run's folder: one run at a time (an flock on out_dir/.lock, held while the process lives: a run
# killed by any signal releases it with its last file descriptor), and its metrics.jsonl.

_held = {}   # out_dir -> the open lock file


def check_writable(folder, option='out_dir'):
    """One line now, not a traceback at the first write, if `folder` cannot be a writable folder
    (`option` names the setting that gave it). Nothing is created yet: a run refused later leaves
    no trace."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        why = 'is a file' if not os.path.isdir(existing) else 'is read-only'
        raise SystemExit(f"error: {option}={folder} cannot be written: {existing} {why}; pick another {option}")


def claim(out_dir):
    """Lock out_dir/.lock for this process (it holds this process's pid, for the message), or stop
    with one line if a live run holds it."""
    if os.path.abspath(out_dir) in _held:   # this process's own (a run in it that stopped early)
        return
    path = os.path.join(out_dir, '.lock')
    f = open(path, 'a+')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or '?'
        f.close()
        raise SystemExit(f"error: another run (process {holder}) is writing to out_dir={out_dir}; "
                         f"wait for it or pick another out_dir")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held[os.path.abspath(out_dir)] = f


def release(out_dir):
    f = _held.pop(os.path.abspath(out_dir), None)
    if f is not None:
        try:
            os.remove(os.path.join(out_dir, '.lock'))
        except OSError:
            pass
        f.close()


def open_log(out_dir, log_path, it, resume):
    """Open out_dir for a run (process 0): claim it, so that no second run writes there at the same
    time; remove a finished run's summary.json and merged.pt at once (their presence means 'finished',
    and this run is not, yet), and what killed writers left; keep the log up to the checkpoint a
    resume continues from (iteration `it`)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        claim(out_dir)
        remove_stale_temporaries(out_dir)
        for stale in ('summary.json', 'merged.pt'):
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
        old = open(log_path).read().splitlines() if resume and os.path.exists(log_path) else []
        kept = []
        for line in old:   # up to the checkpoint: the train record at `it` is the step before it
            try:
                rec = json.loads(line)
                if rec['iter'] < it or (rec['iter'] == it and rec['kind'] == 'train'):
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue   # a line torn by a kill (or not a record): the run logs that step again
        with open(log_path, 'w') as f:
            f.writelines(line + '\n' for line in kept)
    except OSError as e:
        raise SystemExit(f"error: cannot write to out_dir={out_dir} ({e.strerror}); pick a writable folder")


def append_record(log_path, record):
    try:
        with open(log_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
    except OSError as e:   # out_dir removed or full while the run goes on
        raise SystemExit(f"error: cannot write {log_path} ({e.strerror}); the last checkpoint is kept")
