"""The checks' process of the grader (`python -m engine.grading --child`, started by
engine/grading.py for one student): it loads each of the student's files by itself, then runs the
course_api checks of those that load under pytest, each within its time limit, and writes each
outcome as a line of JSON as it ends. It is never run in the grader's own process: only here is a
student's code imported.

A file that does not load (a syntax error, an exception or an endless loop at import) is that file's
verdict. Every check has a time limit: an interval timer interrupts Python code that runs past it,
and the check fails as "timed out", naming the student's function it was in; code that the timer
cannot interrupt is stopped `grace` seconds later by faulthandler, which writes where it was and
ends the process (the grader then runs the checks left in a new one).
"""
import argparse
import ast
import faulthandler
import json
import os
import signal

import pytest

from engine import ROOT
from engine.verdicts import FILES, TEST_FILES, VARIABLES


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


def child(argv):
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
    with open(a.events, 'a', encoding='utf-8') as events, open(a.stack, 'w') as stack:
        def emit(**event):
            events.write(json.dumps(event) + '\n')
            events.flush()
        return run_checks(select, a, emit, stack)


def run_checks(select, args, emit, stack):
    """Load the files of select (the parsed --select), then run the course_api checks of those that
    load, their outcomes through emit, faulthandler's dumps into stack; pytest's exit status."""
    import torch  # noqa: F401 (imported before the student's files, so that their time limit is their own)
    files, run = select['files'], []
    for name, path in files.items():
        emit(event='loading', file=name)
        faulthandler.dump_traceback_later(args.timeout + args.grace, exit=True, file=stack)
        error = _load(path, args.timeout)
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
    plugin = _Limits(emit, args.timeout, args.grace, args.threads, paths, stack, set(select.get('only') or ()),
                     set(select.get('skip') or ()))
    return pytest.main(['-q', '-p', 'no:cacheprovider', '--rootdir', ROOT, '-c', os.path.join(ROOT, 'pytest.ini'),
                        '-m', 'course_api', *[os.path.join(ROOT, TEST_FILES[name]) for name in run]], plugins=[plugin])
