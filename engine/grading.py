"""Grading a class: the course_api checks (tests/test_models.py, tests/test_losses.py) run on every
student's models.py and losses.py, and a verdict per handout part.

    python experiments.py grade SUBMISSIONS/ [--out DIR] [--timeout S] [--jobs N]
    grade('SUBMISSIONS', out_dir='grades', timeout=30, jobs=2)   # the same from Python

SUBMISSIONS holds one folder per student with models.py and/or losses.py (found one level down or
deeper when the folder holds neither itself). A file a student did not hand in is the reference's:
the checks of that file are not run and the report says so.

Each student's checks run in processes of their own (`python -m engine.grading --child`, pytest with
HW2_MODELS / HW2_LOSSES as tests/conftest.py reads them); the grader's process never imports a
student's code, it only reads the checks' outcomes. The process first loads each file by itself: a
file that does not load (a syntax error, an exception or an endless loop at import) is that file's
verdict, and the other file is still checked. Every check has a time limit (`timeout` seconds): an
interval timer interrupts Python code that runs past it, and the check fails as "timed out in
<test>", naming the student's function it was in; code that the timer cannot interrupt (a call that
never returns to Python, a loop that catches the interruption) is stopped `GRACE` seconds later by
faulthandler, which writes where it was and ends the process; the checks left then run in a new one.
A process that dies in a check is that check's verdict ("crash"), and the rest run on.

Verdicts per part (PARTS), worst first: error (a file the part needs does not load), crash,
timeout, fail, pass (every check of the part that ran passed), not checked (no check of the part
ran: its file was not handed in). CHECKS maps each course_api test to the parts whose code it
exercises; a failing check counts against the parts that use the function it names (USES): the
call its message names first, the student's function it timed out or raised in, or the function a
check blames by "the fault is in <module>.<name>" (tests/course.py's FAULT, when a student's
function is compared with another of theirs and only the other is wrong).

Output, in out_dir (by default SUBMISSIONS/../grades; never inside the repository's results/):
<student>.md, one report per student, and grades.csv and grades.md, one row per student.
"""
import argparse
import ast
import concurrent.futures
import csv
import faulthandler
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from engine import ROOT

PARTS = ('5a', '5b', '5c', '6a', '6b', '6c', '6d')
FILES = ('models.py', 'losses.py')
VARIABLES = {'models.py': 'HW2_MODELS', 'losses.py': 'HW2_LOSSES'}          # tests/conftest.py
TEST_FILES = {'models.py': 'tests/test_models.py', 'losses.py': 'tests/test_losses.py'}
TIMEOUT = 30.0   # seconds one check may run (the reference's slowest: 4 s on 2 idle cores, 10 s on busy ones)
GRACE = 10.0     # then this long more for the timer to interrupt it, before the process is ended
STARTUP = 180.0  # seconds a process may take to load the files and reach its first check

_M, _L = 'tests/test_models.py::', 'tests/test_losses.py::'
# Every course_api test, by node id: the parts whose code it exercises.
CHECKS = {
    _M + 'test_pixelcnn_is_autoregressive[train]': ('6a', '6c'),
    _M + 'test_pixelcnn_is_autoregressive[eval]': ('6a', '6c'),
    _M + 'test_pixelvae_decoder_is_autoregressive[train]': ('6c',),
    _M + 'test_pixelvae_decoder_is_autoregressive[eval]': ('6c',),
    _M + 'test_iaf_is_autoregressive': ('6d',),
    _M + 'test_iaf_encoder_logqzx_is_exact': ('6d',),
    _M + 'test_iaf_returns_m_and_one_plus_s': ('6d',),
    _M + 'test_encoder_logqzx_matches_normal_log_prob': ('6b', '6c'),
    _M + 'test_course_calls_and_shapes': PARTS,
    _M + 'test_course_samplers': ('5b', '5c', '6a', '6b', '6c', '6d'),
    _L + 'test_gaussian_elbo_matches_distributions': ('5b',),
    _L + 'test_mc_gaussian_elbo_matches_log_probs_and_closed_form': ('5c',),
    _L + 'test_cross_entropy_matches_bernoulli': ('6a', '6b', '6c', '6d'),
    _L + 'test_discrete_output_elbo_kl_is_log_q_minus_log_r': ('6b', '6c', '6d'),
    _L + 'test_losses_return_two_scalars': ('5b', '5c', '6a', '6b', '6c', '6d'),
}
# The parts that use each class of models.py and function of losses.py.
USES = {
    'MaskedConv2d': ('6a', '6c', '6d'), 'MaskedConvnetBlock': ('6a', '6c', '6d'), 'PixelCNN': ('6a', '6c'),
    'ConvnetBlock': ('5a', '5b', '5c', '6b', '6c', '6d'), 'VAEEncoder': ('5b', '5c', '6b', '6c', '6d'),
    'GaussianVAEDecoder': ('5b', '5c'), 'DiscreteVAEDecoder': ('6b', '6c', '6d'), 'IAF': ('6d',),
    'gaussian_elbo': ('5b',), 'mc_gaussian_elbo': ('5c',), 'cross_entropy': ('6a', '6b', '6c', '6d'),
    'discrete_output_elbo': ('6b', '6c', '6d'),
}
NEEDS = {part: ('models.py',) if part == '5a' else FILES for part in PARTS}  # the files each part runs
VERDICTS = ('error', 'crash', 'timeout', 'fail', 'pass', 'not checked')  # worst first
CULPRIT = re.compile(r'the fault is in (?:models|losses)\.([A-Za-z_]\w*)', re.IGNORECASE)  # course.FAULT
CALL = re.compile(r'(?<![\w.])(?:models|losses)\.(?!py\b)([A-Za-z_]\w*)')


def add_arguments(parser):
    """The options of `python experiments.py grade`, on an argparse parser."""
    parser.add_argument('submissions', help='a folder with one folder per student, each holding models.py and/or '
                                            'losses.py')
    parser.add_argument('--out', default=None, help='where the reports go (default: SUBMISSIONS/../grades; never '
                                                    "inside the repository's results/)")
    parser.add_argument('--timeout', type=float, default=TIMEOUT, help=f'seconds one check may run before it is '
                                                                       f'stopped as "timed out" (default {TIMEOUT:g})')
    parser.add_argument('--jobs', type=int, default=2, help='students checked at once, each in processes of its own '
                                                            '(default 2)')
    return parser


# ---------------------------------------------------------------------------------------------
# What a check's outcome concerns


def short(test):
    return test.split('::', 1)[-1]


def culprit(message):
    """The function a failure blames by "the fault is in <module>.<name>" (tests/course.py), or None."""
    found = CULPRIT.search(message or '')
    return found.group(1) if found else None


def subject(check):
    """The student's class or function a failing check is about: the one it blames, else the one it
    timed out or raised in, else the first call its message names (the first of these that USES
    knows, else the first found); None if none is known."""
    function = check.get('function')
    called = CALL.search(check.get('message') or '')
    found = [culprit(check.get('message')), function and function.split('.')[0], called and called.group(1)]
    found = [name for name in found if name]
    return next((name for name in found if name in USES), found[0] if found else None)


def concerns(test, message):
    """The names of models.py and losses.py that a failing course_api test concerns, for
    reporting.versus: the function it blames when it blames another, else the call its message names
    first; with neither, the name its test's name starts with (test_<name>_...)."""
    named = subject(dict(message=message))
    if named:
        return {named}
    stem = short(test).split('[')[0]
    stem = stem[len('test_'):] if stem.startswith('test_') else stem
    return {stem.split('_')[0]} | {n for n in USES if stem.lower().startswith(n.lower() + '_')}


def blamed_parts(test, check):
    """The parts a failing check counts against: those of its test that use its subject, or, where
    none does (it blames a function the test only compares with), the parts that use the subject."""
    parts = CHECKS.get(test, ())
    named = subject(check)
    if named not in USES:
        return parts
    return tuple(p for p in parts if p in USES[named]) or USES[named]


# ---------------------------------------------------------------------------------------------
# The checks' process (python -m engine.grading --child): never run in the grader's own process


def qualname_at(path, line):
    """'Class.method' (or 'function') of the def or class around line `line` of the Python file at
    path, from its syntax tree: nothing is imported. None where there is none or the file does not parse."""
    try:
        with open(path, encoding='utf-8', errors='replace') as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return None
    names, nodes = [], list(ast.iter_child_nodes(tree))
    while nodes:
        node = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.lineno <= line <= (n.end_lineno or n.lineno)), None)
        if node is None:
            break
        names.append(node.name)
        nodes = list(ast.iter_child_nodes(node))
    return '.'.join(names) or None


def place(path, line):
    """'models.py line 12, PixelCNN.forward': a line of a student's file, in words."""
    name = qualname_at(path, line)
    return f'{os.path.basename(path)} line {line}' + (f', {name}' if name else '')


def student_frame(frames, paths):
    """(path, line) of the innermost of (filename, line) frames, innermost first, in a student's file."""
    for filename, line in frames:
        if os.path.realpath(filename) in paths:
            return os.path.realpath(filename), line
    return None


def stack_frames(frame):
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back


class _Interrupted(BaseException):
    """The interval timer's interruption of a check or of loading a file (not an Exception: the
    course's calls catch those, and a student's `except Exception` does too)."""


def _on_timer(signum, frame):
    raise _Interrupted(frame)


def _load(path, timeout):
    """None if the student's file at path loads (executed as a module of its own, in this child
    process), else why not, in words."""
    import importlib.util
    import traceback
    try:
        with open(path, 'rb') as fh:
            compile(fh.read(), path, 'exec')
    except SyntaxError as e:
        text = (e.text or '').strip()
        return f'{type(e).__name__}: {e.msg} (line {e.lineno}' + (f': {text})' if text else ')')
    except (OSError, ValueError) as e:
        return f'{type(e).__name__}: {e}'
    spec = importlib.util.spec_from_file_location('_submitted_' + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    previous = signal.signal(signal.SIGALRM, _on_timer)
    signal.setitimer(signal.ITIMER_REAL, timeout, 1.0)
    try:
        spec.loader.exec_module(module)
        return None
    except _Interrupted as e:
        at = student_frame(stack_frames(e.args[0]), {os.path.realpath(path)})
        return f'loading it did not end within {timeout:g} s' + (f' ({place(*at)})' if at else '')
    except BaseException as e:  # whatever a student's module raises, SystemExit included
        at = student_frame(((f.filename, f.lineno) for f in reversed(traceback.extract_tb(e.__traceback__))),
                           {os.path.realpath(path)})
        return f'{type(e).__name__}: {e}' + (f' ({place(*at)})' if at else '')
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _failure(report, call, fired, paths):
    """outcome, message (and where, function) of a check's phase that did not pass; fired: where the
    interval timer interrupted it (() outside the student's files), None if it did not."""
    if report.skipped:
        return dict(outcome='skipped', message=str(getattr(call.excinfo.value, 'msg', '')))
    out = dict(outcome='failed' if call.when == 'call' else 'error')
    if call.when == 'call' and fired is not None:
        out['outcome'] = 'timeout'
        if fired:
            out.update(where=place(*fired), function=qualname_at(*fired))
    error = call.excinfo.value
    if isinstance(error, pytest.fail.Exception):
        return dict(out, message=str(error.msg))
    out['message'] = '\n'.join(call.excinfo.exconly().splitlines()[:12])
    at = student_frame([(str(entry.path), entry.lineno + 1) for entry in reversed(call.excinfo.traceback)], paths)
    if at and out['outcome'] != 'timeout':
        out.update(message=out['message'] + f' (raised in {place(*at)})', where=place(*at), function=qualname_at(*at))
    return out


class _Limits:
    """The pytest plugin of a checks process: it keeps the checks asked for (only, less skip), limits
    each one's time and writes each one's outcome through emit as it ends."""

    def __init__(self, emit, timeout, grace, threads, paths, stack, only, skip):
        self.emit, self.timeout, self.grace, self.threads = emit, timeout, grace, threads
        self.paths, self.stack, self.only, self.skip = paths, stack, only, skip
        self.outcomes, self.fired = {}, None

    def pytest_collection_modifyitems(self, config, items):
        keep = [i for i in items if (not self.only or i.nodeid in self.only) and i.nodeid not in self.skip]
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in keep])
            items[:] = keep

    def pytest_collection_finish(self, session):
        import torch
        torch.set_num_threads(self.threads)  # after the test modules set theirs
        self.emit(event='collected', tests=[item.nodeid for item in session.items])

    def pytest_runtest_logstart(self, nodeid, location):
        self.outcomes[nodeid] = dict(outcome='passed', message='', seconds=0.0)
        self.emit(event='start', test=nodeid)

    def interrupt(self, signum, frame):
        at = student_frame(stack_frames(frame), self.paths)
        self.fired = at or ()
        raise pytest.fail.Exception(f'timed out: still running after {self.timeout:g} s, the limit of one check'
                                    + (f', in {place(*at)}' if at else ' (outside the submitted files)'), pytrace=False)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        self.fired = None
        previous = signal.signal(signal.SIGALRM, self.interrupt)
        signal.setitimer(signal.ITIMER_REAL, self.timeout, 1.0)  # again every second while it runs on
        faulthandler.dump_traceback_later(self.timeout + self.grace, exit=True, file=self.stack)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            signal.signal(signal.SIGALRM, previous)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = (yield).get_result()
        result = self.outcomes.setdefault(item.nodeid, dict(outcome='passed', message='', seconds=0.0))
        result['seconds'] += report.duration
        if not report.passed and result['outcome'] == 'passed':  # the first phase that did not pass says why
            result.update(_failure(report, call, self.fired, self.paths))

    def pytest_runtest_logfinish(self, nodeid, location):
        self.emit(event='end', test=nodeid, **self.outcomes.get(nodeid, dict(outcome='passed')))


def _child(argv):
    """A checks process: load the student's files, then run the course_api checks of those that load."""
    p = argparse.ArgumentParser(prog='python -m engine.grading --child')
    p.add_argument('--child', action='store_true')
    p.add_argument('--events', required=True)
    p.add_argument('--stack', required=True)
    p.add_argument('--timeout', type=float, required=True)
    p.add_argument('--grace', type=float, required=True)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--select', required=True, help='a JSON file: {"files": {name: path}, "only": [...], "skip": [...]}')
    a = p.parse_args(argv)
    with open(a.select) as fh:
        select = json.load(fh)
    events = open(a.events, 'a', encoding='utf-8')

    def emit(**event):
        events.write(json.dumps(event) + '\n')
        events.flush()

    import torch  # noqa: F401 (imported before the student's files, so that their time limit is their own)
    files, run = select['files'], []
    stack = open(a.stack, 'w')
    for name, path in files.items():
        emit(event='loading', file=name)
        faulthandler.dump_traceback_later(a.timeout + a.grace, exit=True, file=stack)
        error = _load(path, a.timeout)
        faulthandler.cancel_dump_traceback_later()
        if error:
            emit(event='load', file=name, error=error)
        else:
            run.append(name)
    for name in FILES:
        os.environ[VARIABLES[name]] = files[name] if name in run else os.path.join(ROOT, name)
    if not run:
        emit(event='collected', tests=[])
        return 0
    paths = {os.path.realpath(files[name]) for name in run}
    plugin = _Limits(emit, a.timeout, a.grace, a.threads, paths, stack, set(select.get('only') or ()),
                     set(select.get('skip') or ()))
    return pytest.main(['-q', '-p', 'no:cacheprovider', '--rootdir', ROOT, '-c', os.path.join(ROOT, 'pytest.ini'),
                        '-m', 'course_api', *[os.path.join(ROOT, TEST_FILES[name]) for name in run]], plugins=[plugin])


# ---------------------------------------------------------------------------------------------
# One student


def find_files(folder):
    """{name: path or None} of models.py and losses.py in a student's folder: at its top, else the
    shallowest one below it."""
    found = {}
    for name in FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            found[name] = path
            continue
        below = []
        for here, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(('.', '__')))
            if name in names:
                below.append(os.path.join(here, name))
        found[name] = min(below, key=lambda p: (p.count(os.sep), p)) if below else None
    return found


def _events(path):
    out = []
    if os.path.exists(path):
        with open(path, encoding='utf-8') as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # the last line of a process that was ended while writing it
    return out


def _tail(path, lines=15):
    try:
        with open(path, encoding='utf-8', errors='replace') as fh:
            return ''.join(fh.readlines()[-lines:]).strip()
    except OSError:
        return ''


def _stuck_where(paths, *dumps):
    """(where, function) of the student's code in the first of the faulthandler dumps (files) that
    has it: the process that ran past its time, or that died, was there. None if none has."""
    for dump in dumps:
        frames = []
        for line in _tail(dump, 400).splitlines():
            found = re.match(r'\s*File "(.*)", line (\d+) in ', line)
            if found:
                frames.append((found.group(1), int(found.group(2))))
        at = student_frame(frames, paths)
        if at:
            return place(*at), qualname_at(*at)
    return None


def _run_once(files, work, k, timeout, grace, threads, only, skip):
    """One checks process: (its events, its exit status, whether the grader ended it, its log)."""
    events, stack, log = (os.path.join(work, f'{what}-{k}') for what in ('events.jsonl', 'stack.txt', 'log.txt'))
    select = os.path.join(work, f'select-{k}.json')
    with open(select, 'w') as fh:
        json.dump(dict(files=files, only=sorted(only or ()), skip=sorted(skip)), fh)
    env = {key: value for key, value in os.environ.items() if key not in VARIABLES.values()}
    env.update(PYTHONDONTWRITEBYTECODE='1', PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p),
               HW2_DEVICE='cpu', CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONFAULTHANDLER='1')
    command = [sys.executable, '-m', 'engine.grading', '--child', '--events', events, '--stack', stack, '--timeout',
               str(timeout), '--grace', str(grace), '--threads', str(threads), '--select', select]
    ended = False
    with open(log, 'w') as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        seen, last, running = 0, time.monotonic(), False
        while proc.poll() is None:
            time.sleep(0.2)
            now = time.monotonic()
            got = _events(events)
            if len(got) > seen:
                seen, last = len(got), now
                running = got[-1]['event'] == 'start'
            if now - last > (timeout + 2 * grace if running else STARTUP + timeout):
                ended = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return _events(events), proc.returncode, ended, stack, log


def _ending(status, ended, stack, log, paths, timeout, grace):
    """The outcome of the check (or the load) a process was in when it ended: a timeout where
    faulthandler ended it for its time (or the grader did), else a crash."""
    stuck = _stuck_where(paths, stack, log)
    at = dict(where=stuck[0], function=stuck[1]) if stuck else {}
    if ended or 'Timeout (' in _tail(stack, 400):
        limit = 'its time' if ended else f'{timeout + grace:g} s'
        return dict(outcome='timeout', seconds=timeout + grace, **at,
                    message=f'timed out: still running after {limit}, and the limit of {timeout:g} s per check '
                            'could not interrupt it (code that does not come back to Python, or that catches the '
                            'interruption)'
                            + (f', in {stuck[0]}' if stuck else '') + '; ended, and the checks left ran in a new '
                            'process')
    signame = f' ({signal.Signals(-status).name})' if status < 0 and -status in signal.valid_signals() else ''
    said = _tail(log, 5)
    return dict(outcome='crash', seconds=0.0, **at,
                message=f'the process running the checks ended in this one, with exit status {status}{signame}'
                        + (f', in {stuck[0]}' if stuck else '') + (f': {said}' if said else ''))


def check_submission(folder, timeout=TIMEOUT, threads=1, tests=None, grace=GRACE):
    """The course_api checks on the models.py and losses.py of one student's folder, in processes of
    their own. tests: node ids to run (default: every course_api test of the files handed in).
    Returns dict(files={name: path or None}, load={name: why it does not load}, checks={node id:
    dict(outcome=passed|failed|error|timeout|crash|skipped, message, seconds[, where, function])},
    problem=why no check could run or None, processes, seconds)."""
    start = time.monotonic()
    files = find_files(folder)
    handed = {name: os.path.abspath(path) for name, path in files.items() if path}
    paths = {os.path.realpath(p) for p in handed.values()}
    result = dict(files=files, load={}, checks={}, problem=None, processes=0, seconds=0.0)
    if not handed:
        held = sorted(os.listdir(folder))
        result.update(problem='the folder holds neither models.py nor losses.py' + (
            f' (it holds {", ".join(held[:10])}{", ..." if len(held) > 10 else ""})' if held else ' (it is empty)'),
            seconds=time.monotonic() - start)
        return result
    with tempfile.TemporaryDirectory(prefix='grade-') as work:
        collected = None
        while handed:
            events, status, ended, stack, log = _run_once(handed, work, result['processes'], timeout, grace, threads,
                                                          tests, set(result['checks']))
            result['processes'] += 1
            loading = running = None
            for event in events:
                kind = event['event']
                loading = event['file'] if kind == 'loading' else None if kind in ('load', 'collected') else loading
                running = event['test'] if kind == 'start' else None if kind == 'end' else running
                if kind == 'load':
                    result['load'][event['file']] = event['error']
                elif kind == 'collected':
                    collected = (collected or set()) | set(event['tests'])
                elif kind == 'end':
                    result['checks'][event['test']] = {k: v for k, v in event.items() if k not in ('event', 'test')}
            if loading:  # the process ended while it loaded a file: that file's verdict
                why = _ending(status, ended, stack, log, paths, timeout, grace)
                where = f' ({why["where"]})' if why.get('where') else ''
                result['load'][loading] = (f'loading it did not end within {timeout + grace:g} s{where}'
                                           if why['outcome'] == 'timeout' else
                                           f'loading it ended the process, with exit status {status}{where}')
            for name in result['load']:
                handed.pop(name, None)
            if loading:
                continue
            if running is None:
                left = sorted((collected or set()) - set(result['checks']))
                if collected is None or (left and status not in (0, 1, 5)):  # 1: checks failed; 5: none collected
                    why = 'was ended by the grader after no word from it for minutes' if ended else \
                        f'ended with exit status {status}'
                    result['problem'] = (f'the process of the checks {why}' + (f' before {len(left)} of them ran'
                                         if left else ' before any check ran') + f': {_tail(log)}')
                break
            result['checks'][running] = _ending(status, ended, stack, log, paths, timeout, grace)
            if not (collected or set()) - set(result['checks']):
                break
    result['seconds'] = time.monotonic() - start
    return result


# ---------------------------------------------------------------------------------------------
# Verdicts and reports


def reason(test, check):
    if check['outcome'] == 'timeout':
        return f'timed out in {short(test)}' + (f' ({check["where"]})' if check.get('where') else '')
    if check['outcome'] == 'crash':
        return f'crashed in {short(test)}: {check["message"]}'
    return f'{short(test)}: {check["message"]}'


def verdicts(result):
    """{part: dict(verdict, reasons=[...], notes=[...])} of one student's checks."""
    out = {part: dict(verdict='not checked', reasons=[], notes=[]) for part in PARTS}

    def worse(part, verdict, why=None):
        v = out[part]
        if VERDICTS.index(verdict) < VERDICTS.index(v['verdict']):
            v['verdict'] = verdict
        if why:
            v['reasons'].append(why)

    if result['problem']:
        for part in PARTS:
            worse(part, 'error', result['problem'])
    for name, why in result['load'].items():
        for part in PARTS:
            if name in NEEDS[part]:
                worse(part, 'error', f'{name} does not load: {why}')
    for test, check in sorted(result['checks'].items()):
        outcome = check['outcome']
        if outcome == 'skipped':
            continue
        if outcome == 'passed':
            for part in CHECKS.get(test, ()):
                worse(part, 'pass')
            continue
        blamed = blamed_parts(test, check)
        verdict = {'timeout': 'timeout', 'crash': 'crash'}.get(outcome, 'fail')
        for part in blamed:
            worse(part, verdict, reason(test, check))
        mine = CHECKS.get(test, ())
        for part in mine:  # what the check ran of the other parts' code passed it
            if part not in blamed:
                worse(part, 'pass')
                if not set(blamed) & set(mine):  # it fails only because of another part's code: say so
                    out[part]['notes'].append(f'{short(test)} fails, counted against {", ".join(blamed)}: '
                                              f'{check["message"]}')
    return out


def cell(text, limit=None):
    text = ' '.join(str(text).split()).replace('|', '\\|')
    return text if limit is None or len(text) <= limit else text[:limit - 1] + '…'


def file_lines(result):
    lines = []
    for name in FILES:
        path = result['files'].get(name)
        if path is None:
            lines.append(f"- {name}: not handed in; the reference's {name} stands in for it, and its checks "
                         f'({TEST_FILES[name]}) were not run')
        elif name in result['load']:
            lines.append(f"- {name}: does not load: {result['load'][name]}; the reference's {name} stands in for "
                         'it in the checks of the other file')
        else:
            lines.append(f'- {name}: {path}')
    return lines


def student_markdown(name, result, parts, timeout):
    lines = [f'# {name}', ''] + file_lines(result) + [
        f'- checked in {result["seconds"]:.1f} s, in {result["processes"]} process'
        f'{"es" if result["processes"] != 1 else ""}; at most {timeout:g} s per check', '']
    if result['problem']:
        lines += [f'**No check could run:** {cell(result["problem"])}', '']
    lines += ['| part | verdict | why |', '|---|---|---|']
    for part in PARTS:
        v = parts[part]
        why = '<br>'.join(cell(r) for r in v['reasons']) or '<br>'.join('(' + cell(n) + ')' for n in v['notes'])
        lines.append(f'| {part} | {v["verdict"]} | {why} |')
    if result['checks']:
        lines += ['', '## The checks', '', '| check | parts | outcome | seconds | message |', '|---|---|---|---|---|']
        for test, check in sorted(result['checks'].items()):
            mapped = ', '.join(CHECKS[test]) if test in CHECKS else 'not mapped to a part (engine/grading.py, CHECKS)'
            lines.append(f'| {cell(test)} | {mapped} | {check["outcome"]} | {check.get("seconds", 0):.1f} | '
                         f'{cell(check.get("message", ""))} |')
    return '\n'.join(lines) + '\n'


def table_row(name, result, parts):
    files = {n: ('does not load' if n in result['load'] else 'handed in' if result['files'].get(n) else 'reference')
             for n in FILES}
    problems = [' '.join(f'{part}: {parts[part]["reasons"][0]}'.split()) for part in PARTS if parts[part]['reasons']]
    return dict(student=name, **files, **{part: parts[part]['verdict'] for part in PARTS},
                seconds=f'{result["seconds"]:.1f}', problems=problems)


def report_name(name):
    return f'{name} (student).md' if name in ('grades',) else f'{name}.md'


def write_reports(out_dir, graded, timeout, jobs, seconds):
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for name, g in graded.items():
        with open(os.path.join(out_dir, report_name(name)), 'w', encoding='utf-8') as fh:
            fh.write(student_markdown(name, g['result'], g['verdicts'], timeout))
        rows.append(table_row(name, g['result'], g['verdicts']))
    columns = ['student', *FILES, *PARTS, 'seconds', 'problems']
    with open(os.path.join(out_dir, 'grades.csv'), 'w', newline='', encoding='utf-8') as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(dict(row, problems=' | '.join(row['problems'])) for row in rows)
    lines = [f'# Grades: {len(rows)} students', '',
             f'The course_api checks of tests/test_models.py and tests/test_losses.py on each student\'s files, at '
             f'most {timeout:g} s per check, {jobs} students at a time: {seconds:.0f} s in all. Per part: pass (every '
             'check of the part that ran passed), fail, timeout, crash, error (a file the part needs does not load), '
             'not checked (its file was not handed in). Each student\'s report says why.', '',
             '| student | models.py | losses.py | ' + ' | '.join(PARTS) + ' | seconds |',
             '|---|---|---|' + '---|' * len(PARTS) + '---|']
    for row in rows:
        lines.append(f'| [{cell(row["student"])}](<{report_name(row["student"])}>) | {row["models.py"]} | '
                     f'{row["losses.py"]} | ' + ' | '.join(row[p] for p in PARTS) + f' | {row["seconds"]} |')
    failing = [row for row in rows if row['problems']]
    if failing:
        lines += ['', '## Why', '']
        for row in failing:
            lines.append(f'- **{cell(row["student"])}**')
            lines += [f'  - {cell(p, 400)}' for p in row['problems']]
    with open(os.path.join(out_dir, 'grades.md'), 'w', encoding='utf-8') as fh:
        fh.write('\n'.join(lines) + '\n')


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def students(submissions_dir, out_dir=None):
    """[(name, folder)] of the student folders of submissions_dir, by name (hidden folders, caches and
    the output folder left out)."""
    found = []
    for name in sorted(os.listdir(submissions_dir)):
        folder = os.path.join(submissions_dir, name)
        if not os.path.isdir(folder) or name.startswith(('.', '__')) or (out_dir and inside(folder, out_dir)):
            continue
        found.append((name, folder))
    return found


def _check_or_say_why(folder, timeout, threads):
    """check_submission's result, or one whose problem says why the grader itself failed on the folder."""
    start = time.monotonic()
    try:
        return check_submission(folder, timeout, threads)
    except Exception as e:  # one folder the grader cannot handle must not stop the class's grading
        return dict(files={name: None for name in FILES}, load={}, checks={}, processes=0,
                    problem=f'the grader failed on this folder: {type(e).__name__}: {e}',
                    seconds=time.monotonic() - start)


def grade(submissions_dir, out_dir=None, timeout=TIMEOUT, jobs=2, say=print):
    """Check every student folder of submissions_dir (jobs at once), write <student>.md, grades.csv and
    grades.md into out_dir (default: a folder `grades` beside submissions_dir) and return
    {student: dict(result=check_submission's, verdicts=verdicts', report=path)}."""
    if not os.path.isdir(submissions_dir):
        raise ValueError(f'{submissions_dir}: no such folder')
    if jobs < 1 or not timeout > 0:
        raise ValueError(f'jobs must be >= 1 and timeout > 0, got jobs={jobs}, timeout={timeout}')
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(submissions_dir)), 'grades')
    if inside(out_dir, os.path.join(ROOT, 'results')):
        raise ValueError(f'{out_dir} is inside {os.path.join(ROOT, "results")}: the grades go elsewhere (--out)')
    found = students(submissions_dir, out_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start = time.monotonic()
    say(f'grading {len(found)} students in {submissions_dir}, {jobs} at a time, at most {timeout:g} s per check')
    graded = {}
    # the largest first, so that the slow ones do not come last
    order = sorted(found, key=lambda nf: -sum(os.path.getsize(p) for p in find_files(nf[1]).values() if p))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_check_or_say_why, folder, timeout, threads): name for name, folder in order}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            result = future.result()
            parts = verdicts(result)
            graded[name] = dict(result=result, verdicts=parts,
                                report=os.path.join(out_dir, report_name(name)))
            say(f'  {name}: ' + ', '.join(f'{p} {parts[p]["verdict"]}' for p in PARTS)
                + f' ({result["seconds"]:.1f} s)')
    graded = {name: graded[name] for name, _ in found}
    seconds = time.monotonic() - start
    write_reports(out_dir, graded, timeout, jobs, seconds)
    say(f'{len(graded)} students in {seconds:.0f} s; the table: {os.path.join(out_dir, "grades.md")} '
        f'(and grades.csv), one report per student beside it')
    return graded


if __name__ == '__main__':
    if '--child' in sys.argv[1:]:
        sys.exit(_child(sys.argv[1:]))
    args = add_arguments(argparse.ArgumentParser(prog='python -m engine.grading')).parse_args()
    grade(args.submissions, args.out, args.timeout, args.jobs)
