"""One run of a part at a time: <part dir>/run.lock names the process that runs it.

The lock records the process's id and its start time. A second run of the same part refuses while
that process lives; a lock whose process is gone, or whose id now belongs to another process (ids
are recycled: the start times differ), is cleared. With the lock held, the temporary files that a
stopped writer of the engine left half-way are removed (files.clean_stale_tmp); any other file,
and a live writer's, is left alone.
"""
import contextlib
import json
import os

import psutil

from engine import files


class RunLockedError(RuntimeError):
    """Another process is running the same part in the same results directory."""


def process_started(pid):
    """The start time (seconds since the epoch) of process pid, or None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError, OverflowError):
        return None
    except psutil.AccessDenied:  # another user's process: it exists, its start time is not ours to read
        return float('nan')


def process_alive(pid):
    return process_started(pid) is not None


def holder(path):
    """(pid, start time or None) written in a lock file; (0, None) if it cannot be read. A lock
    written before start times were recorded holds the pid alone."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return 0, None
    try:
        record = json.loads(text)
    except ValueError:
        record = text
    if isinstance(record, dict):
        try:
            return int(record.get('pid') or 0), record.get('started')
        except (TypeError, ValueError):
            return 0, None
    try:
        return int(record or 0), None
    except (TypeError, ValueError):
        return 0, None


def held_by_live_process(pid, started):
    """Whether the lock's process still runs: its id is alive and, where the lock recorded a start
    time, the process with that id started then (within a second), not a later one given the id."""
    if not pid or pid == os.getpid():
        return False
    now = process_started(pid)
    if now is None:
        return False
    if started is None or now != now:  # an old lock, or a start time we may not read
        return True
    return abs(now - float(started)) < 1.0


@contextlib.contextmanager
def part_lock(out):
    """Hold out/run.lock while the part runs (RunLockedError if a live process holds it)."""
    path = os.path.join(out, 'run.lock')
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid, started = holder(path)
            if held_by_live_process(pid, started):
                raise RunLockedError(f'{out} is in use by process {pid} ({path}); wait for it to finish, or stop '
                                     f'that process; a lock of a process that is gone is cleared by itself') from None
            os.remove(path)
    else:
        raise RunLockedError(f'could not take the lock {path}; remove it if no run of this part is going on')
    with os.fdopen(fd, 'w') as fh:
        fh.write(json.dumps(dict(pid=os.getpid(), started=process_started(os.getpid()))))
    files.clean_stale_tmp(out)
    try:
        yield
    finally:
        if os.path.exists(path):
            os.remove(path)
