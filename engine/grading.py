"""Grading a class: the course_api checks (tests/test_models.py, tests/test_losses.py) run on every
student's models.py and losses.py, and a verdict per handout part.

    python experiments.py grade SUBMISSIONS/ [--out DIR] [--timeout S] [--jobs N]
    grade('SUBMISSIONS', out_dir='grades', timeout=30, jobs=2)   # the same from Python

SUBMISSIONS holds one folder per student with models.py and/or losses.py (found one level down or
deeper when the folder holds neither itself). A file a student did not hand in is the reference's:
the checks of that file are not run and the report says so.

Each student's checks run in processes of their own (`python -m engine.grading --child`,
engine/checking.py: pytest with HW2_MODELS / HW2_LOSSES as tests/conftest.py reads them); the
grader's process never imports a student's code, it only reads the checks' outcomes. The process
first loads each file by itself: a file that does not load (a syntax error, an exception or an
endless loop at import) is that file's verdict, and the other file is still checked. Every check has
a time limit (`timeout` seconds): an interval timer interrupts Python code that runs past it, and
the check fails as "timed out in <test>", naming the student's function it was in; code that the
timer cannot interrupt (a call that never returns to Python, a loop that catches the interruption)
is stopped `GRACE` seconds later by faulthandler, which writes where it was and ends the process;
the checks left then run in a new one. A process that dies in a check is that check's verdict
("crash"), and the rest run on.

Verdicts per part (PARTS, engine/verdicts.py), worst first: error (a file the part needs does not
load), crash, timeout, fail, pass (every check of the part that ran passed), not checked (no check
of the part ran: its file was not handed in). CHECKS maps each course_api test to the parts whose
code it exercises; a failing check counts against the parts that use the function it names (USES):
the call its message names first, the student's function it timed out or raised in, or the
function a check blames by "the fault is in <module>.<name>" (tests/course.py's FAULT, when a
student's function is compared with another of theirs and only the other is wrong).

Output, in out_dir (by default SUBMISSIONS/../grades; never inside the repository's results/):
<student>.md, one report per student, and grades.csv and grades.md, one row per student.
"""
import argparse
import concurrent.futures
import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from engine import ROOT
from engine.checking import child, place, qualname_at, student_frame
from engine.verdicts import CHECKS, FILES, PARTS, TEST_FILES, VARIABLES, verdicts
# Re-exported: the checks' table and the verdicts were parts of this module, and the tests name them as grading's.
from engine.verdicts import USES, blamed_parts, concerns  # noqa: F401

TIMEOUT = 30.0   # seconds one check may run (the reference's slowest: 4 s on 2 idle cores, 10 s on busy ones)
GRACE = 10.0     # then this long more for the timer to interrupt it, before the process is ended
STARTUP = 180.0  # seconds a process may take to load the files and reach its first check


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
                with contextlib.suppress(ValueError):  # the last line of a process that was ended while writing it
                    out.append(json.loads(line))
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
# Reports


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
            mapped = ', '.join(CHECKS[test]) if test in CHECKS else 'not mapped to a part (engine/verdicts.py, CHECKS)'
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
        sys.exit(child(sys.argv[1:]))
    args = add_arguments(argparse.ArgumentParser(prog='python -m engine.grading')).parse_args()
    grade(args.submissions, args.out, args.timeout, args.jobs)
