"""Mutation testing of the code that computes the reported numbers: mutmut changes losses.py,
models.py, train.py and evaluate.py one small edit at a time (an operator, a constant, an argument)
and runs the tests that reach the changed function; a mutant that no test fails on "survives".
On demand, not in CI (docs/mutation.md):

    python mutation.py                     # every module, then the report
    python mutation.py losses evaluate     # some modules (a rerun checks only unchecked mutants)
    python mutation.py --report            # only the report, from mutants/

The fast test selection and what is not mutated are set in setup.cfg [mutmut]. The report,
results/mutation/summary.{json,md}, gives each module's score, the killed (and timed-out) mutants
over all mutants less the equivalent ones, and lists every survivor. A survivor that cannot change
behaviour is listed in EQUIVALENT with the reason.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

from data import write_json

try:
    import mutmut
    from mutmut.stats import status_by_exit_code
except ImportError:  # a development tool, not in requirements.txt
    sys.exit("mutation testing needs mutmut: pip install 'mutmut>=3.8,<4'")

MODULES = ('losses', 'models', 'train', 'evaluate')
OUT = os.path.join('results', 'mutation')

# mutant name -> why no test can tell it from the original
EQUIVALENT = {}


def run(modules, children):
    """mutmut run over the mutants of each module in turn; {module: wall seconds}."""
    seconds = {}
    for module in modules:
        start = time.monotonic()
        env = dict(os.environ, OMP_NUM_THREADS='1')  # one thread per worker; `children` workers share the cores
        done = subprocess.run(['mutmut', 'run', '--max-children', str(children), f'{module}.*'], env=env)
        if done.returncode:
            sys.exit(f'mutmut run failed on {module} (exit {done.returncode}); its output is above')
        seconds[module] = round(time.monotonic() - start, 1)
    return seconds


def outcomes(module):
    """{mutant name: status} from mutants/<module>.py.meta, mutmut's record of each mutant."""
    path = os.path.join('mutants', f'{module}.py.meta')
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        codes = json.load(fh)['exit_code_by_key']
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def module_summary(module, seconds=None):
    status = outcomes(module)
    count = {s: sum(v == s for v in status.values()) for s in sorted(set(status.values()))}
    equivalent = sorted(n for n, s in status.items() if n in EQUIVALENT and s != 'killed')
    survivors = sorted(n for n, s in status.items()
                       if s not in ('killed', 'timeout', 'not checked', 'skipped') and n not in EQUIVALENT)
    counted = len(status) - len(equivalent) - count.get('skipped', 0) - count.get('not checked', 0)
    caught = count.get('killed', 0) + count.get('timeout', 0)
    return dict(mutants=len(status), counts=count, equivalent=len(equivalent),
                score=round(100 * caught / counted, 1) if counted else None,
                complete=count.get('not checked', 0) == 0, seconds=seconds,
                survivors={n: status[n] for n in survivors})


def report(seconds=None):
    """Write results/mutation/summary.json and summary.md for every module mutmut has seen."""
    old = {}
    path = os.path.join(OUT, 'summary.json')
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh).get('modules', {})
    modules = {m: module_summary(m, (seconds or {}).get(m, old.get(m, {}).get('seconds')))
               for m in MODULES if any(v != 'not checked' for v in outcomes(m).values())}  # modules run
    import torch
    summary = dict(modules=modules, equivalent=EQUIVALENT, mutmut=mutmut.__version__, torch=torch.__version__,
                   cores=os.cpu_count(), machine=platform.machine())
    os.makedirs(OUT, exist_ok=True)
    write_json(path, summary, indent=2)
    lines = ['| module | mutants | killed | timeout | survived | no tests | equivalent | score | complete | wall time, s |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for m, s in modules.items():
        c = s['counts']
        lines.append(f"| {m}.py | {s['mutants']} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {s['equivalent']} | "
                     f"{s['score']}% | {'yes' if s['complete'] else 'no'} | {s['seconds'] or ''} |")
    lines += ['', 'Survivors (mutmut show NAME prints the change):', '']
    lines += [f'- `{n}` ({st})' for s in modules.values() for n, st in s['survivors'].items()] or ['- none']
    with open(os.path.join(OUT, 'summary.md'), 'w') as fh:
        fh.write('\n'.join(lines) + '\n')
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('modules', nargs='*', help=f'any of {", ".join(MODULES)} (default: all)')
    ap.add_argument('--children', type=int, default=os.cpu_count(), help='mutants run at once')
    ap.add_argument('--report', action='store_true', help='only rewrite the report from mutants/')
    args = ap.parse_args(argv)
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        ap.error(f'unknown module(s) {", ".join(sorted(unknown))}; choose from {", ".join(MODULES)}')
    seconds = None if args.report else run(args.modules or MODULES, args.children)
    for m, s in report(seconds)['modules'].items():
        print(f"{m}.py: {s['mutants']} mutants, score {s['score']}%, {len(s['survivors'])} survivors"
              f"{'' if s['complete'] else ' (not complete)'}")


if __name__ == '__main__':
    main()
