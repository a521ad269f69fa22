"""Yours against the reference: every part a student has finished (results/mine/<run>/<part>, see
engine/student.py) beside the reference run of the same profile and precision (results/<run>/<part>).
Each quantity is the student's value minus the reference's, paired over the same test images where
both runs saved per-image values (answers.contrast), with its standard error; a difference under
two standard errors is "no measurable difference". Where the student's bound or NLL is measurably
higher (worse), the course_api tests run on the student's models.py and losses.py, and the failing
ones that name a class or loss the part uses are given as the likeliest suspects.

    python experiments.py compare            # the table, printed
    versus.show_versus(results_dir)          # in a notebook
"""
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from engine import student, verdicts
from engine.config import changes, model_spec, quantities, run_dirs, with_defaults
from engine.files import read_json
from engine.reference import BUILT
from reporting.answers import contrast, how, measurable, value_text
from reporting.reader import load_metrics

IGNORED = ('compile', 'checkpoint_minutes')  # settings that do not change a run's numbers


def mine_dir(results_dir='results'):
    """The student's results: results/mine for the repository's results/, else results_dir itself."""
    return os.path.join(results_dir, student.MINE) if student.is_reference_dir(results_dir) else results_dir


def finished_pairs(mine, reference, runs=None):
    """[(run name, the student's metrics, the reference's metrics or None)] for every finished part in mine."""
    found = []
    for path, _, _ in run_dirs(mine):
        run = os.path.basename(path)
        for m in load_metrics(path) if runs is None or run in runs else []:
            ref = os.path.join(reference, run, m['part'])
            if not os.path.exists(os.path.join(ref, 'metrics.json')):  # one built on first use (engine.reference)
                ref = os.path.join(reference, BUILT, run, m['part'])
            has = os.path.exists(os.path.join(ref, 'metrics.json'))
            found.append((run, m, dict(read_json(os.path.join(ref, 'metrics.json')), dir=ref) if has else None))
    return found


def missing_references(results_dir='results'):
    """[(part, profile, precision)] of the student's finished parts that have no reference run yet."""
    reference = os.path.relpath(student.reference_results())
    return [(m['part'], m['profile'], m['config'].get('precision', 'fp32'))
            for _, m, ref in finished_pairs(mine_dir(results_dir), reference) if ref is None]


def lower_is_better(q):
    return q in ('test_elbo', 'test_elbo_mc', 'test_nll') or q.startswith('test_nll_is')


def verdict(q, c):
    if c['value'] == 0 and c['se'] == 0:
        return 'the same numbers'
    if not measurable(c):
        return 'no measurable difference'
    if not lower_is_better(q):
        return 'measurably different'
    return 'yours is measurably worse' if c['value'] > 0 else 'yours is measurably better'


def other_settings(m, ref):
    a, b = with_defaults(ref['config']), with_defaults(m['config'])
    keys = sorted(k for k in set(a) | set(b) if k not in IGNORED and a.get(k) != b.get(k))
    return changes(a, b, keys, ('reference', 'yours')) if keys else ''


def rows(mine, reference, runs=None):
    """One row per (run, part, reported quantity) of the student's finished parts."""
    found = []
    for run, m, ref in finished_pairs(mine, reference, runs):
        if ref is None:
            found.append(dict(run=run, part=m['part'], quantity='', verdict='no reference run at this profile and '
                                                                           'precision', m=m))
            continue
        for q in quantities(m['config']):
            mv, rv = m['values'].get(q), ref['values'].get(q)
            if mv is None or rv is None or mv['stderr'] is None or rv['stderr'] is None:
                continue
            c = contrast([(1, m, q), (-1, ref, q)])
            found.append(dict(run=run, part=m['part'], quantity=q, yours=mv, reference=rv, difference=c,
                              verdict=verdict(q, c), settings=other_settings(m, ref), m=m))
    return found


def row_line(r):
    if not r['quantity']:
        return f'| {r["run"]} | {r["part"]} | | | | | {r["verdict"]} |'
    c = r['difference']
    note = f' (other settings: {r["settings"]})' if r['settings'] else ''
    digits = difference_digits(c['se'])
    return (f'| {r["run"]} | {r["part"]} | {r["quantity"]} | {value_text(r["yours"])} | {value_text(r["reference"])} | '
            f'{c["value"]:+.{digits}f} ± {c["se"]:.{digits}f} ({how(c)}) | {r["verdict"]}{note} |')


def difference_digits(se):
    """Decimals that show a standard error with two significant digits (at least 2, at most 8), so
    that a measurable difference never reads '+0.00 ± 0.00'."""
    if not se or se <= 0:
        return 2
    import math
    return max(2, min(8, 1 - math.floor(math.log10(se))))


def course_api_failures(timeout=900, code_dir=None):
    """{test: failure message} of the course_api tests on the models.py and losses.py in code_dir
    (default: those that run here), by pytest in a subprocess (HW2_MODELS=... HW2_LOSSES=... pytest -m
    course_api), or None if they could not be run."""
    code_dir = code_dir or student.CODE_DIR
    env = dict(os.environ, **{var: os.path.join(code_dir, name) for var, name in
                               (('HW2_MODELS', 'models.py'), ('HW2_LOSSES', 'losses.py'))})
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, 'course_api.xml')
        try:
            subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'course_api',
                            '--junitxml', junit], cwd=student.ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
            cases = list(ET.parse(junit).iter('testcase'))
        except (OSError, subprocess.TimeoutExpired, ET.ParseError):
            return None
    failures = {}
    for case in cases:
        bad = next((c for c in case if c.tag in ('failure', 'error')), None)
        if bad is not None:
            failures[case.get('name')] = (bad.get('message') or bad.tag).strip().splitlines()[0]
    return failures


# The classes each model class is built from: a failure naming one concerns every part built from it.
COMPONENTS = {'PixelCNN': ('MaskedConv2d', 'MaskedConvnetBlock'), 'IAF': ('MaskedConv2d', 'MaskedConvnetBlock'),
              'VAEEncoder': ('ConvnetBlock',), 'GaussianVAEDecoder': ('ConvnetBlock',),
              'DiscreteVAEDecoder': ('ConvnetBlock',)}


def uses(m):
    """The names of the classes and the loss a part trains: what a suspect's test or message names."""
    cfg = with_defaults(m['config'])
    names = {cls for cls, _ in model_spec(cfg).values()} | {cfg['loss']}
    names |= {'IAF'} if cfg['flows'] else set()
    names |= {'PixelCNN', 'pixelvae'} if cfg['autoregress'] else set()
    names |= {part for cls in list(names) for part in COMPONENTS.get(cls, ())}
    return sorted(names)


def concerned(names, test, message):
    """Whether a failing course_api test concerns any of names: the function it blames when it says the
    fault is in another of the student's functions than the one it calls (mc_gaussian_elbo's check
    against a broken gaussian_elbo concerns gaussian_elbo alone), else the call its message names
    first, else the name its test's name starts with (verdicts.concerns; whole names: gaussian_elbo
    is not mc_gaussian_elbo)."""
    return bool({n.lower() for n in names} & {c.lower() for c in verdicts.concerns(test, message)})


def suspects(worse, failures):
    """Lines naming, for each part where the student is measurably worse, the failing course_api
    tests that concern what it uses."""
    if failures is None:
        return ['The course_api tests could not be run here (`pytest -m course_api`, see tests/conftest.py).']
    if not failures:
        return ['Every course_api test passes on your models.py and losses.py: the course\'s calls see nothing '
                'wrong, so look at what they do not check (initialisation, the settings, what training does '
                'with the numbers).']
    lines = []
    for m in worse:
        names = uses(m)
        hits = [(t, msg) for t, msg in failures.items() if concerned(names, t, msg)]
        lines.append(f'{m["part"]} uses {", ".join(names)}; ' + ('the likeliest suspects, the course_api tests that '
                     'fail on your files and concern them:' if hits else 'no failing course_api test concerns them; '
                     'these fail:'))
        lines += [f'  - {t}: {msg}' for t, msg in (hits or failures.items())]
    return lines


def versus_markdown(results_dir='results', runs=None, check=True):
    """The table of yours against the reference, with the suspects where yours is worse (check:
    run the course_api tests to find them); a line saying so when nothing has finished."""
    mine, reference = mine_dir(results_dir), os.path.relpath(student.reference_results())
    found = rows(mine, reference, runs)
    if not found and student.is_reference():
        return ('Your models.py and losses.py are the code behind the committed results: the numbers above are '
                'the reference\'s own.\n')
    if not found:
        return (f'No part of yours has finished in `{mine}` yet: `python experiments.py run PART` (or `all`) trains '
                f'your code there.\n')
    lines = [f'Yours (`{mine}`) against the reference (`{reference}`), same profile and '
             'precision; nats per image, lower is better for the bounds and NLLs. The difference is yours minus '
             'the reference, over the same test images where both saved per-image values ("paired"), with its '
             'standard error; under two standard errors it is no measurable difference.', '',
             '| run | part | quantity | yours | reference | yours − reference | verdict |',
             '|---|---|---|---|---|---|---|'] + [row_line(r) for r in found]
    worse = {r['part']: r['m'] for r in found if r['verdict'] == 'yours is measurably worse'}
    if worse:
        lines += ['', f'Measurably worse: {", ".join(worse)}.']
        for code_dir, ms in by_code(worse.values()).items():
            lines += [code_words(code_dir, ms)] + suspects(ms, course_api_failures(code_dir=code_dir) if check
                                                           else None)
    return '\n'.join(lines) + '\n'


def code_of(m):
    """The folder holding the models.py and losses.py that made the run m: the copy it kept (code/),
    else the code here when it is the code the run recorded, else None (that code is gone)."""
    kept = os.path.join(m['dir'], 'code') if 'dir' in m else None
    if kept and all(os.path.exists(os.path.join(kept, f)) for f in student.CODE_FILES):
        return kept
    return student.CODE_DIR if (m.get('code') or {}) == student.code_digest() else None


def by_code(ms):
    """{code folder (or None): [runs made by that code]}, so that each run's checks run on its own code."""
    groups = {}
    for m in ms:
        groups.setdefault(code_of(m), []).append(m)
    return groups


def code_words(code_dir, ms):
    parts = ', '.join(m['part'] for m in ms)
    if code_dir is None:
        return (f'The code that made {parts} is not kept here (its run has no code/ copy and the models.py and '
                f'losses.py here now differ from what it recorded), so the checks below are of the code here now, '
                f'not of what made those numbers.')
    return f'The course_api checks of the code that made {parts} (`{code_dir}`):'


def show_versus(results_dir='results'):
    """Display the table in a notebook."""
    from IPython.display import Markdown, display
    display(Markdown(versus_markdown(results_dir)))
