"""What a course_api check's outcome says about a student's handout parts: the parts whose code each
check exercises (CHECKS), the parts that use each class of models.py and function of losses.py
(USES), and one student's verdict per part (verdicts), worst first: error (a file the part needs
does not load), crash, timeout, fail, pass (every check of the part that ran passed), not checked
(no check of the part ran: its file was not handed in). A failing check counts against the parts
that use the function it names: the call its message names first, the student's function it timed
out or raised in, or the function a check blames by "the fault is in <module>.<name>"
(tests/course.py's FAULT, when a student's function is compared with another of theirs and only
the other is wrong).
"""
import re

PARTS = ('5a', '5b', '5c', '6a', '6b', '6c', '6d')
FILES = ('models.py', 'losses.py')
VARIABLES = {'models.py': 'HW2_MODELS', 'losses.py': 'HW2_LOSSES'}          # tests/conftest.py
TEST_FILES = {'models.py': 'tests/test_models.py', 'losses.py': 'tests/test_losses.py'}
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
