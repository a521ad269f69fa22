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
