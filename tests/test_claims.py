"""Every sentence of the results chapter whose truth depends on a number still holds for the runs
in results/: analysis/results.tex marks it \\pinned{key}, and reporting/claims.py checks CLAIMS[key]
against metrics.json, per_image.pt, history.json and run.log. A run that changes the numbers fails
here, naming the sentence, instead of leaving it false in the write-up.

    HW2_RESULTS=/tmp/copy-of-results python -m pytest tests/test_claims.py   # another results folder
"""
import json
import os
import re
import shutil

import pytest
import torch

from reporting import claims
from reporting.numbers import Runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.environ.get('HW2_RESULTS') or os.path.join(ROOT, 'results')
CHAPTER = os.path.join(ROOT, 'analysis', 'results.tex')


@pytest.fixture(scope='module')
def runs():
    return Runs(RESULTS)


@pytest.mark.parametrize('key', list(claims.CLAIMS))
def test_the_pinned_sentence_still_holds(runs, key):
    c = claims.CLAIMS[key]
    holds, detail = c.check(runs)
    assert holds, f'analysis/results.tex, \\pinned{{{key}}}: "{c.sentence}" no longer holds for {RESULTS}: {detail}'


def pinned_keys():
    with open(CHAPTER) as fh:
        text = re.sub(r'(?<!\\)%.*', '', fh.read())
    return re.findall(r'\\pinned\{([^}]*)\}', text)


def test_every_pinned_sentence_has_a_claim_and_every_claim_a_sentence():
    keys = pinned_keys()
    assert len(keys) == len(set(keys)), 'a claim pinned twice'
    assert set(keys) == set(claims.CLAIMS), (f'pinned without a claim: {sorted(set(keys) - set(claims.CLAIMS))}; '
                                              f'claims no sentence pins: {sorted(set(claims.CLAIMS) - set(keys))}')


def copy_parts(src, dst, parts):
    """A results folder holding only some parts of results/full, every file but the model."""
    for part in parts:
        os.makedirs(dst / 'full' / part)
        for name in ('metrics.json', 'per_image.pt', 'history.json', 'run.log'):
            if os.path.exists(os.path.join(src, 'full', part, name)):
                shutil.copy(os.path.join(src, 'full', part, name), dst / 'full' / part / name)


def edit(folder, part, quantity, scale):
    """Scale one quantity of a copied part, in metrics.json and per_image.pt alike."""
    path = folder / 'full' / part
    m = json.loads((path / 'metrics.json').read_text())
    for key in ('value', 'stderr'):
        m['values'][quantity][key] *= scale
    (path / 'metrics.json').write_text(json.dumps(m))
    per = torch.load(path / 'per_image.pt', weights_only=True)
    per[quantity] = per[quantity] * scale
    torch.save(per, path / 'per_image.pt')


def test_a_claim_fails_when_a_number_under_it_is_edited(tmp_path):
    """Free bits keeps over twice the baseline's KL term: true of the committed runs; edit its KL term
    down to the baseline's level in a copy, and the claim, with its sentence, fails."""
    copy_parts(RESULTS, tmp_path, ('6e-baseline', '6e-freebits'))
    key = 'six-e-freebits-meets-the-goal'
    assert claims.CLAIMS[key].check(Runs(str(tmp_path)))[0]
    edit(tmp_path, '6e-freebits', 'kl', 0.45)
    holds, detail = claims.CLAIMS[key].check(Runs(str(tmp_path)))
    assert not holds and 'KL ratio 1.1' in detail


def test_a_missing_part_fails_its_claims_rather_than_the_check(tmp_path):
    copy_parts(RESULTS, tmp_path, ('6b',))
    found = {c.key: (holds, detail) for c, holds, detail in claims.check(str(tmp_path))}
    assert not found['six-d-gain'][0] and 'cannot be checked' in found['six-d-gain'][1]
    assert claims.main([str(tmp_path)]) == 1


def test_six_c_against_six_a_at_equal_epochs_is_judged_only_over_all_test_images(tmp_path):
    """6c's NLL over all test images, measurably above 6a's after as many epochs: the claim holds; at
    6a's level, or over fewer images than all, it fails."""
    for part, run in (('6c', 'full'), ('6a', 'full-bf16')):
        os.makedirs(tmp_path / run / part)
        for name in ('metrics.json', 'per_image.pt', 'history.json'):
            shutil.copy(os.path.join(RESULTS, run, part, name), tmp_path / run / part / name)
    check = claims.CLAIMS['six-c-above-six-a-at-equal-epochs'].check
    at_twenty = json.loads((tmp_path / 'full-bf16' / '6a' / 'history.json').read_text())['test_loss'][19]
    path = tmp_path / 'full' / '6c' / 'metrics.json'
    m = json.loads(path.read_text())
    q = next(k for k in m['values'] if k.startswith('test_nll_is'))
    for value, subset, holds in ((at_twenty + 1.0, 'all', True), (at_twenty + 0.1, 'all', False),
                                 (at_twenty + 1.0, 'uniform:599', False)):
        m['values'][q].update(value=value, stderr=0.2, n_images=10000 if subset == 'all' else 1000, subset=subset)
        path.write_text(json.dumps(m))
        assert check(Runs(str(tmp_path)))[0] is holds, value
