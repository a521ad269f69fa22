"""Running several parts: `all` (one after the other, or --jobs of them at once as processes of
their own), the notebooks' run_parts, time estimates, and the checks of a run's length made before
any work.
"""
import math
import os
import shlex
import subprocess
import sys
import time

from engine import ROOT, student
from engine.config import (PARTS, PRECISIONS, TITLES, as_bool, as_int, config, part_dir, pick_device, pick_profile,
                           run_dir)
from engine.files import read_json
from engine.locks import RunLockedError
from engine.runs import ForeignCodeError, ResultsExistError, guard_results_dir, pick_precision, run_part, switches
from engine.timing import estimate
from engine.student import NeedsExtrasError
from engine.modelfiles import CheckpointError

ENTRY_POINT = os.path.join(ROOT, 'experiments.py')  # what a --jobs process runs


def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds // 60}m{seconds % 60:02d}s'


def check_parts(parts):
    """A list of part names, each known: checked before any work."""
    parts = [p.strip() for p in parts]
    if not parts or any(not p for p in parts):
        raise ValueError(f'--parts must name one or more parts, comma-separated; the parts are {", ".join(PARTS)}')
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f'unknown part(s) {", ".join(unknown)}; the parts are {", ".join(PARTS)}')
    twice = sorted({p for p in parts if parts.count(p) > 1}, key=parts.index)
    if twice:
        raise ValueError(f'--parts names {", ".join(twice)} more than once; name each part once')
    return parts


# An epoch count asked for on the command line is checked before any work (our bounds, not the course's):
STEP_RATE_BOUND = 10_000  # training steps a second that no device reaches with these networks (each step is a
                          # forward pass, a backward pass and an Adam update, hundreds of kernels), so that
                          # epochs x steps per epoch / STEP_RATE_BOUND is a lower bound on the training time
UNASKED_HOURS = 24        # a run that this lower bound puts past a day needs --minutes
MAX_EPOCHS = 2 ** 53      # the largest count metrics.json records exactly for every JSON reader (doubles)
MNIST_TRAIN = 60_000      # images in MNIST's training set


def check_run_length(part, profile, epochs, minutes=None):
    """Refuse, before any work, a --minutes that is not a positive number, an epoch count below 1 or
    above MAX_EPOCHS, and, without --minutes, one whose training alone would take over UNASKED_HOURS
    even at STEP_RATE_BOUND steps a second; each message says how long the count would take."""
    check_minutes(minutes)
    if epochs is None:
        return
    cfg = config(part, profile, epochs=epochs)  # epochs below 1 are refused here
    per_epoch = math.ceil(min(cfg['train_images'] or MNIST_TRAIN, MNIST_TRAIN) / cfg['batch_size'])
    steps = epochs * per_epoch
    took = (f'{part} ({profile} profile) would train {steps:,} steps ({per_epoch:,} an epoch): at least '
            f'{describe_duration(steps // STEP_RATE_BOUND)} even at {STEP_RATE_BOUND:,} steps a second')
    if epochs > MAX_EPOCHS:
        raise ValueError(f'--epochs must be at most {MAX_EPOCHS:,} (2^53, the largest count every JSON reader '
                         f'holds exactly), got {epochs:,}; {took}')
    if minutes is None and steps // STEP_RATE_BOUND > 3600 * UNASKED_HOURS:
        raise ValueError(f'--epochs {epochs:,}: {took}, more than {UNASKED_HOURS} hours. Ask for fewer epochs, or '
                         f'add --minutes N to train until that time limit (the run stops cleanly; rerun to resume)')


def check_minutes(minutes):
    """A time limit in minutes: None (none) or a finite positive number."""
    if minutes is not None and not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise ValueError(f'--minutes must be a positive number, got {minutes!r}')


def describe_duration(seconds):
    """A whole number of seconds, however large, in hours, days or years."""
    if seconds < 2 * 86400:
        return f'{seconds / 3600:.1f} hours'
    if seconds < 2 * 31_557_600:
        return f'{seconds // 86400:,} days'
    years = seconds // 31_557_600
    return f'{years:,} years' if years < 10 ** 6 else f'10^{len(str(years)) - 1} years'


def estimate_all(profile, parts, device, results_dir='results', fresh=False, precision='auto', tolerant=False,
                 **overrides):
    """{part: estimate, with its 'precision'} for the parts (precision 'auto': pick_precision's
    choice for each), 0 s for those already done; prints a table. tolerant: a part whose estimate
    raises (a student's model that does not run yet) is listed at 0 s; running it says why.
    overrides: settings of config."""
    parts = check_parts(parts)
    print(f'estimating the time of {len(parts)} parts on {device} ({profile} profile)...', flush=True)
    expected = {}
    for part in parts:
        try:
            e = expected[part] = estimate_part(part, profile, device, results_dir, fresh, precision, **overrides)
        except Exception as err:  # a student's model that does not run yet: `all` runs it anyway and says why
            if not tolerant:
                raise
            print(f'  {part:12s} cannot be estimated ({type(err).__name__}: {err}'.splitlines()[0] + ')', flush=True)
            expected[part] = dict(NOT_ESTIMATED, precision=precision if precision != 'auto' else 'fp32')
            continue
        rates = ', '.join(f'{label} {e[k]:.0f}/s' for k, label in (
            ('train_images_s', 'training images'), ('autoregressive_images_s', 'with the PixelCNN on'),
            ('is_samples_s', 'importance samples')) if e[k])
        print(f'  {part:12s} {e["precision"]:4s} ~{fmt_time(e["seconds"]):>7s}  {rates or "done"}', flush=True)
    print(f'  {"total":17s} ~{fmt_time(sum(e["seconds"] for e in expected.values())):>7s}', flush=True)
    return expected


NOT_ESTIMATED = dict(seconds=0.0, train_images_s=None, autoregressive_images_s=None, is_samples_s=None)


def estimate_part(part, profile, device, results_dir, fresh, precision, **overrides):
    """One part's estimate with its 'precision' (0 s when it has finished)."""
    seed = overrides.get('seed', 0)
    chosen = pick_precision(precision, part, profile, device, results_dir, fresh, seed)[0]
    out = part_dir(results_dir, part, profile, chosen, seed)
    if not fresh and os.path.exists(os.path.join(out, 'metrics.json')):
        return dict(NOT_ESTIMATED, precision=chosen)
    measured = estimate(part, config(part, profile, precision=chosen, **overrides), device, None if fresh else out)
    return dict(measured, precision=chosen)


def run_all(profile='auto', parts=None, device=None, fresh=False, results_dir='results', progress=True,
            precision='auto', minutes=None, is_images=None, compile_train=None, jobs=1, summarise=None, seed=None):
    """Every part (or the given ones) in one profile, with time estimates; then the summary. With
    minutes, stop cleanly once that much time has passed (a checkpoint at the current step; rerun
    the same command, on this machine or another after pack/unpack, to resume). is_images,
    compile_train: as run_part's. jobs > 1: that many parts at once, each a process of its own on
    the same device (run_jobs). A part that cannot run (refused, or its code raises) does not stop
    the others: the table at the end says what ran, what was skipped or failed and why, and
    PartsFailedError follows it. Returns True when every part is done (False when stopped by
    minutes). A student's code: results 'results' means results/mine (student.results_for)."""
    fresh = as_bool(fresh, 'fresh')
    guard_results_dir(results_dir)
    results_dir = student.results_for(results_dir, say=True)
    device = pick_device(device)
    profile = pick_profile(profile, device)
    parts = check_parts(parts) if parts is not None else list(PARTS)
    check_minutes(minutes)
    jobs = as_int(jobs, 'jobs', minimum=1)
    extra = switches(is_images, compile_train, seed)
    estimates = estimate_all(profile, parts, device, results_dir, fresh, precision, tolerant=True, **extra)
    plan = dict(profile=profile, device=device, fresh=fresh, results_dir=results_dir, extra=extra,
                stop_at=time.time() + 60 * minutes if minutes is not None else None)  # each slice trains a step
    t_start = time.time()
    outcomes = {}
    if jobs == 1:
        stopped = run_serial(parts, estimates, plan, progress, t_start, outcomes)
    else:
        stopped = run_jobs(parts, estimates, plan, jobs, outcomes)
    if stopped:
        again = ' '.join(shlex.quote(a) for a in sys.argv) if sys.argv[0].endswith('experiments.py') else ''
        print(f'\nstopped after {fmt_time(time.time() - t_start)} (the --minutes limit) before {", ".join(stopped)} '
              f'finished; run the same command again to resume' + (f': {again}' if again else ''), flush=True)
        return False
    summaries = []
    for chosen in sorted({e['precision'] for e in estimates.values()}, key=PRECISIONS.index):
        if os.path.isdir(run_dir(results_dir, profile, chosen)):
            if summarise is not None:
                summarise(results_dir, profile, chosen)  # every part present, not only those run now
            summaries.append(os.path.join(run_dir(results_dir, profile, chosen), 'summary.md'))
    print('\n' + outcomes_table(outcomes), flush=True)
    failed = [p for p, (outcome, _) in outcomes.items() if outcome in ('skipped', 'failed')]
    if failed:
        others = f'; summary of the others in {" and ".join(summaries)}' if summaries else ''
        raise PartsFailedError(f'{len(failed)} of {len(parts)} parts did not run ({", ".join(failed)}); the table '
                               f'above says why{others}')
    print(f'\nall parts done in {fmt_time(time.time() - t_start)}; summary in {" and ".join(summaries)}', flush=True)
    return True


class PartsFailedError(RuntimeError):
    """`all` ran every part it could, and some could not run (skipped or failed)."""


# the engine declined to run a part: nothing was done
REFUSALS = (ResultsExistError, RunLockedError, CheckpointError, ForeignCodeError, NeedsExtrasError)


def run_one(part, out, **kwargs):
    """(outcome, why) of one part in `all`: 'ran' (trained and evaluated now), 'done' (finished
    before), 'stopped' (at the time limit), 'skipped' (refused, with the reason) or 'failed' (an
    error, named; its traceback is printed)."""
    metrics = os.path.join(out, 'metrics.json')
    before = os.path.getmtime(metrics) if os.path.exists(metrics) else None
    try:
        m = run_part(part, **kwargs)
    except REFUSALS as e:
        print(f'{part}: skipped: {e}', flush=True)
        return 'skipped', str(e)
    except Exception as e:  # a student's models.py or losses.py may raise anything: the next part still runs
        import traceback
        traceback.print_exc()
        return 'failed', f'{type(e).__name__}: {e}'.splitlines()[0]
    if m is None:
        return 'stopped', 'at the time limit, with a checkpoint'
    now = os.path.getmtime(metrics) if os.path.exists(metrics) else None
    values = ', '.join(f'{q} {v["value"]:.2f}' for q, v in (m.get('values') or {}).items()
                       if v.get('stderr') is not None)
    return ('ran' if now != before else 'done'), values


def outcomes_table(outcomes):
    """What `all` did with each part, one line each."""
    lines = [f'{"part":12s} {"outcome":8s} why / numbers']
    lines += [f'{part:12s} {outcome:8s} {why}' for part, (outcome, why) in outcomes.items()]
    return '\n'.join(lines)


def run_parts(parts, jobs=1, profile='auto', device=None, fresh=False, results_dir='results', progress=True,
              precision='auto', is_images=None, compile_train=None):
    """{part: metrics} of the parts (what the notebooks call): one after the other in this process,
    or with jobs > 1 that many at once as separate processes (run_jobs; their output in job.log)."""
    jobs = as_int(jobs, 'jobs', minimum=1)
    kw = dict(profile=profile, device=device, fresh=fresh, results_dir=results_dir, precision=precision,
              is_images=is_images, compile_train=compile_train)
    if jobs == 1:
        return {part: run_part(part, progress=progress, **kw) for part in check_parts(parts)}
    device = pick_device(device)
    profile = pick_profile(profile, device)
    fresh = as_bool(fresh, 'fresh')
    chosen = {p: dict(precision=pick_precision(precision, p, profile, device, results_dir, fresh)[0])
              for p in check_parts(parts)}
    run_jobs(list(chosen), chosen, dict(profile=profile, device=device, fresh=fresh, results_dir=results_dir,
                                        extra=switches(is_images, compile_train), stop_at=None), jobs)
    return {p: read_json(os.path.join(part_dir(results_dir, p, profile, c['precision']), 'metrics.json'))
            for p, c in chosen.items()}


def run_serial(parts, estimates, plan, progress, t_start, outcomes):
    """The parts one after the other in this process, each one's (outcome, why) into outcomes;
    returns [the part stopped by the time limit] or []."""
    expected, fresh = {p: e['seconds'] for p, e in estimates.items()}, plan['fresh']
    for i, part in enumerate(parts):
        print(f'\n[{i + 1}/{len(parts)}] {part}: {TITLES[part]} -- this part ~{fmt_time(expected[part])}, all '
              f'remaining parts ~{fmt_time(sum(expected[p] for p in parts[i:]))} (elapsed '
              f'{fmt_time(time.time() - t_start)})', flush=True)
        stop_at, precision = plan['stop_at'], estimates[part]['precision']
        if stop_at is not None and time.time() > stop_at:
            return [part]
        out = part_dir(plan['results_dir'], part, plan['profile'], precision, plan['extra'].get('seed', 0))
        outcomes[part] = run_one(part, out,
                                 profile=plan['profile'], device=plan['device'], fresh=fresh,
                                 results_dir=plan['results_dir'], progress=progress, stop_at=stop_at,
                                 precision=precision, **plan['extra'])
        if outcomes[part][0] == 'stopped':
            return [part]
        fresh = False  # --fresh applies once per part, not to a resumed slice
    return []


JOB_LOG = 'job.log'  # in a part's directory: the output of its process under --jobs
POLL_SECONDS = 0.2


def job_command(part, precision, plan):
    """The `experiments.py run` command line of one part under --jobs: the settings of `all`, the
    time left of --minutes, no progress bars (the output goes to a file)."""
    cmd = [sys.executable, ENTRY_POINT, 'run', part, '--profile', plan['profile'], '--device',
           str(plan['device']), '--precision', precision, '--results-dir', plan['results_dir'], '--no-progress']
    if plan['fresh']:
        cmd.append('--fresh')
    if plan['stop_at'] is not None:
        cmd += ['--minutes', repr(max(1e-6, (plan['stop_at'] - time.time()) / 60))]
    if 'is_images' in plan['extra']:
        cmd += ['--is-images', str(plan['extra']['is_images'] or 'all')]
    if 'compile_train' in plan['extra']:
        cmd.append('--compile-train' if plan['extra']['compile_train'] else '--no-compile-train')
    if plan['extra'].get('seed'):
        cmd += ['--seed', str(plan['extra']['seed'])]
    return cmd


def launch(part, precision, plan):
    """Start one part's process; its output is appended to <part dir>/job.log. Returns (process, log
    path, start time, the log's line where this process's output begins)."""
    out = part_dir(plan['results_dir'], part, plan['profile'], precision, plan['extra'].get('seed', 0))
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, JOB_LOG)
    cmd = job_command(part, precision, plan)
    with open(log, 'a+') as fh:
        fh.seek(0)
        first = sum(1 for _ in fh) + 1  # after the command line written next
        fh.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")}  {" ".join(shlex.quote(c) for c in cmd)}\n')
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=os.getcwd(),
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))
    print(f'{part}: started as process {proc.pid} ({precision}); output in {log}', flush=True)
    return proc, log, time.time(), first


def run_jobs(parts, estimates, plan, jobs, outcomes=None):
    """Up to `jobs` parts at once, each `experiments.py run` in a process of its own on the same
    device, in the order given. Waits for all; returns the parts stopped by the time limit; each
    part's (outcome, why) goes into outcomes, or, without outcomes, PartsFailedError names each
    part whose process failed, with the end of its log."""
    waiting, running, stopped, failed = list(parts), {}, [], []
    print(f'\n{len(parts)} parts, {min(jobs, len(parts))} at a time as separate processes on {plan["device"]}',
          flush=True)
    while waiting or running:
        while waiting and len(running) < jobs:
            part = waiting.pop(0)
            if plan['stop_at'] is not None and time.time() > plan['stop_at']:
                stopped.append(part)
            else:
                running[part] = launch(part, estimates[part]['precision'], plan)
        time.sleep(POLL_SECONDS)
        for part, (proc, log, t0, first) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[part]
            outcome = job_outcome(part, proc.returncode, log, estimates[part]['precision'], plan, first)
            print(f'{part}: {outcome} after {fmt_time(time.time() - t0)}', flush=True)
            ended = stopped if outcome == 'stopped' else failed if outcome.startswith(('failed', 'skipped')) else []
            ended.append(part)
            if outcomes is not None:
                outcomes[part] = (outcome.split(' ')[0].rstrip(':'), f'{outcome} (its output: {log})')
    if failed and outcomes is None:
        logs = [os.path.join(part_dir(plan['results_dir'], p, plan['profile'], estimates[p]['precision'],
                                      plan['extra'].get('seed', 0)), JOB_LOG)
                for p in failed]
        raise PartsFailedError('; '.join(f'{p} failed (its output: {log})' for p, log in zip(failed, logs, strict=True))
                               + '; the other parts ran to their end; no summary written')
    return stopped


def job_outcome(part, returncode, log, precision, plan, start_line=0):
    """'done', 'stopped' (the time limit, a checkpoint to resume from), 'skipped: <why>' (the engine
    declined to run it: its `error:` line, no traceback) or 'failed (...)' with the end of the log;
    start_line: where this process's output begins in the log."""
    if returncode == 0:
        out = part_dir(plan['results_dir'], part, plan['profile'], precision, plan['extra'].get('seed', 0))
        done = os.path.exists(os.path.join(out,
                                           'metrics.json'))
        return 'done' if done else 'stopped'
    with open(log, errors='replace') as fh:
        lines = fh.readlines()
    refusals = [line.strip()[len('error: '):] for line in lines[start_line:] if line.startswith('error: ')]
    if refusals and not any(line.startswith('Traceback') for line in lines[start_line:]):
        return f'skipped: {refusals[-1]}'  # the engine declined (a finished run, a lock, ...): nothing was done
    tail = [line.rstrip() for line in lines[-3:]]
    return f'failed (exit status {returncode}): ' + ' / '.join(tail)
