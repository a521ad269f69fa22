"""Mutation testing of the code that computes the reported numbers: mutmut changes losses.py,
models.py, train.py and evaluate.py one small edit at a time (an operator, a constant, an argument)
and runs the tests that reach the changed function; a mutant that no test fails on "survives".
On demand, not in CI (docs/mutation.md):

    python mutation.py                     # every module, then the report
    python mutation.py losses evaluate     # some modules (each run checks all their mutants)
    python mutation.py --survivors train   # only survivors and unchecked mutants, after a new test
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

from files import write_json
from report import read_json

try:
    import mutmut
    from mutmut.stats import status_by_exit_code
except ImportError:  # a development tool, not in requirements.txt
    sys.exit("mutation testing needs mutmut: pip install 'mutmut>=3.8,<4'")

MODULES = ('losses', 'models', 'train', 'evaluate')
OUT = os.path.join('results', 'mutation')

# mutant name -> why no test can tell it from the original
COMPILE_CHECK = ('picks torch._dynamo.is_compiling, the fallback for torch < 2.3, in place of '
                 'torch.compiler.is_compiling; on every torch that has both they are the same check')
BATCHED_CHECK = ('skips the BatchedTensor test under vmap; the value check then reaches _holds, which '
                 'answers True on vmap\'s data-dependent-control-flow error, so the inputs are accepted as before')
PROGRESS = 'progress only shows or hides a tqdm bar on stderr'
COMPILE_PATH = ('compile only chooses the compiled path, which computes the same numbers as the eager one '
                '(test_compiled_importance_sampling_equals_eager_and_follows_weight_updates)')
CPU_DEVICE = ('the default device, the CPU, in place of the one asked for: the same where the suite runs, on '
              'the CPU; on a GPU tensors would meet on two devices and torch would raise (tests/test_devices.py '
              'also reads the engine for tensors made without a device)')
MAP_LOCATION = ('a file is loaded where it was saved instead of onto the CPU: every file the suite reads was '
                'saved on the CPU')
WEIGHTS_ONLY = ('weights_only left at torch.load\'s default, which is True from torch 2.6 (the suite runs 2.14); '
                'weights_only=False is killed by test_a_file_that_is_not_a_checkpoint_is_refused')
CUDNN = 'whether the cuDNN training settings are applied: they have no effect on the CPU, where the suite runs'
DISPLAY = 'only changes the tqdm progress bar on stderr'
V1_NAMES = ('renames the parameters of a record that has a layout as if it were layout v1; no parameter name '
            'of today starts with a v1 name, so the names come back unchanged '
            '(test_v1_renaming_leaves_todays_parameter_names_alone)')
EQUIVALENT = {
    'losses.x__is_compiling__mutmut_2': COMPILE_CHECK,  # `or` -> `and`
    'losses.x__is_compiling__mutmut_3': COMPILE_CHECK,  # getattr(None, ...)
    'losses.x__is_compiling__mutmut_7': ('getattr without its default returns the same function '
                                         'wherever the attribute exists (torch >= 2.3)'),
    'losses.x__is_compiling__mutmut_8': COMPILE_CHECK,  # a misspelt attribute name
    'losses.x__is_compiling__mutmut_9': COMPILE_CHECK,  # an upper-case attribute name
    'losses.x__values_hidden__mutmut_1': BATCHED_CHECK,  # `or` -> `and`: outside compile, never hidden
    'losses.x__check_probabilities__mutmut_1': BATCHED_CHECK,  # _values_hidden(None)
    'losses.x__check_sigma__mutmut_10': BATCHED_CHECK,  # _values_hidden(None)
    'losses.x__check_sigma__mutmut_27': "float('INF') is float('inf'): float() reads the name in any case",
    'evaluate.x_mean_stderr__mutmut_12': "float('NAN') is float('nan')",
    'evaluate.x_evaluate__mutmut_1': PROGRESS,      # progress=True -> False as the default
    'evaluate.x_evaluate__mutmut_33': PROGRESS,     # progress=None for the test ELBO
    'evaluate.x_evaluate__mutmut_39': PROGRESS,     # progress left at neg_elbo's default
    'evaluate.x_evaluate__mutmut_92': PROGRESS,     # progress=None for importance sampling
    'evaluate.x_evaluate__mutmut_101': PROGRESS,    # progress left at its default
    'evaluate.x_evaluate__mutmut_93': COMPILE_PATH,   # compile=None
    'evaluate.x_evaluate__mutmut_102': COMPILE_PATH,  # compile left at its default, False
    'evaluate.x_evaluate__mutmut_81': CPU_DEVICE,  # torch.Generator(None)
    'train.x_model_state__mutmut_1': V1_NAMES,  # every record renamed
    'train.x_model_state__mutmut_5': V1_NAMES,  # a misspelt key: every record renamed
    'train.x_model_state__mutmut_6': V1_NAMES,  # an upper-case key: every record renamed
    'train.xǁTrainingǁ__init____mutmut_28': CPU_DEVICE,  # torch.Generator(None) for eps
    'train.xǁTrainingǁ__init____mutmut_59': ("self.saved = '' for None: both are false, and the only reading of it "
                                             "is stop_message's `if saved`"),
    'train.x_captured__mutmut_3': CPU_DEVICE,     # beta made with device=None
    'train.x_captured__mutmut_5': CPU_DEVICE,     # beta made without a device
    'train.x_load_file__mutmut_2': MAP_LOCATION,  # map_location=None
    'train.x_load_file__mutmut_5': MAP_LOCATION,  # no map_location
    'train.x_load_file__mutmut_3': WEIGHTS_ONLY,  # weights_only=None
    'train.x_load_file__mutmut_6': WEIGHTS_ONLY,  # weights_only left out
    'train.xǁTrainingǁrun__mutmut_13': ('`>` for `>=` in the finished-training check: at epoch == epochs the loop over '
                                        'the remaining epochs is empty, so both return True having trained nothing'),
    'train.xǁTrainingǁrun__mutmut_18': CPU_DEVICE,  # training images .to(None)
    'train.xǁTrainingǁrun__mutmut_25': CPU_DEVICE,  # monitor images .to(None)
    'train.xǁTrainingǁrun__mutmut_27': "load_data(train=None): None is false, so the test images as with train=False",
    'train.xǁTrainingǁrun__mutmut_53': DISPLAY,   # desc=None
    'train.xǁTrainingǁrun__mutmut_54': DISPLAY,   # initial=None
    'train.xǁTrainingǁrun__mutmut_55': DISPLAY,   # total=None
    'train.xǁTrainingǁrun__mutmut_56': DISPLAY,   # leave=None
    'train.xǁTrainingǁrun__mutmut_57': DISPLAY,   # disable=None
    'train.xǁTrainingǁrun__mutmut_59': DISPLAY,   # no desc
    'train.x_train__mutmut_17': CUDNN,  # `== 'XXcudaXX'`: never applied
    'train.x_train__mutmut_18': CUDNN,  # `== 'CUDA'`: never applied
    'train.x_train__mutmut_19': CUDNN,  # `and False`: never applied
    'train.x_train__mutmut_20': CUDNN,  # `or True`: applied on the CPU too
}


def run(modules, children, survivors=False):
    """mutmut run over the mutants of each module in turn (or over those that survived, have no
    test or are not checked yet); {module: {checked, seconds, survivors_only}} of each run."""
    runs = {}
    for module in modules:
        names = ([n for n, s in outcomes(module).items() if s in ('survived', 'no tests', 'not checked')]
                 if survivors else [f'{module}.*'])
        if not names:
            continue
        start = time.monotonic()
        env = dict(os.environ, OMP_NUM_THREADS='1')  # one thread per worker; `children` workers share the cores
        done = subprocess.run(['mutmut', 'run', '--max-children', str(children), *names], env=env)
        if done.returncode:
            sys.exit(f'mutmut run failed on {module} (exit {done.returncode}); its output is above')
        checked = len(names) if survivors else len(outcomes(module))
        runs[module] = dict(checked=checked, seconds=round(time.monotonic() - start, 1), survivors_only=survivors)
    return runs


def outcomes(module):
    """{mutant name: status} from mutants/<module>.py.meta, mutmut's record of each mutant."""
    path = os.path.join('mutants', f'{module}.py.meta')
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        codes = json.load(fh)['exit_code_by_key']
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def module_summary(module, runs):
    """Counts, score and survivors of a module from mutants/, with the runs that checked them."""
    status = outcomes(module)
    count = {s: sum(v == s for v in status.values()) for s in sorted(set(status.values()))}
    equivalent = sorted(n for n, s in status.items() if n in EQUIVALENT and s != 'killed')
    survivors = sorted(n for n, s in status.items()
                       if s not in ('killed', 'timeout', 'not checked', 'skipped') and n not in EQUIVALENT)
    counted = len(status) - len(equivalent) - count.get('skipped', 0) - count.get('not checked', 0)
    caught = count.get('killed', 0) + count.get('timeout', 0)
    return dict(mutants=len(status), counts=count, equivalent=len(equivalent),
                score=round(100 * caught / counted, 1) if counted else None,
                complete=count.get('not checked', 0) == 0, runs=runs,
                seconds=round(sum(r['seconds'] for r in runs), 1), survivors={n: status[n] for n in survivors})


def merged_runs(module, old, new):
    """The runs behind a module's verdicts: a whole-module run replaces the earlier ones, a run of
    the survivors adds to them."""
    before = old.get('runs') or ([dict(checked=old['mutants'], seconds=old['seconds'], survivors_only=False)]
                                 if old.get('seconds') else [])
    if module not in new:
        return before
    return before + [new[module]] if new[module]['survivors_only'] else [new[module]]


def report(new_runs=None):
    """Write results/mutation/summary.json and summary.md for every module mutmut has seen."""
    path = os.path.join(OUT, 'summary.json')
    old = read_json(path).get('modules', {}) if os.path.exists(path) else {}
    modules = {m: module_summary(m, merged_runs(m, old.get(m, {}), new_runs or {}))
               for m in MODULES if any(v != 'not checked' for v in outcomes(m).values())}  # modules run
    import torch
    summary = dict(modules=modules, equivalent=EQUIVALENT, mutmut=mutmut.__version__, torch=torch.__version__,
                   cores=os.cpu_count(), machine=platform.machine())
    os.makedirs(OUT, exist_ok=True)
    write_json(path, summary, indent=2)
    with open(os.path.join(OUT, 'summary.md'), 'w') as fh:
        fh.write(markdown(modules))
    return summary


def markdown(modules):
    lines = ['| module | mutants | killed | timeout | survived | no tests | equivalent | score | complete | '
             'wall time, s (mutants checked) |', '|---|---|---|---|---|---|---|---|---|---|']
    for m, s in modules.items():
        c = s['counts']
        runs = ' + '.join(f"{r['seconds']:.0f} ({r['checked']})" for r in s['runs'])
        lines.append(f"| {m}.py | {s['mutants']} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {s['equivalent']} | "
                     f"{s['score']}% | {'yes' if s['complete'] else 'no'} | {runs} |")
    lines += ['', 'Survivors (mutmut show NAME prints the change):', '']
    lines += [f'- `{n}` ({st})' for s in modules.values() for n, st in s['survivors'].items()] or ['- none']
    seen = [n for n in EQUIVALENT if n.split('.')[0] in modules]
    lines += ['', 'Equivalent mutants (left out of the score; mutation.EQUIVALENT):', '']
    lines += [f'- `{n}`: {EQUIVALENT[n]}' for n in seen] or ['- none']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('modules', nargs='*', help=f'any of {", ".join(MODULES)} (default: all)')
    ap.add_argument('--children', type=int, default=os.cpu_count(), help='mutants run at once')
    ap.add_argument('--survivors', action='store_true', help='check only the mutants that survived or are not checked yet')
    ap.add_argument('--report', action='store_true', help='only rewrite the report from mutants/')
    args = ap.parse_args(argv)
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        ap.error(f'unknown module(s) {", ".join(sorted(unknown))}; choose from {", ".join(MODULES)}')
    runs = None if args.report else run(args.modules or MODULES, args.children, args.survivors)
    for m, s in report(runs)['modules'].items():
        print(f"{m}.py: {s['mutants']} mutants, score {s['score']}%, {len(s['survivors'])} survivors"
              f"{'' if s['complete'] else ' (not complete)'}")


if __name__ == '__main__':
    main()
