"""Mutation testing of the code that computes the reported numbers: mutmut changes losses.py,
models.py, engine/train.py and engine/evaluate.py one small edit at a time (an operator, a constant, an argument)
and runs the tests that reach the changed function; a mutant that no test fails on "survives".
On demand, not in CI (docs/mutation.md):

    python -m tools.mutation                     # every module, then the report
    python -m tools.mutation losses evaluate     # some modules (each run checks all their mutants)
    python -m tools.mutation --survivors train   # only survivors and unchecked mutants, after a new test
    python -m tools.mutation --report            # only the report, from mutants/

The fast test selection and what is not mutated are set in setup.cfg [mutmut]. The report,
results/mutation/summary.{json,md}, gives each module's score, the killed (and timed-out) mutants
over all mutants less the equivalent ones, and lists every survivor. A survivor that cannot change
behaviour is listed in EQUIVALENT with the reason.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

from engine.files import write_json
from engine.files import read_json

try:
    import mutmut
    from mutmut.stats import status_by_exit_code
except ImportError:  # a development tool, not in requirements.txt
    sys.exit("mutation testing needs mutmut: pip install 'mutmut>=3.8,<4'")

MODULES = ('losses', 'models', 'train', 'objectives', 'modelfiles', 'evaluate')
# Each module's file and mutmut's dotted name for it (a mutant is named <dotted name>.<function>__mutmut_<n>)
PATHS = dict(losses='losses.py', models='models.py', train='engine/train.py', objectives='engine/objectives.py',
             modelfiles='engine/modelfiles.py', evaluate='engine/evaluate.py')
DOTTED = {m: path[:-3].replace('/', '.') for m, path in PATHS.items()}
# The test files that judge each module's mutants (of them, mutmut runs the tests that reach the
# mutated function; under a mutant, tests/conftest.py skips the rest): a change to the networks is
# caught by the networks' own tests, which take seconds; the engine's training and evaluation need
# the engine's tests, whose smoke runs take minutes together.
NETWORKS = ('test_models.py', 'test_losses.py', 'test_bad_input.py')
ENGINE = NETWORKS + ('test_engine.py',)
TESTS = dict(losses=ENGINE, models=NETWORKS, train=ENGINE, objectives=ENGINE, modelfiles=ENGINE, evaluate=ENGINE)
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
ONE_IMAGE = ('the standard error of one image computed as std / 1: torch gives NaN for the std of one value, '
             'the value the guard returns (with a warning torch gives only once per process)')
CUDNN = 'whether the cuDNN training settings are applied: they have no effect on the CPU, where the suite runs'
V1_NAMES = ('renames the parameters of a record that has a layout as if it were layout v1; no parameter name '
            'of today starts with a v1 name, so the names come back unchanged '
            '(test_v1_renaming_leaves_todays_parameter_names_alone)')
CLOCK_TIE = ('`>=` for `>` between a reading of the wall clock and a limit: the two differ only when the clock reads '
             'the limit exactly, a tie that "more than checkpoint_minutes" and "past stop_at" leave to either side '
             '(tests on a stepped clock pin everything else: '
             'test_training_time_checkpoints_and_a_time_limit_follow_the_clock)')
ZERO_OFFSET = ('the default offset, zeros, made in float32 instead of the model\'s dtype: added to float32 or float64 '
               'logits it changes neither value nor dtype (samplers run in those two; training alone uses bfloat16)')
NO_BIAS = 'bias=None for bias=False: a convolution reads either as "no bias" (`if bias:`)'
ZERO_GRAD = ('gradients zeroed in place instead of freed: a parameter that has had a gradient gets one at every '
             'later step (the trained set only grows, when autoregression switches on), so Adam sees the same '
             'gradients and skips the same parameters')
PIXELCNN_EPS = ('draws eps for a PixelCNN too: its objective never reads eps, and the noise stream serves only eps, '
                'so every number is the same')
BROADCAST = ('the bias expanded to another shape that broadcasts against the (n, 1, 28, 28) offset: the sampler '
             'reads only logit_bias[:, 0, r, c], the same sum of bias and offset')
WIDE_CACHE = ('a cache wider than its windows: the extra columns on the right stay zero and no window reads them '
              '(_tap reads columns c .. c + 2 pw of the padded cache)')
BOOL_BITS = ('the drawn bits kept as booleans: written into the image and the first cache, both of the model\'s '
             'dtype, they become the same 0 and 1')
SAME_INIT = ('the other layout\'s initialisation of a PixelCNN: both draw normal(0, 0.01) for every weight in the '
             'same order and set every bias to zero, so the parameters are equal from the same seed')
# mutant name -> (text of its changed line, why no test can tell it from the original). mutmut numbers
# a function's mutants afresh when the function changes, so an entry counts only while its mutant
# still makes that change (mutant_body); otherwise the report lists it as stale.
EQUIVALENT = {
    'losses.x__is_compiling__mutmut_2': ("None) and torch._dynamo", COMPILE_CHECK),
    'losses.x__is_compiling__mutmut_3': ("getattr(None, 'is_compiling'", COMPILE_CHECK),
    'losses.x__is_compiling__mutmut_7': ("'is_compiling', ) or", 'getattr without its default returns the same '
                                         'function wherever the attribute exists (torch >= 2.3)'),
    'losses.x__is_compiling__mutmut_8': ("'XXis_compilingXX'", COMPILE_CHECK),
    'losses.x__is_compiling__mutmut_9': ("'IS_COMPILING'", COMPILE_CHECK),
    'losses.x__values_hidden__mutmut_1': ('_is_compiling() and any(', BATCHED_CHECK),
    'losses.x__check_probabilities__mutmut_1': ('_values_hidden(None)', BATCHED_CHECK),
    'losses.x__check_sigma__mutmut_10': ('_values_hidden(None)', BATCHED_CHECK),
    'losses.x__check_sigma__mutmut_27': ("float('INF')",
                                         "float('INF') is float('inf'): float() reads the name in any case"),
    'engine.evaluate.x_mean_stderr__mutmut_12': ("float('NAN')", "float('NAN') is float('nan')"),
    'engine.evaluate.x_mean_stderr__mutmut_5': ('if (len(v) > 1) or True', ONE_IMAGE),
    'engine.evaluate.x_mean_stderr__mutmut_8': ('if len(v) >= 1', ONE_IMAGE),
    'engine.evaluate.x_evaluate__mutmut_1': ('only=None, progress=False', PROGRESS),
    'engine.evaluate.x_evaluate__mutmut_33': ('seed + 101, progress=None', PROGRESS),
    'engine.evaluate.x_evaluate__mutmut_39': ('seed + 101, keep=keep)', PROGRESS),
    'engine.evaluate.x_evaluate__mutmut_92': ("progress=None, compile=cfg['compile']", PROGRESS),
    'engine.evaluate.x_evaluate__mutmut_101': ("                compile=cfg['compile'])", PROGRESS),
    'engine.evaluate.x_evaluate__mutmut_93': ('progress=progress, compile=None)', COMPILE_PATH),
    'engine.evaluate.x_evaluate__mutmut_102': ('progress=progress, )', COMPILE_PATH),
    'engine.evaluate.x_evaluate__mutmut_81': ('torch.Generator(None).manual_seed(seed + 202)', CPU_DEVICE),
    'engine.evaluate.x_noise__mutmut_3': ('generator=generator, device=None)', CPU_DEVICE),
    'engine.evaluate.x_noise__mutmut_6': ('generator=generator, )', CPU_DEVICE),
    'engine.modelfiles.x_model_state__mutmut_1': ("('layout' in r['kwargs']) and False", V1_NAMES),
    'engine.modelfiles.x_model_state__mutmut_5': ("'XXlayoutXX' in r['kwargs']", V1_NAMES),
    'engine.modelfiles.x_model_state__mutmut_6': ("'LAYOUT' in r['kwargs']", V1_NAMES),
    'engine.train.xǁTrainingǁ__init____mutmut_27': ('torch.Generator(None).manual_seed', CPU_DEVICE),
    'engine.train.xǁTrainingǁ__init____mutmut_58': ('self.saved = ""', "'' for None: both are false, and the only "
                                                     "reading of it is stop_message's `if saved`"),
    'engine.train.x_captured__mutmut_3': ('float(beta), device=None)', CPU_DEVICE),
    'engine.train.x_captured__mutmut_5': ('float(beta), )', CPU_DEVICE),
    'engine.modelfiles.x_load_file__mutmut_2': ('map_location=None', MAP_LOCATION),
    'engine.modelfiles.x_load_file__mutmut_5': ('torch.load(path, weights_only=True)', MAP_LOCATION),
    'engine.modelfiles.x_load_file__mutmut_3': ('weights_only=None', WEIGHTS_ONLY),
    'engine.modelfiles.x_load_file__mutmut_6': ("map_location='cpu', )", WEIGHTS_ONLY),
    'engine.train.xǁTrainingǁrun__mutmut_13': ("if state['epoch'] > cfg['epochs']:", (
        '`>` for `>=` in the finished-training check: at epoch == epochs the loop over the remaining epochs is '
        'empty, so both return True having trained nothing')),
    'engine.train.xǁTrainingǁrun__mutmut_18': ('load_data(cfg, train=True).to(None)', CPU_DEVICE),
    'engine.train.xǁTrainingǁrun__mutmut_25': ("[:cfg['monitor_images']].to(None)", CPU_DEVICE),
    'engine.train.xǁTrainingǁrun__mutmut_27': ('load_data(cfg, train=None)',
                                               'None is false: the test images, as with train=False'),
    'engine.train.x_train__mutmut_7': ('Training(part, cfg, nets, out, device, None)', PROGRESS),
    'engine.train.x_train__mutmut_14': ('cuda = None', CUDNN),
    'engine.train.x_train__mutmut_16': ("!= 'cuda'", CUDNN),
    'engine.train.x_train__mutmut_17': ("'XXcudaXX'", CUDNN),
    'engine.train.x_train__mutmut_18': ("'CUDA'", CUDNN),
    'engine.train.x_train__mutmut_19': ('if (cuda) and False', CUDNN),
    'engine.train.x_train__mutmut_20': ('if (cuda) or True', CUDNN),
    'engine.train.x_init_output_bias__mutmut_30': ('torch.logit(mean).to(None)', CPU_DEVICE),
    'engine.train.xǁSteppingǁstep__mutmut_6': ("[b * bs:(b + 1) * bs].to(None)", CPU_DEVICE),
    'engine.train.xǁSteppingǁstep__mutmut_15': ("if (cfg['model'] != 'pixelcnn') or True", PIXELCNN_EPS),
    'engine.train.xǁSteppingǁstep__mutmut_25': ("cfg['model'] != 'XXpixelcnnXX'", PIXELCNN_EPS),
    'engine.train.xǁSteppingǁstep__mutmut_26': ("cfg['model'] != 'PIXELCNN'", PIXELCNN_EPS),
    'engine.train.xǁTrainingǁrun__mutmut_67': ("time.time() - last_save >= 60 * cfg['checkpoint_minutes']", CLOCK_TIE),
    'engine.train.xǁTrainingǁrun__mutmut_76': ('(stop_at is not None and time.time() >= stop_at)) and b + 1',
                                               CLOCK_TIE),
    'engine.train.xǁTrainingǁrun__mutmut_89': ('if stop_at is not None and time.time() >= stop_at:', CLOCK_TIE),
    'engine.train.xǁTrainingǁ__init____mutmut_62': ("self.check_every = 1 if (self.device.type == 'cpu') or True", (
        'the numbers are read at every step on every device, as on the CPU, where the suite runs; on a GPU that '
        'is slower and stops on a NaN sooner')),
    'models.xǁGaussianVAEDecoderǁ__init____mutmut_3': ("depth=51, autoregress=True, layout='course'", (
        "a Gaussian decoder accepts autoregress only for the course API's signature and never reads it")),
    'models.xǁIAFǁ__init____mutmut_82': ("'A', 1, filters, 3, padding=1, bias=None)", NO_BIAS),
    'models.xǁIAFǁ__init____mutmut_100': ('nn.Conv2d(filters, filters, 3, padding=1, bias=None)', NO_BIAS),
    'models.x__image_noise__mutmut_7': ('return given.to(device=None, dtype=dtype)', CPU_DEVICE),
    'models.x__offset__mutmut_4': ("_image_noise('offset', n, offset, None, dtype", CPU_DEVICE),
    'models.x__offset__mutmut_17': ('torch.zeros(s, device=None, dtype=dtype)', CPU_DEVICE),
    'models.x__offset__mutmut_20': ('lambda s: torch.zeros(s, dtype=dtype))', CPU_DEVICE),
    'models.xǁDiscreteVAEDecoderǁpixel_logits__mutmut_3': ('torch.zeros((), device=None, dtype=x.dtype)', CPU_DEVICE),
    'models.xǁDiscreteVAEDecoderǁpixel_logits__mutmut_6': ('torch.zeros((), dtype=x.dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_6': ('_uniforms(n, uniforms, None, dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_18': ('torch.zeros(0, 1, IMAGE, IMAGE, device=None', CPU_DEVICE),
    'models.x__image_noise__mutmut_9': ('return given.to(dtype=dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_24': ('torch.zeros(0, 1, IMAGE, IMAGE, dtype=dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_41': ('_offset(n, offset, None, dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_52': ('2 * pw, cin, device=None, dtype=dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_58': ('IMAGE + 2 * pw, cin, dtype=dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_76': ('x = torch.zeros(n, 1, IMAGE, IMAGE, device=None', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_82': ('x = torch.zeros(n, 1, IMAGE, IMAGE, dtype=dtype)', CPU_DEVICE),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_165': ('torch.sigmoid(logit)).to(None)', BOOL_BITS),
    'models.xǁPixelCNNǁ__init____mutmut_58': ("if layout != 'course':", SAME_INIT),
    'models.xǁPixelCNNǁ__init____mutmut_59': ("if layout == 'XXcourseXX':", SAME_INIT),
    'models.xǁPixelCNNǁ__init____mutmut_60': ("if layout == 'COURSE':", SAME_INIT),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_34': ('m.bias.expand(1, IMAGE, IMAGE)', BROADCAST),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_35': ('m.bias.expand(n, IMAGE, IMAGE)', BROADCAST),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_38': ('m.bias.expand(n, 2, IMAGE, IMAGE)', BROADCAST),
    'models.xǁ_IncrementalPixelCNNǁsample__mutmut_63': ('IMAGE + 3 * pw', WIDE_CACHE),
    'models.x__uniforms__mutmut_4': ("_image_noise('uniforms', n, uniforms, None, dtype", CPU_DEVICE),
    'models.x__uniforms__mutmut_17': ('torch.rand(s, device=None, dtype=dtype)', CPU_DEVICE),
    'models.x__uniforms__mutmut_20': ('lambda s: torch.rand(s, dtype=dtype))', CPU_DEVICE),
    'models.x__offset__mutmut_18': ('torch.zeros(s, device=device, dtype=None)', ZERO_OFFSET),
    'models.x__offset__mutmut_21': ('torch.zeros(s, device=device, ))', ZERO_OFFSET),
    'engine.train.x_build__mutmut_1': ('(**kwargs).to(None) for name', CPU_DEVICE),
    'engine.train.xǁSteppingǁstep__mutmut_53': ('self.opt.zero_grad(set_to_none=None)', ZERO_GRAD),
    'engine.train.xǁSteppingǁstep__mutmut_54': ('self.opt.zero_grad(set_to_none=False)', ZERO_GRAD),
    'engine.train.xǁTrainingǁrun__mutmut_106': ("time.time() >= stop_at and state['epoch'] < cfg['epochs']", CLOCK_TIE),
}


def module_of(name):
    """The module (a key of PATHS) whose mutant this is, from its dotted name."""
    return next(m for m, dotted in DOTTED.items() if name.startswith(dotted + '.'))


def mutant_body(name):
    """The source of a mutant's function in mutants/<module>.py, or None if mutmut has not made it."""
    module = module_of(name)
    function = name[len(DOTTED[module]) + 1:]
    path = os.path.join('mutants', PATHS[module])
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        text = fh.read()
    start = re.search(rf'^(\s*)def {re.escape(function)}\(', text, re.M)
    if start is None:
        return None
    rest = text[start.end():]
    end = re.search(rf'^{start.group(1)}\S', rest, re.M)  # the next line at the def's own indentation
    return rest[:end.start()] if end else rest


def equivalent(name):
    """Whether a mutant is listed as equivalent and still makes the listed change."""
    body = mutant_body(name) if name in EQUIVALENT else None
    return body is not None and EQUIVALENT[name][0] in body


def run(modules, children, survivors=False):
    """mutmut run over the mutants of each module in turn (or over those that survived, have no
    test or are not checked yet, less the equivalent ones); {module: {checked, seconds,
    survivors_only}} of each run."""
    runs = {}
    for module in modules:
        names = ([n for n, s in outcomes(module).items() if s in ('survived', 'no tests', 'not checked')
                  and not equivalent(n)] if survivors else [f'{DOTTED[module]}.*'])
        if not names:
            continue
        start = time.monotonic()
        env = dict(os.environ, OMP_NUM_THREADS='1',  # one thread per worker; `children` workers share the cores
                   MUTATION_TESTS=','.join(TESTS[module]))
        done = subprocess.run(['mutmut', 'run', '--max-children', str(children), *names], env=env)
        if done.returncode:
            sys.exit(f'mutmut run failed on {module} (exit {done.returncode}); its output is above')
        checked = len(names) if survivors else len(outcomes(module))
        runs[module] = dict(checked=checked, seconds=round(time.monotonic() - start, 1), survivors_only=survivors)
    return runs


def outcomes(module):
    """{mutant name: status} from mutants/<module>.py.meta, mutmut's record of each mutant."""
    path = os.path.join('mutants', PATHS[module] + '.meta')
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            codes = json.load(fh)['exit_code_by_key']
    except (ValueError, KeyError) as err:  # mutmut rewrites the file in place; a killed run can leave it cut short
        sys.exit(f'{path} cannot be read ({type(err).__name__}: {err}): a mutmut run was probably stopped while '
                 f'writing it. Its verdicts are lost: delete mutants/{PATHS[module]} and {path}, then run '
                 f'`python -m tools.mutation {module}` again. Stop a run with Ctrl-C, which lets mutmut finish '
                 f'writing.')
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def module_summary(module, runs):
    """Counts, score and survivors of a module from mutants/, with the runs that checked them."""
    status = outcomes(module)
    count = {s: sum(v == s for v in status.values()) for s in sorted(set(status.values()))}
    same = sorted(n for n, s in status.items() if s != 'killed' and equivalent(n))
    survivors = sorted(n for n, s in status.items()
                       if s not in ('killed', 'timeout', 'not checked', 'skipped') and n not in same)
    counted = len(status) - len(same) - count.get('skipped', 0) - count.get('not checked', 0)
    caught = count.get('killed', 0) + count.get('timeout', 0)
    return dict(path=PATHS[module], mutants=len(status), counts=count, equivalent=len(same),
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
        lines.append(f"| {PATHS[m]} | {s['mutants']} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {s['equivalent']} | "
                     f"{s['score']}% | {'yes' if s['complete'] else 'no'} | {runs} |")
    lines += ['', 'Survivors (mutmut show NAME prints the change):', '']
    lines += [f'- `{n}` ({st})' for s in modules.values() for n, st in s['survivors'].items()] or ['- none']
    seen = [n for n in EQUIVALENT if module_of(n) in modules]
    lines += ['', 'Equivalent mutants (left out of the score; mutation.EQUIVALENT):', '']
    lines += ([f'- `{n}` (`{EQUIVALENT[n][0].strip()}`): {EQUIVALENT[n][1]}' for n in seen if equivalent(n)]
              or ['- none'])
    stale = [n for n in seen if not equivalent(n)]
    if stale:
        lines += ['', 'Listed as equivalent, but the mutant of that name no longer makes the listed change (counted '
                  'as any other mutant until the entry is updated):', ''] + [f'- `{n}`' for n in stale]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('modules', nargs='*', help=f'any of {", ".join(MODULES)} (default: all)')
    ap.add_argument('--children', type=int, default=os.cpu_count(), help='mutants run at once')
    ap.add_argument('--survivors', action='store_true',
                    help='check only the mutants that survived or are not checked yet')
    ap.add_argument('--report', action='store_true', help='only rewrite the report from mutants/')
    args = ap.parse_args(argv)
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        ap.error(f'unknown module(s) {", ".join(sorted(unknown))}; choose from {", ".join(MODULES)}')
    runs = None if args.report else run(args.modules or MODULES, args.children, args.survivors)
    for m, s in report(runs)['modules'].items():
        print(f"{PATHS[m]}: {s['mutants']} mutants, score {s['score']}%, {len(s['survivors'])} survivors"
              f"{'' if s['complete'] else ' (not complete)'}")


if __name__ == '__main__':
    main()
