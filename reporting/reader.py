"""The one reader of results/: a run's metrics, per-image values, history and training time, every
run directory's finished parts, and what a figure is seen to show. Everything in reporting/ reads
results/ through this module (and engine.files.read_json / engine.config.run_dirs beneath it).
"""
import json
import os
import re

from engine.config import PARTS, PRECISIONS, PROFILES, gpu_precision, pick_device, pick_profile, precisions_started, \
    run_dir, run_dirs
from engine.files import file_sha256, read_json
from engine.runs import trained_on, training_time  # noqa: F401 (the readers' names)


# What a figure shows, as seen by eye, keyed by the first 16 hex digits of the file's SHA-256: it
# applies to that file only, so a rerun's figures are described once somebody has looked at them.
SEEN = {'4168688abb451e3b': 'strokes and squiggles, not digits', 'f40cf9fc9c20e756': 'the test digits above them',
        '39dff568c5a83884': 'strokes and squiggles, not digits', '35ab3a552961661e': 'the test digits above them',
        '97e2ee1b0e589328': 'connected pen strokes, a few of them recognisable digits',
        '0ea1ddfca15d8135': 'blurred, mostly recognisable digits',
        'cc63255cb878d9dc': 'the first four are their test digits; several of the last six are another shape',
        '13bbf445b965ec30': 'connected pen strokes, more than half of them recognisable digits',
        '7135efd42b444d09': 'connected pen strokes, about half of them recognisable digits',
        'f2944feb2b7e3ae8': 'four of the ten are their test digits (the 7, the 0, the second 1, the last 9); the '
                            'other six are other shapes or fragments'}


def training_minutes(m, digits=1):
    """A run's training time in minutes; where it trained on several kinds of hardware, the time on
    each, named: '85.0 min CPU (x86_64), 2 cores + 10.0 min NVIDIA H100' (never all credited to one)."""
    spent = training_time(m)
    if len(spent) == 1:
        return f'{spent[0][1] / 60:.{digits}f} min'
    return ' + '.join(f'{seconds / 60:.{digits}f} min {label}' for label, seconds in spent)


# engine.train's line at each epoch's end: its time, the epoch, the epochs, the cumulative seconds of training
EPOCH_LINE = re.compile(r'^(\S+ \S+)\s+\S+: epoch (\d+)/(\d+), step .*, (\d+) s of training')


# engine.experiments' header line of each sitting:
# '... full profile on cpu (CPU (AMD EPYC, x86_64), 2 cores), torch ...'
SITTING_LINE = re.compile(r' profile on \S+ \((.*)\), torch ')


def epoch_seconds_by_hardware(m):
    """[(hardware, [seconds of training of each epoch])] of the part's last training from scratch,
    in the order the hardware was first used, from the cumulative training time that its run.log
    gives at each epoch's end and the hardware named by the header line of the sitting the epoch
    ended in (None before any header names it); [] if it has no log."""
    path = os.path.join(m['dir'], 'run.log') if 'dir' in m else None
    if not path or not os.path.exists(path):
        return []
    epochs, hardware, last_epoch, last_total = [], None, 0, 0
    with open(path) as fh:
        for line in fh:
            sitting, match = SITTING_LINE.search(line), EPOCH_LINE.search(line)
            if sitting:
                hardware = sitting[1]
            if not match:
                continue
            epoch, total = int(match[2]), int(match[4])
            if epoch <= last_epoch:  # trained again from scratch (--fresh): the log's later run counts
                epochs, last_total = [], 0
            epochs.append((hardware, total - last_total))
            last_epoch, last_total = epoch, total
    grouped = {}
    for label, seconds in epochs:
        grouped.setdefault(label, []).append(seconds)
    return list(grouped.items())


def epoch_seconds(m):
    """[seconds of training of each epoch] of the part's last training from scratch, on whatever
    hardware (epoch_seconds_by_hardware); [] if it has no log."""
    return [s for _, seconds in epoch_seconds_by_hardware(m) for s in seconds]


def progress(part_dir):
    """How far an unfinished part has trained, from its run.log: {'epoch', 'epochs', 'when'} of the
    last epoch it finished (None if it has no log or finished none)."""
    path = os.path.join(part_dir, 'run.log')
    if not os.path.exists(path):
        return None
    last = None
    with open(path) as fh:
        for match in filter(None, map(EPOCH_LINE.search, fh)):
            last = dict(when=match[1], epoch=int(match[2]), epochs=int(match[3]))
    return last


def load_metrics(results_dir):
    """The metrics.json of every finished part of one run directory, in handout order; each with
    'dir', the part's directory (per_image.pt, history.json and the figures lie there)."""
    return [dict(read_json(os.path.join(results_dir, p, 'metrics.json')), dir=os.path.join(results_dir, p))
            for p in PARTS if os.path.exists(os.path.join(results_dir, p, 'metrics.json'))]


def part_metrics(results_dir, profile, part, precision='fp32'):
    """The metrics of a finished part (None if it has not finished); profile 'auto' is resolved
    from the device, as run_part does, and precision 'auto' as it resumes: on a GPU its choice
    (config.gpu_precision), on a CPU the part's finished run, float32 first."""
    device = pick_device(None)
    profile = pick_profile(profile, device, quiet=True)
    if precision == 'auto':
        finished = precisions_started(results_dir, part, profile, files=('metrics.json',))
        precision = finished[0] if finished and device.type == 'cpu' else gpu_precision(device)
    path = os.path.join(run_dir(results_dir, profile, precision), part, 'metrics.json')
    return read_json(path) if os.path.exists(path) else None


def load_runs(results_dir):
    """Every run directory with a finished part, the course settings (`full`) first:
    [{name, profile, precision, path, parts: {part: metrics}}]."""
    runs = [dict(name=os.path.basename(path), profile=profile, precision=precision, path=path,
                 parts={m['part']: m for m in load_metrics(path)})
            for path, profile, precision in run_dirs(results_dir)]
    return sorted(runs, key=lambda r: (list(PROFILES).index(r['profile']), PRECISIONS.index(r['precision'])))


def per_image(m):
    """{quantity: float64 tensor over the first n test images} from the part's per_image.pt ({} if none)."""
    path = os.path.join(m['dir'], 'per_image.pt') if 'dir' in m else None
    if path is None or not os.path.exists(path):
        return {}
    import torch
    return torch.load(path, weights_only=True)


def history(m):
    """The part's history.json (per-iteration training curves), or None."""
    path = os.path.join(m['dir'], 'history.json') if 'dir' in m else None
    return read_json(path) if path and os.path.exists(path) else None


def seen(path):
    """What SEEN says the figure file shows, or None."""
    return SEEN.get(file_sha256(path)[:16]) if os.path.exists(path) else None


# engine.train's lines in run.log: an epoch's end with its test KL, and the settings of a sitting
LOG_EPOCH = re.compile(r': epoch (\d+)/\d+, step .*? KL ([\d.]+),')
LOG_SETTINGS = re.compile(r'; settings (\{.*\})\s*$')


def log_attempts(m):
    """The training attempts of a part from its run.log, oldest first: each [(epoch, test KL, the
    compile_train setting of the sitting it ran in)]; an epoch not after the one before starts a
    new attempt (trained again from scratch)."""
    path = os.path.join(m['dir'], 'run.log')
    lines = []
    if os.path.exists(path):
        with open(path) as fh:
            lines = fh.readlines()
    attempts, setting = [], None
    for line in lines:
        found = LOG_SETTINGS.search(line)
        if found:
            setting = json.loads(found[1]).get('compile_train')
        epoch = LOG_EPOCH.search(line)
        if epoch:
            e = int(epoch[1])
            if not attempts or e <= attempts[-1][-1][0]:
                attempts.append([])
            attempts[-1].append((e, float(epoch[2]), setting))
    return attempts


def seed_runs(results_dir, part, profile, precision='fp32'):
    """{training seed: metrics} of the part's finished runs (seed 0 the run the answers quote; others
    in <part>-seed<k>, engine.runs.seed_dirs), each with its 'dir'."""
    from engine.runs import seed_dirs
    return {seed: dict(read_json(os.path.join(path, 'metrics.json')), dir=path)
            for seed, path in seed_dirs(results_dir, part, profile, precision).items()}
