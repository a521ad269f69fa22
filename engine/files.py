"""Writing files so that a crash, a kill or a full disk never leaves half of one: every write goes
to a temporary file next to its target, is flushed to disk, then moved onto the target with
os.replace, so a reader sees the old file or the whole new one.

    atomic_save(obj, path)       # torch.save
    write_json(path, obj)        # JSON
    clean_stale_tmp(directory)   # the temporary files of writers that were killed

A full disk raises DiskFullError (an OSError, errno ENOSPC) naming the file and what to do.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import uuid

import torch


class DiskFullError(OSError):
    """A file could not be written because its disk (or quota) is full; errno is ENOSPC."""



# A temporary file is <target>.<pid>.<8 hex>.h<8 hex of the host name>.tmp, so that a later
# process can tell a dead writer's file (stale) from one that is still being written.
# Files written before the host tag existed lack the .h<...> part.
_TMP_PATTERN = re.compile(r"^(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(?:\.h(?P<host>[0-9a-f]{8}))?\.tmp$")
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_path(path):
    """A fresh temporary name next to path, tagged with this process and host (see _TMP_PATTERN)."""
    return f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.h{_HOST_TAG}.tmp"


def _remove_quietly(path):
    """Remove path if it exists; cleanup must never hide the error that caused it."""
    with contextlib.suppress(OSError):
        os.remove(path)


def _fsync(f):
    """Put the file's data on disk before the rename makes it visible, so a crash cannot leave an
    empty file at the target. File systems without fsync (some FUSE mounts) are let through;
    write errors that fsync reports (ENOSPC, EIO) are not."""
    try:
        os.fsync(f.fileno())
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _is_disk_full(err):
    """True for the ways a full disk shows up: OSError ENOSPC or EDQUOT, or the RuntimeError torch's
    zip writer raises when a write came up short ("unexpected pos") or the C library failed."""
    for _ in range(8):  # the error and the ones it was raised from or during
        if err is None:
            return False
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "No space left" in str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def atomic_write(path, write):
    """Call write(f) on a binary file open on a temporary file next to path, flush it to disk, then
    move it onto path (os.replace), so readers see either the old file or the whole new one.
    On any failure the temporary file is removed; a full disk raises DiskFullError and any other
    OSError is re-raised with the same errno and a message naming path."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    tmp = _tmp_path(path)
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            _fsync(f)
        os.replace(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        if _is_disk_full(err):
            raise DiskFullError(errno.ENOSPC, f"could not write {path}: the disk is full (no space left "
                                              f"on the device holding {directory}); free some space and "
                                              f"try again") from err
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err
        raise


def atomic_save(obj, path):
    """torch.save(obj) to path atomically: through a temporary file in the same directory and
    os.replace, so a crash or a full disk never leaves a partial file at path (the old file, if
    any, stays). The temporary file is removed on any failure. A full disk raises DiskFullError
    (an OSError, errno ENOSPC) whose message names path; other OSErrors keep their errno and name
    path. The parent directory is created if needed."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(path, obj, indent=None):
    """obj as JSON at path, atomically and with the same errors as atomic_save."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()))


def _pid_alive(pid):
    """Whether a process with this id runs on this host (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; an id beyond any pid
        return False
    except OSError:  # e.g. EPERM: the process exists but belongs to someone else
        return True
    return True


def clean_stale_tmp(directory):
    """Remove the temporary files that atomic_save left in directory when its process was killed:
    those whose writer was on this host and is no longer running. Files of live writers, of other
    hosts (a shared file system) and any other *.tmp file are kept. Returns the removed paths;
    a missing or read-only directory removes nothing and raises nothing."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _TMP_PATTERN.match(name)
        if m is None or (m["host"] is not None and m["host"] != _HOST_TAG) or _pid_alive(int(m["pid"])):
            continue
        path = os.path.join(directory, name)
        try:
            os.remove(path)
        except OSError:
            continue
        print(f"[files] removed {path}, a temporary file left by a process that was stopped while writing", flush=True)
        removed.append(path)
    return removed


# What git keeps of a run (docs/engine.md, "What is committed"). Our limit: a file a clone carries
# forever must fit one pack piece (engine/transfer.py) and keep `git clone --depth 1` small.
MAX_COMMITTED_BYTES = 16 * 2 ** 20
UNCOMMITTED = '.gitignore'  # a run directory's own ignore list: the files too large to commit


def keep_out_of_git(directory, name, limit=None):
    """If directory/name is larger than `limit` bytes (MAX_COMMITTED_BYTES), list it in the
    directory's .gitignore so that `git add` leaves it out, and return why; None if it may be
    committed. The file itself stays on disk."""
    limit = MAX_COMMITTED_BYTES if limit is None else limit
    path = os.path.join(directory, name)
    size = os.path.getsize(path)
    if size <= limit:
        return None
    ignore = os.path.join(directory, UNCOMMITTED)
    listed = []
    if os.path.exists(ignore):
        with open(ignore) as fh:
            listed = fh.read().split()
    if name not in listed:
        atomic_write(ignore, lambda f: f.write(('\n'.join(listed + [name]) + '\n').encode()))
    return (f'{name} is {size / 2 ** 20:.0f} MiB, over the {limit / 2 ** 20:.0f} MiB a committed file may have; '
            f'it stays on the machine that trained it and is not committed')


def read_json(path):
    """A JSON file of the results (metrics.json, summary.json), with an error that names it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} cannot be read ({type(err).__name__}: {err}); restore it with git '
                         f'(`git checkout -- {path}`) or delete the part\'s directory and rerun it') from err


def file_sha256(path):
    """The SHA-256 of a file's bytes, in hex, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for block in iter(lambda: fh.read(2 ** 20), b''):
            h.update(block)
    return h.hexdigest()
