"""`python experiments.py grade SUBMISSIONS/` (engine/grading.py): the course_api checks of many
students, a verdict per handout part. The submissions are made here from the repository's own
models.py and losses.py by text substitution, so that they follow the code they break."""
import csv
import os
import subprocess
import sys

import pytest

from engine import config as C
from engine import grading
from reporting import versus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 8  # seconds per check: the reference's slowest check takes about 2; the endless loop's two checks take this


def source(name):
    with open(os.path.join(ROOT, name), encoding='utf-8') as fh:
        return fh.read()


def substituted(name, old, new):
    """The repository's file `name` with the one occurrence of old replaced by new."""
    text = source(name)
    assert text.count(old) == 1, f'{name} no longer holds {old!r}: update the substitution'
    return text.replace(old, new)


GAUSSIAN_FORWARD = '    def forward(self, z):  # (B, 49) -> (B, 1, 28, 28)\n'
GAUSSIAN_SAMPLE = '    def sample(self, z, sigma):\n'
IAF_FORWARD = '    def forward(self, z, h):\n'

SUBMISSIONS = {
    'reference': {'models.py': lambda: source('models.py'), 'losses.py': lambda: source('losses.py')},
    # the 1/2 of the closed-form KL dropped; losses.py only: the reference's models.py stands in
    'kl': {'losses.py': lambda: substituted('losses.py', 'divergence = 0.5 * (logvar.exp()',
                                            'divergence = (logvar.exp()')},
    # type 'A' keeps the centre tap, as type 'B' does; models.py only
    'mask': {'models.py': lambda: substituted('models.py', "mask[kh // 2, kw // 2 + (mask_type == 'B'):] = 0",
                                              'mask[kh // 2, kw // 2 + 1:] = 0')},
    'syntax': {'models.py': lambda: substituted('models.py', 'class ConvnetBlock(nn.Module):',
                                                'class ConvnetBlock(nn.Module)'),
               'losses.py': lambda: source('losses.py')},
    'loop': {'models.py': lambda: substituted('models.py', GAUSSIAN_FORWARD,
                                              GAUSSIAN_FORWARD + '        while True:\n            pass\n')},
}

ALL_PASS = dict.fromkeys(grading.PARTS, 'pass')
EXPECTED = {
    'reference': ALL_PASS,
    'kl': dict(ALL_PASS, **{'5a': 'not checked', '5b': 'fail'}),
    'mask': dict(ALL_PASS, **{'6a': 'fail', '6c': 'fail', '6d': 'fail'}),
    'syntax': dict.fromkeys(grading.PARTS, 'error'),
    'loop': dict(ALL_PASS, **{'5b': 'timeout', '5c': 'timeout'}),
}


def write_submissions(folder, which):
    for student in which:
        (folder / student).mkdir(parents=True)
        for name, make in SUBMISSIONS[student].items():
            (folder / student / name).write_text(make(), encoding='utf-8')
    return folder


def test_every_course_api_test_is_mapped_to_the_parts_it_checks():
    env = {k: v for k, v in os.environ.items() if k not in grading.VARIABLES.values()}
    run = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider', '-m',
                          'course_api', 'tests/test_models.py', 'tests/test_losses.py'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    collected = {line.strip() for line in run.stdout.splitlines() if '::' in line}
    assert len(collected) >= 15
    assert collected - set(grading.CHECKS) == set(), 'course_api tests that engine/verdicts.py CHECKS does not map'
    assert set(grading.CHECKS) - collected == set(), 'CHECKS names tests that are gone'
    for parts in list(grading.CHECKS.values()) + list(grading.USES.values()):
        assert parts and set(parts) <= set(grading.PARTS)


def test_grade_gives_each_part_its_verdict_and_says_why(tmp_path):
    """The reference passes every part; the dropped 1/2 of the KL fails 5b alone (mc_gaussian_elbo's
    check fails too, against the broken closed form, and blames gaussian_elbo); a type-'A' mask that
    keeps its centre tap fails the parts built on masked convolutions; a syntax error is an error of
    every part that needs the file; an endless loop in GaussianVAEDecoder.forward times out 5b and
    5c, within the limit per check, and the other parts are still graded."""
    submissions = write_submissions(tmp_path / 'submissions', SUBMISSIONS)
    (submissions / 'nothing').mkdir()
    (submissions / 'nothing' / 'hw2.ipynb').write_text('{}')
    out = tmp_path / 'grades'
    lines = []
    graded = grading.grade(str(submissions), str(out), timeout=LIMIT, jobs=2, say=lines.append)
    got = {student: {part: v['verdict'] for part, v in g['verdicts'].items()} for student, g in graded.items()}
    assert got == dict(EXPECTED, nothing=dict.fromkeys(grading.PARTS, 'error')), '\n'.join(lines)

    why = {student: {part: ' '.join(v['reasons'] + v['notes']) for part, v in g['verdicts'].items()}
           for student, g in graded.items()}
    assert 'exactly 2× the closed form: a missing ½?' in why['kl']['5b']
    assert 'the fault is in losses.gaussian_elbo' in why['kl']['5c']   # not a failure of 5c: a note
    for part in ('6a', '6c', '6d'):
        assert "j = i leak of a type-'A' MaskedConv2d that keeps its centre tap" in why['mask'][part]
    assert all(why['syntax'][part].startswith("models.py does not load: SyntaxError: expected ':' (line ")
               for part in grading.PARTS)
    assert why['loop']['5b'].startswith('timed out in test_course_calls_and_shapes (models.py line ')
    assert 'GaussianVAEDecoder.forward' in why['loop']['5c'] and 'test_course_samplers' in why['loop']['5c']
    assert graded['nothing']['verdicts']['5a']['reasons'] == ['the folder holds neither models.py nor losses.py (it '
                                                              'holds hw2.ipynb)']
    loop = graded['loop']['result']['checks']
    timed_out = {t for t, c in loop.items() if c['outcome'] == 'timeout'}
    assert timed_out == {'tests/test_models.py::test_course_calls_and_shapes',
                         'tests/test_models.py::test_course_samplers'}
    assert all(LIMIT <= loop[t]['seconds'] < LIMIT + grading.GRACE for t in timed_out)
    syntax = graded['syntax']['result']['checks']  # losses.py is still checked, beside the broken models.py
    assert syntax and all(c['outcome'] == 'passed' and t.startswith('tests/test_losses.py') for t, c in syntax.items())

    # the reports
    assert sorted(os.listdir(out)) == sorted(['grades.csv', 'grades.md'] + [f'{s}.md' for s in graded])
    kl = (out / 'kl.md').read_text(encoding='utf-8')
    assert "models.py: not handed in; the reference's models.py stands in for it" in kl
    assert '| 5b | fail | test_gaussian_elbo_matches_distributions: losses.gaussian_elbo(' in kl
    assert 'exactly 2× the closed form: a missing ½?' in kl and '\\|\\| N(0, I)' in kl  # cells escape '|'
    with open(out / 'grades.csv', newline='', encoding='utf-8') as fh:
        rows = {row['student']: row for row in csv.DictReader(fh)}
    assert {s: {p: rows[s][p] for p in grading.PARTS} for s in rows} == got
    assert rows['kl']['models.py'] == 'reference' and rows['syntax']['models.py'] == 'does not load'
    assert all(float(row['seconds']) > 1 for student, row in rows.items() if student != 'nothing')
    table = (out / 'grades.md').read_text(encoding='utf-8')
    assert '| [mask](<mask.md>) | handed in | reference | pass | pass | pass | fail | pass | fail | fail |' in table

    # the students' code ran in processes of their own and left nothing behind
    files = [str(getattr(m, '__file__', '') or '') for m in list(sys.modules.values())]
    assert not [f for f in files if f.startswith(str(submissions))]
    assert sorted(p.name for p in submissions.rglob('*') if p.is_file()) == sorted(
        ['hw2.ipynb'] + [name for s in SUBMISSIONS.values() for name in s])


def test_a_check_that_ignores_its_time_limit_or_kills_its_process_is_a_verdict_and_the_rest_run_on(tmp_path):
    """A loop that catches the interruption outlives the limit per check: faulthandler ends the process
    after the grace period, says where it was, and the checks left run in a new process; a check whose
    process exits is a crash."""
    swallow = ('        while True:  # catches every interruption\n'
               '            try:\n                sum(range(10 ** 6))\n'
               '            except BaseException:\n                pass\n')
    text = substituted('models.py', GAUSSIAN_SAMPLE, GAUSSIAN_SAMPLE + swallow)
    assert text.count(IAF_FORWARD) == 1
    (tmp_path / 'student').mkdir()
    exits = IAF_FORWARD + "        __import__('os')._exit(3)\n"
    (tmp_path / 'student' / 'models.py').write_text(text.replace(IAF_FORWARD, exits), encoding='utf-8')
    chosen = ['tests/test_models.py::' + name for name in ('test_encoder_logqzx_matches_normal_log_prob',
                                                           'test_course_samplers', 'test_iaf_returns_m_and_one_plus_s')]
    result = grading.check_submission(str(tmp_path / 'student'), timeout=3, tests=chosen, grace=2)
    checks = result['checks']
    assert {t: c['outcome'] for t, c in checks.items()} == dict(
        zip(chosen, ('passed', 'timeout', 'crash'), strict=True)), checks
    stuck = checks[chosen[1]]
    assert stuck['function'] == 'GaussianVAEDecoder.sample' and 'could not interrupt it' in stuck['message']
    assert 'ended in this one, with exit status 3' in checks[chosen[2]]['message'] and result['processes'] == 2
    assert result['problem'] is None
    parts = grading.verdicts(result)
    assert {part: parts[part]['verdict'] for part in ('5b', '6d', '6b')} == dict(
        zip(('5b', '6d', '6b'), ('timeout', 'crash', 'pass'), strict=True))


def test_grade_never_writes_into_results(tmp_path):
    write_submissions(tmp_path, [])
    with pytest.raises(ValueError, match='inside .*results'):
        grading.grade(str(tmp_path), os.path.join(ROOT, 'results', 'grades'), say=lambda line: None)
    assert not os.path.exists(os.path.join(ROOT, 'results', 'grades'))


KL_FAILURES = {
    'test_gaussian_elbo_matches_distributions': 'Failed: losses.gaussian_elbo(x1, x2, z, sigma, mu, logvar)[1]: '
                                                'expected the batch mean of the closed-form KL = 29.161, got 58.3219: '
                                                'exactly 2× the closed form: a missing ½?',
    'test_mc_gaussian_elbo_matches_log_probs_and_closed_form': 'Failed: losses.mc_gaussian_elbo(x1, x2, z, sigma, '
        'mu, logvar)[1] over 2000 draws of z per image: expected the closed-form KL of losses.gaussian_elbo(x1, x2, '
        'z, sigma, mu, logvar)[1], 61.1496, within 4 standard errors (0.3747), got 30.4317. losses.mc_gaussian_elbo '
        'agrees with the true closed-form KL = 30.5748, and losses.gaussian_elbo gives 61.1496 (exactly 2× the '
        'closed form: a missing ½?): the fault is in losses.gaussian_elbo, not in losses.mc_gaussian_elbo',
}


def test_suspects_leave_out_a_check_that_fails_only_against_the_students_broken_closed_form():
    """With the closed-form KL doubled, mc_gaussian_elbo's check fails against it: a suspect of 5b
    (gaussian_elbo), not of 5c (mc_gaussian_elbo); whole names are matched, so gaussian_elbo's own
    check is no suspect of 5c either."""
    worse = [dict(part=part, config=C.config(part, 'smoke')) for part in ('5b', '5c')]
    text = '\n'.join(versus.suspects(worse, KL_FAILURES))
    on_5b, on_5c = text.split('\n5c uses ')
    assert 'the likeliest suspects' in on_5b and all(f'  - {test}:' in on_5b for test in KL_FAILURES)
    assert 'no failing course_api test concerns them' in on_5c
    assert grading.concerns(*list(KL_FAILURES.items())[1]) == {'gaussian_elbo'}
    without_blame = KL_FAILURES['test_mc_gaussian_elbo_matches_log_probs_and_closed_form'].split('. losses.')[0]
    assert grading.concerns('test_mc_gaussian_elbo_matches_log_probs_and_closed_form', without_blame) == {
        'mc_gaussian_elbo'}


def test_a_failure_counts_against_the_parts_that_use_what_it_names():
    calls = 'tests/test_models.py::test_course_calls_and_shapes'
    pixelcnn = dict(outcome='failed', message='models.PixelCNN(capacity=4, depth=1)(x) should return a tensor')
    assert grading.blamed_parts(calls, pixelcnn) == ('6a', '6c')
    assert grading.blamed_parts(calls, dict(outcome='timeout', message='', function='IAF.forward')) == ('6d',)
    assert grading.blamed_parts(calls, dict(outcome='failed', message='AssertionError')) == grading.PARTS
    mc = 'tests/test_losses.py::test_mc_gaussian_elbo_matches_log_probs_and_closed_form'
    blamed = dict(outcome='failed', message=KL_FAILURES[short(mc)])
    assert grading.blamed_parts(mc, blamed) == ('5b',)  # outside the test's own parts: gaussian_elbo's


def short(test):
    return test.split('::')[-1]
