"""The answers' numbers and words, against values computed here from given inputs: synthetic
metrics, per-image values and histories in temporary result directories, with and without a
course-settings run of a part."""
import json
import os
import re

import pytest
import torch

from reporting import answers
from reporting import reader
from reporting import writeup
from engine.config import config
from test_report import summary, v, write_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def view(root):
    return answers.View(reader.load_runs(str(root)))


def paragraph(blocks):
    """The text of an answer's paragraphs, one after another."""
    return ' '.join(b[1] for b in blocks if b[0] == 'p')


def spread(n, seed, centre, scale):
    g = torch.Generator().manual_seed(seed)
    return centre + scale * torch.randn(n, generator=g, dtype=torch.float64)


# X1: the 5b answer's squared error is the reconstruction term times 2σ² ----------------------------


def test_5b_squared_error_is_the_reconstruction_term_times_two_sigma_squared(tmp_path):
    recon = 1234.5
    write_part(str(tmp_path / 'cpu'), '5b', {'test_elbo': v(recon + 150, 7.0, 10000), 'test_recon': v(recon, 7.0, 10000),
                                             'kl': v(150.0, 0.1, 10000)})
    text = paragraph(answers.answer_5b(view(tmp_path)))
    sigma = config('5b', 'cpu')['sigma']
    sq = recon * 2 * sigma ** 2                      # ‖x − g(z)‖² = 2σ² · (reconstruction term)
    assert f'a squared error of {sq:.2f} per image ({(sq / 784) ** 0.5:.3f} per pixel, root mean square)' in text
    assert 'No course-settings run of 5b yet: its cpu profile run stands in.' in text


# X2: 5c's unbiasedness check is made on 5b itself, paired ------------------------------------------


def test_5c_unbiasedness_check_is_kl_mc_minus_kl_of_5b_paired(tmp_path):
    n = 2000
    recon, kl = spread(n, 1, 1300.0, 200.0), spread(n, 2, 180.0, 5.0)
    kl_mc = kl + spread(n, 3, 0.0, 2.0)               # one draw of z: KL + noise of mean 0
    b = dict(test_elbo=recon + kl, test_elbo_mc=recon + kl_mc, test_recon=recon, kl=kl, kl_mc=kl_mc)
    c_elbo = recon + kl - 30 + spread(n, 4, 0.0, 3.0)
    run = str(tmp_path / 'cpu')
    write_part(run, '5b', {q: summary(t) for q, t in b.items()}, b)
    write_part(run, '5c', {'test_elbo': summary(c_elbo)}, {'test_elbo': c_elbo})
    text = paragraph(answers.answer_5c(view(tmp_path)))
    d = kl_mc - kl
    expected = f'{d.mean().item():+.2f} ± {d.std().item() / n ** 0.5:.2f} nats, paired, {n} test images'
    assert f'KL_mc − KL: no measurable difference ({expected}' in text
    assert 'consistent with an unbiased estimator' in text and 'unpaired, as this run' not in text
    e = c_elbo - (recon + kl)
    assert f'5c (cpu profile, float32, 6 epochs) − 5b (likewise): {e.mean().item():+.2f} ± {e.std().item() / n ** 0.5:.2f}' \
        in text


def test_5c_unbiasedness_check_without_per_image_values_uses_the_kl_terms_and_says_unpaired(tmp_path):
    run = str(tmp_path / 'cpu')
    values = dict(test_elbo=v(1500.0, 8.0, 10000), test_elbo_mc=v(1500.5, 8.0, 10000), kl=v(180.0, 0.12, 10000),
                  kl_mc=v(180.5, 0.13, 10000))
    write_part(run, '5b', values)
    write_part(run, '5c', {'test_elbo': v(1490.0, 8.0, 10000)})
    text = paragraph(answers.answer_5c(view(tmp_path)))
    se = (0.12 ** 2 + 0.13 ** 2) ** 0.5              # the KL terms' errors, not the −ELBOs' (which share recon)
    assert f'KL_mc − KL: +0.50 ± {se:.2f} nats (unpaired, 10000 test images)' in text
    assert 'a measurable difference, which an unbiased estimator should not show' in text


# X3: the 6c answer's KL ratio is the last 100 batches over the 100 before the switch ---------------


def answer_6c_text(tmp_path, test_kl):
    """The 6c answer of a course-settings run whose KL term is 24 nats per batch before the PixelCNN
    is switched on, 6 after, and test_kl at the end of the last epochs (the last one its final KL)."""
    hist = dict(step=list(range(400)), kl=[24.0] * 200 + [6.0] * 200, autoregress_step=200, test_kl=test_kl)
    write_part(str(tmp_path / 'full'), '6c', {'test_elbo': v(86.0, 0.2, 10000), 'kl': v(test_kl[-1], 0.03, 10000),
                                              'test_nll_is1000': v(83.0, 0.6, 1000, M=1000)}, history=hist)
    return paragraph(answers.answer_6c(view(tmp_path)))


def test_6c_kl_ratio_is_after_over_before_and_claims_no_handout_threshold(tmp_path):
    text = answer_6c_text(tmp_path, [20.0, 12.0, 9.0, 8.0])
    assert f'it averages 24.0 nats per image, over the last 100 6.0 (a ratio of {6.0 / 24.0:.2f})' in text
    assert 'quarter' not in text and 'No course-settings run' not in text
    assert 'On all test images the KL term was 12.00, 9.00 and 8.00 after the last three epochs' in text
    assert 'still under way when training stops' in text     # fell by 4.00, far over 2 x 0.03


def test_6c_says_the_collapse_levelled_off_when_the_test_kl_is_flat(tmp_path):
    text = answer_6c_text(tmp_path, [7.0, 6.88, 6.87, 6.86])
    assert ('a change of -0.02 nats: no steady change (within two standard errors of the final value, ± 0.03, or not in '
            'one direction), levelled off') in text
    assert 'partial: the KL term levelled off' in text and 'still under way' not in text


def test_6c_says_the_kl_rose_again_when_the_test_kl_rises(tmp_path):
    text = answer_6c_text(tmp_path, [6.5, 6.6, 6.7])
    assert 'a change of +0.20 nats: rising again when training stops' in text
    assert 'partial: the KL term rose again' in text and 'levelled off' not in text


def test_6c_a_kl_that_dips_and_rises_is_no_steady_change(tmp_path):
    text = answer_6c_text(tmp_path, [10.31, 10.12, 10.42])
    assert 'a change of +0.11 nats: no steady change' in text and 'rising' not in text


def test_6c_gap_is_set_against_the_kl_term_of_the_same_images(tmp_path):
    n_all, n_is = 3000, 1000
    kl = spread(n_all, 5, 7.0, 2.0)
    kl[:n_is] += 1.0                                  # the first images cost more: the two sets differ
    elbo = spread(n_all, 6, 86.0, 20.0)
    nll = elbo[:n_is] - 2.0 + spread(n_is, 7, 0.0, 0.5)
    per = dict(test_elbo=elbo, kl=kl, test_nll_is1000=nll)
    write_part(str(tmp_path / 'full'), '6c', {'test_elbo': summary(elbo), 'kl': summary(kl),
                                              'test_nll_is1000': dict(summary(nll), M=1000)}, per)
    text = paragraph(answers.answer_6c(view(tmp_path)))
    g, k = (elbo[:n_is] - nll).mean().item(), kl[:n_is].mean().item()
    assert f'It is {g / k:.0%} of the KL term of the bound over the same {n_is} test images ({k:.2f} nats)' in text


# X10: the 6a answer says above or below the published number as it is ------------------------------


@pytest.mark.parametrize('nll, words', [(83.3, '2.0 above'), (80.3, '1.0 below')])
def test_6a_lies_above_or_below_the_published_pixelcnn_as_measured(tmp_path, nll, words):
    write_part(str(tmp_path / 'full-bf16'), '6a', {'test_nll': v(nll, 0.2, 10000)})
    text = paragraph(answers.answer_6a(view(tmp_path)))
    name, published, _ = answers.LITERATURE[0]
    assert f'{abs(nll - published):.1f} {"above" if nll > published else "below"}' == words
    assert f'{words} the published {name}, {published:.2f}' in text
    assert answers.DATA_NOTE in text


def test_6a_mean_fall_over_the_last_five_epochs_spans_five_epochs(tmp_path):
    losses = [90.0 - k for k in range(30)] + [60.0, 59.0, 58.0, 57.5, 57.2, 57.0, 56.9, 56.85, 56.8, 56.6]
    write_part(str(tmp_path / 'full-bf16'), '6a', {'test_nll': v(56.6, 0.2, 10000)}, history={'test_loss': losses})
    text = paragraph(answers.answer_6a(view(tmp_path)))
    assert f'over the last five epochs it fell by {(losses[-6] - losses[-1]) / 5:.2f} nats per epoch' in text  # 0.08
    assert f'{(losses[-5] - losses[-1]) / 4:.2f}' != f'{(losses[-6] - losses[-1]) / 5:.2f}'


# Course settings present or absent ---------------------------------------------------------------


def binary_parts(root, profile, parts, shift=0.0, n=1000):
    """6b/6d of one run directory with per-image values on the same n test images."""
    for i, part in enumerate(parts):
        nll = spread(n, 10, 90.0, 20.0) + shift + i
        elbo = nll + 7.0 + spread(n, 11 + i, 0.0, 0.5)
        write_part(str(root / profile), part, {'test_elbo': summary(elbo), 'kl': v(30.0, 0.1, n),
                                               'test_nll_is1000': dict(summary(nll), M=1000)},
                   {'test_elbo': elbo, 'test_nll_is1000': nll})


def test_answers_use_the_stand_in_while_a_part_has_no_course_settings_run(tmp_path):
    binary_parts(tmp_path, 'cpu', ('6b', '6d'))
    blocks = writeup.chapter(reader.load_runs(str(tmp_path)))
    b6 = next(b[1] for b in blocks if b[0] == 'p' and 'Run: 6b' in b[1])
    assert b6.startswith('No course-settings run of 6b yet: its cpu profile run stands in. Run: 6b in the cpu profile')
    d6 = next(b[1] for b in blocks if b[0] == 'p' and 'Run: 6d' in b[1])
    assert d6.startswith('No course-settings run of 6d and 6b yet: their cpu profile runs stand in.')
    assert 'where both parts ran' not in d6


def test_answers_quote_the_course_settings_run_once_there_is_one(tmp_path):
    binary_parts(tmp_path, 'cpu', ('6b', '6d'))
    binary_parts(tmp_path, 'full', ('6b',), shift=-5.0)
    blocks = writeup.chapter(reader.load_runs(str(tmp_path)))
    b6 = next(b[1] for b in blocks if b[0] == 'p' and 'Run: 6b' in b[1])
    full_nll = reader.load_metrics(str(tmp_path / 'full'))[0]['values']['test_nll_is1000']
    assert b6.startswith('Run: 6b in the full profile') and answers.with_n(full_nll) in b6
    d6 = next(b[1] for b in blocks if b[0] == 'p' and 'Run: 6d' in b[1])
    assert d6.startswith('No course-settings run of 6d yet: its cpu profile run stands in.')
    # across profiles: both named, the difference not set down to the flow
    assert '6d (cpu profile, float32, 4 epochs) − 6b (full profile, the course settings, float32, 60 epochs)' in d6
    assert 'no conclusion about the flow is drawn from it' in d6 and 'tighter' not in d6 and 'looser' not in d6
    assert 'spread between training runs' not in d6  # a confounded pair is not read as one of seeds
    assert 'In the cpu profile, where both parts ran: 6d (cpu profile, float32, 4 epochs) − 6b (cpu profile' in d6


def remedy_runs(root, profile, parts, n=500, history=None):
    """6e parts of one run directory, with per-image values on the same n test images."""
    for i, part in enumerate(parts):
        nll = spread(n, 30, 85.0, 20.0) + 0.5 * i + spread(n, 31 + i, 0.0, 0.3)
        elbo = nll + 4.0
        write_part(str(root / profile), part, {'test_elbo': summary(elbo), 'kl': v(8.0 + i, 0.03, n),
                                               'test_nll_is1000': dict(summary(nll), M=1000)},
                   {'test_elbo': elbo, 'test_nll_is1000': nll, 'kl': torch.full((n,), 8.0 + i)}, history=history)


def test_6e_course_settings_baseline_comes_first_and_remedies_are_compared_within_one_profile(tmp_path):
    remedy_runs(tmp_path, 'cpu', answers.REMEDIES)
    hist = dict(step=list(range(400)), kl=[30.0] * 200 + [27.0] * 200, autoregress_step=200,
                test_kl=[0.0, 0.004, 26.04, 27.0, 29.2], test_loss=[206.28, 206.29, 122.7, 99.45, 95.0])
    remedy_runs(tmp_path, 'full', ('6e-baseline',), history=hist)
    text = paragraph(answers.answer_6e(view(tmp_path)))
    assert text.startswith('Run: 6e-baseline in the full profile')
    assert ('the KL term stayed under 1 nat for the first 2 epochs (0.00, 0.00; test −ELBO 206.28, 206.29)' in text
            and 'After epoch 3 it was 26.04 nats (test −ELBO 122.70)' in text)
    assert 'it averages 30.0 nats per image, over the last 100 27.0' in text
    assert 'a change of +3.16 nats: rising again when training stops' in text
    assert ('No course-settings run of 6e-warmup, 6e-freebits and 6e-weak yet, so the remedies are compared among '
            'the runs of the cpu profile, where 6e-baseline, 6e-warmup, 6e-freebits and 6e-weak ran.') in text
    start = text.index('Final test KL term against')
    costs = text[start:text.index('Against the PixelVAE', start) if 'Against the P' in text[start:] else None]
    assert 'full profile' not in costs and costs.count('(likewise)') == 6   # three remedies, KL and NLL


def test_6e_course_settings_remedies_are_set_against_the_course_settings_baseline_before_the_others_finish(tmp_path):
    remedy_runs(tmp_path, 'cpu', answers.REMEDIES)
    remedy_runs(tmp_path, 'full', ('6e-baseline', '6e-freebits'))
    text = paragraph(answers.answer_6e(view(tmp_path)))
    so_far = text[text.index('6e-freebits also ran at these settings'):text.index('No course-settings run of')]
    assert so_far.startswith('6e-freebits also ran at these settings: 6e-freebits, free bits, training on the sum over '
                             'latent dimensions of max(λ, batch-mean KL), λ = 0.5 nats')
    assert ("Final test KL term against the baseline's: 6e-freebits (full profile, the course settings, float32, 20 "
            "epochs) − 6e-baseline (likewise): +1.00 ± 0.00 nats") in so_far
    assert "As a multiple of the baseline's: 6e-freebits 1.12." in so_far
    assert 'its importance-sampled NLL against the baseline\'s: 6e-freebits (full profile' in so_far
    assert 'cpu profile' not in so_far
    assert 'No course-settings run of 6e-warmup and 6e-weak yet' in text
    said = [b[1] for b in answers.answer_6e(view(tmp_path)) if b[0] == 'p']  # one paragraph each: the baseline,
    assert [s[:28] for s in said] == ['Run: 6e-baseline in the full', '6e-freebits also ran at thes',  # the remedies
                                      'No course-settings run of 6e']  # at its settings, the other profile's runs
    assert '[[fig:6e-kl-preferred]]' not in said[1]  # no figure of the course-settings remedies is drawn yet
    assert [b for b in answers.answer_6e(view(tmp_path)) if b[0] == 'fig'] == []
    for profile in ('full', 'cpu'):
        (tmp_path / profile / '6e_kl.png').write_bytes(b'drawn by the summary')
    blocks = answers.answer_6e(view(tmp_path))
    assert "[[fig:6e-kl-preferred]] plots their KL terms and the baseline's" in [b for b in blocks if b[0] == 'p'][1][1]
    figs = {b[1]: b for b in blocks if b[0] == 'fig'}
    assert figs['6e-kl-preferred'][2] == [str(tmp_path / 'full' / '6e_kl.png')]
    assert figs['6e-kl-preferred'][3].startswith('PixelVAE with an IAF encoder (6e), full profile, the course settings, float32:')
    assert figs['6e-kl'][2] == [str(tmp_path / 'cpu' / '6e_kl.png')] and '(6e), cpu profile, float32:' in figs['6e-kl'][3]
    remedy_runs(tmp_path / 'only', 'full', ('6e-baseline',))
    remedy_runs(tmp_path / 'only', 'cpu', answers.REMEDIES)
    assert 'also ran at these settings' not in paragraph(answers.answer_6e(view(tmp_path / 'only')))


def test_6e_with_every_remedy_at_course_settings_reads_the_baseline_then_the_remedies(tmp_path):
    remedy_runs(tmp_path, 'cpu', answers.REMEDIES)
    hist = dict(step=list(range(400)), kl=[30.0] * 200 + [27.0] * 200, autoregress_step=200,
                test_kl=[0.0, 26.04, 27.0], test_loss=[206.28, 122.7, 99.45])
    remedy_runs(tmp_path, 'full', answers.REMEDIES, history=hist)
    base = reader.per_image(view(tmp_path)['6e-baseline'])['test_nll_is1000']
    write_part(str(tmp_path / 'full'), '6c', {'test_elbo': summary(base + 4), 'kl': v(6.9, 0.03, len(base)),
                                              'test_nll_is1000': dict(summary(base + 1.3), M=1000)},
               {'test_elbo': base + 4, 'test_nll_is1000': base + 1.3})
    for name in ('6e-baseline/kl.png', '6e_kl.png'):
        (tmp_path / 'full' / name).write_bytes(b'drawn by the run')
    blocks = answers.answer_6e(view(tmp_path))
    said = [b[1] for b in blocks if b[0] == 'p']
    assert [s[:31] for s in said] == ['Run: 6e-baseline in the full pr', 'The remedies change one thing e']
    assert 'the KL term stayed under 1 nat for the first epoch' in said[0]  # the baseline's own reading
    assert 'cpu profile' not in ''.join(said) and 'No course-settings run' not in ''.join(said)
    assert said[0].count('Against the PixelVAE of 6c: 6e-baseline (full profile') == 1
    assert said[1].count("(likewise)") == 6 and 'Of these, 6e-baseline has the lowest' in said[1]
    assert 'Against the PixelVAE of 6c' not in said[1]  # the baseline was set against 6c once, above
    figs = {b[1]: b[2] for b in blocks if b[0] == 'fig'}
    assert figs == {'6e-baseline-kl': [str(tmp_path / 'full' / '6e-baseline' / 'kl.png')],
                    '6e-kl': [str(tmp_path / 'full' / '6e_kl.png')]}


@pytest.mark.parametrize('test_kl, said', [
    ([12.0, 10.5, 9.0], 'its KL term is still falling, so these runs measure how far each remedy slows the fall'),
    ([10.31, 10.12, 10.42], 'its KL term fell after the PixelCNN was switched on and levelled off above 1 nat'),
    ([8.0, 9.0, 10.0], 'its KL term fell after the PixelCNN was switched on and rose again'),
    ([10.0], 'how it moved at the end is not measured here')])
def test_6e_says_how_the_baseline_kl_ended_as_its_own_reading_does(tmp_path, test_kl, said):
    hist = dict(step=list(range(400)), kl=[30.0] * 200 + [10.0] * 200, autoregress_step=200, test_kl=test_kl,
                test_loss=[90.0] * len(test_kl))
    remedy_runs(tmp_path, 'full', answers.REMEDIES, history=hist)
    text = paragraph(answers.answer_6e(view(tmp_path)))
    assert said in text
    own = {'slows the fall': 'still falling when training stops', 'levelled off above': 'levelled off. ',
           'rose again': 'rising again when training stops', 'not measured': None}
    expected = next(v for k, v in own.items() if k in said)
    assert expected is None or expected in text  # the baseline's reading says the same of the end


def test_6e_course_settings_baseline_is_set_against_course_settings_6c_paired(tmp_path):
    remedy_runs(tmp_path, 'cpu', answers.REMEDIES)
    remedy_runs(tmp_path, 'full', ('6e-baseline',))
    base = reader.per_image(view(tmp_path)['6e-baseline'])['test_nll_is1000']
    ref = base + 1.3 + spread(len(base), 40, 0.0, 0.2)
    write_part(str(tmp_path / 'full'), '6c', {'test_elbo': summary(ref + 3), 'kl': v(6.9, 0.03, len(ref)),
                                              'test_nll_is1000': dict(summary(ref), M=1000)},
               {'test_elbo': ref + 3, 'test_nll_is1000': ref})
    text = paragraph(answers.answer_6e(view(tmp_path)))
    d = base - ref
    said = (f'Against the PixelVAE of 6c: 6e-baseline (full profile, the course settings, float32, 20 epochs) − 6c '
            f'(likewise): {d.mean().item():+.2f} ± {d.std().item() / len(d) ** 0.5:.2f} nats (paired, {len(d)} test '
            f'images).')
    assert said in text and text.index(said) < text.index('No course-settings run of 6e-warmup')
    assert 'no conclusion about the IAF encoder' not in text[:text.index('No course-settings run')]


def test_6e_without_a_plateau_says_nothing_of_one(tmp_path):
    hist = dict(step=list(range(400)), kl=[30.0] * 400, autoregress_step=200, test_kl=[15.0, 20.0], test_loss=[1, 2])
    remedy_runs(tmp_path, 'cpu', answers.REMEDIES, history=hist)
    text = paragraph(answers.answer_6e(view(tmp_path)))
    assert text.startswith('No course-settings run of 6e-baseline') and 'stayed under 1 nat' not in text


def test_6d_names_the_epochs_its_code_stayed_unused(tmp_path):
    binary_parts(tmp_path, 'full', ('6b',))
    binary_parts(tmp_path, 'full', ('6d',), shift=-1.0)
    h = dict(step=[0], kl=[0.0], test_kl=[0.04, 0.03, 24.5], test_loss=[206.71, 206.46, 120.0])
    with open(tmp_path / 'full' / '6d' / 'history.json', 'w') as fh:
        json.dump(h, fh)
    d6 = paragraph(answers.answer_6d(view(tmp_path)))
    assert ('the KL term stayed under 1 nat for the first 2 epochs (0.04, 0.03; test −ELBO 206.71, 206.46): the '
            'code was unused from the start. After epoch 3 it was 24.50 nats (test −ELBO 120.00)') in d6
    with open(tmp_path / 'full' / '6d' / 'history.json', 'w') as fh:
        json.dump(dict(h, test_kl=[0.04, 24.5], test_loss=[206.71, 120.0]), fh)
    assert 'stayed under 1 nat for the first epoch (0.04; test −ELBO 206.71): the code was unused from the start. ' \
           'After epoch 2 it was 24.50' in paragraph(answers.answer_6d(view(tmp_path)))


# Every rule of a comparison --------------------------------------------------------------------


def test_a_comparison_between_profiles_names_both_profiles(tmp_path):
    n = 500
    base = spread(n, 20, 85.0, 20.0)
    elbo = base + 4.0
    write_part(str(tmp_path / 'cpu'), '6e-baseline', {'test_elbo': summary(elbo), 'kl': v(8.0, 0.03, n),
                                                      'test_nll_is1000': dict(summary(base), M=1000)},
               {'test_elbo': elbo, 'test_nll_is1000': base})
    ref = base - 2.0 + spread(n, 21, 0.0, 0.3)
    write_part(str(tmp_path / 'full'), '6c', {'test_elbo': summary(ref + 3), 'kl': v(6.9, 0.03, n),
                                              'test_nll_is1000': dict(summary(ref), M=1000)},
               {'test_elbo': ref + 3, 'test_nll_is1000': ref})
    write_part(str(tmp_path / 'cpu'), '6c', {'test_elbo': v(90.0, 0.2, n), 'kl': v(9.0, 0.03, n),
                                             'test_nll_is1000': v(86.0, 0.6, n, M=1000)})
    text = paragraph(answers.answer_6e(view(tmp_path)))
    said = text[text.index('Against the PixelVAE of 6c: '):]
    d = base - ref
    assert said.startswith(f'Against the PixelVAE of 6c: 6e-baseline (cpu profile, float32, 4 epochs) − 6c (full '
                           f'profile, the course settings, float32, 20 epochs): {d.mean().item():+.2f} ± '
                           f'{d.std().item() / n ** 0.5:.2f} nats (paired, {n} test images). These runs also differ in')
    assert 'no conclusion about the IAF encoder is drawn from it' in said
    c = answers.comparison(*(m for m in (view(tmp_path)['6e-baseline'],)), 'kl', view(tmp_path)['6c'], 'kl', 'x')[0]
    assert 'cpu profile' in c and 'full profile' in c


def handout_claims(part, text):
    """[(setting, value called the handout's)] in a list of departures of one part."""
    return [(key, ref) for key, words in answers.WORDS.items()
            for ref in re.findall(rf'(?:^|, ){re.escape(words)} \S+ \(handout ([^)]*)\)', text)]


def assert_handout_sets(part, text):
    """Every value the text calls the handout's is the value HANDOUT gives the part's setting; the
    number of such claims."""
    claims = handout_claims(part, text)
    for key, ref in claims:
        assert (part, key) in answers.HANDOUT and str(answers.shown(key, answers.HANDOUT[(part, key)])) == ref, \
            (part, key, ref)
    assert len(claims) == text.count('(handout '), (part, text)   # no claim the table above missed
    return len(claims)


def test_no_sentence_calls_a_value_the_handouts_unless_the_handout_sets_it():
    claims = 0
    for b in writeup.settings_blocks():
        for row in b[4] if b[0] == 'table' else ():
            claims += assert_handout_sets(row[0], row[2])
        if b[0] == 'p':
            assert '(handout ' not in b[1] and "handout's settings" not in b[1]
    for b in writeup.chapter(reader.load_runs(os.path.join(ROOT, 'results'))):
        if b[0] != 'p' or 'handout' not in b[1]:
            continue
        runs = re.findall(r'Run: (\S+) in the \S+ profile, [^;]*; (.*?)\. ', b[1])
        for part, departed in runs:
            claims += assert_handout_sets(part, departed)
        assert b[1].count('(handout ') == sum(d.count('(handout ') for _, d in runs)
        assert "handout's settings" not in b[1]
    assert claims                                       # e.g. 6c's 20 epochs, 6b's test-set NLL


def test_handout_settings_are_the_course_settings_of_their_parts():
    for (part, key), value in answers.HANDOUT.items():
        assert config(part, 'full')[key] == value, (part, key)
    assert answers.reference_word('6c', 'epochs', 20) == 'handout'
    assert answers.reference_word('6b', 'epochs', 60) == 'full'


def test_every_published_number_in_an_answer_comes_with_the_data_note():
    blocks = writeup.chapter(reader.load_runs(os.path.join(ROOT, 'results')))
    quoting = [b[1] for b in blocks if b[0] == 'p' and any(f'{nll:.2f}' in b[1] for _, nll, _ in answers.LITERATURE)]
    assert quoting
    for text in quoting:
        assert 'seeded sample of MNIST' in text and '[[cite:larochelle2011]]' in text, text[:80]


def test_6a_in_bf16_reads_the_precision_from_a_pair_of_runs_that_differ_in_it_alone(tmp_path):
    base = spread(1000, 3, 85.0, 10.0)
    write_part(str(tmp_path / 'full-bf16'), '6a', {'test_nll': summary(base - 3.0)})
    text = paragraph(answers.answer_6a(view(tmp_path)))
    assert 'This run trained in bfloat16 (evaluated in float32); no float32 run with its settings is committed.' in text
    write_part(str(tmp_path / 'cpu'), '6a', {'test_nll': summary(base)}, per_image={'test_nll': base})
    write_part(str(tmp_path / 'cpu-bf16'), '6a', {'test_nll': summary(base - 0.2)}, per_image={'test_nll': base - 0.2})
    text = paragraph(answers.answer_6a(view(tmp_path)))
    assert ('Where 6a trained in both precisions with the same settings and seed: 6a (cpu profile, bf16 training, 4 '
            'epochs) − 6a (cpu profile, float32, 4 epochs): -0.20 ± 0.00 nats (paired, 1000 test images). bfloat16 '
            'training was not measurably worse there, so nothing points to the precision') in text
    write_part(str(tmp_path / 'cpu-bf16'), '6a', {'test_nll': summary(base + 0.5)}, per_image={'test_nll': base + 0.5})
    assert 'made the number measurably worse there, so it may account for part of the gap' in paragraph(
        answers.answer_6a(view(tmp_path)))
    write_part(str(tmp_path / 'cpu-bf16'), '6a', {'test_nll': summary(base)}, per_image={'test_nll': base}, epochs=3)
    assert 'no float32 run with its settings is committed' in paragraph(answers.answer_6a(view(tmp_path)))
    write_part(str(tmp_path / 'full'), '6a', {'test_nll': summary(base)})   # float32 at course settings: no reading
    assert 'bfloat16' not in paragraph(answers.answer_6a(view(tmp_path)))


def test_6d_sets_the_code_each_encoder_uses_beside_the_nll(tmp_path):
    """Where the flow does not lower the NLL, the KL terms and active units show what each code carries."""
    n, kl_of = 1000, {}
    for part, kl in (('6b', 30.0), ('6d', 27.0)):
        nll = spread(n, 10, 90.0, 20.0)
        kls = kl_of[part] = spread(n, 12, kl, 1.0)
        write_part(str(tmp_path / 'full'), part, {'test_elbo': summary(nll + 7.0), 'kl': summary(kls),
                                                  'active_units': dict(value=49 if part == '6d' else 30, stderr=None, n_images=n),
                                                  'test_nll_is1000': dict(summary(nll), M=1000)},
                   {'test_elbo': nll + 7.0, 'test_nll_is1000': nll, 'kl': kls})
    d6 = paragraph(answers.answer_6d(view(tmp_path)))
    kl_d, kl_b = (answers.value_text(summary(kl_of[p])) for p in ('6d', '6b'))
    assert (f'The code they use, the KL term on the test images: 6d {kl_d}, 6b {kl_b} nats; 6d − 6b: '
            '-3.00 ± 0.00 nats (paired, 1000 test images); active dimensions: 6d 49 of 49, 6b 30 of 49.') in d6
    # the pair differs in the flow alone, and one seed each: the standard errors cover test images only
    assert ('One run per encoder, each from seed 0: the standard errors are over test images, and the spread between '
            'training runs is not measured.') in d6


def verdict_runs(root, nll_shift, elbo_shift, n=1000):
    """6e-baseline and 6e-freebits on the same n test images; the remedy's NLL and −ELBO shifted."""
    nll = spread(n, 40, 82.0, 20.0)
    for part, dn, de, units in (('6e-baseline', 0.0, 0.0, 26), ('6e-freebits', nll_shift, elbo_shift, 49)):
        noise = spread(n, 41 if part == '6e-freebits' else 42, 0.0, 0.2)
        p_nll, p_elbo = nll + dn + noise, nll + 3.0 + de
        write_part(str(root / 'full'), part, {'test_elbo': summary(p_elbo), 'kl': v(10.0, 0.03, n),
                                              'active_units': dict(value=units, stderr=None, n_images=n),
                                              'test_nll_is1000': dict(summary(p_nll), M=1000)},
                   {'test_elbo': p_elbo, 'test_nll_is1000': p_nll})
    ms = {m['part']: m for m in reader.load_metrics(str(root / 'full'))}
    return answers.remedy_verdict(ms['6e-freebits'], ms['6e-baseline'])


def test_a_remedy_is_judged_by_its_nll_and_told_where_the_elbo_disagrees(tmp_path):
    text = verdict_runs(tmp_path / 'gain', -0.4, 1.2)     # lower NLL, higher −ELBO: the looser bound
    assert text.startswith("6e-freebits: its NLL is 0.4") and "nats lower than the baseline's, with 49 of 49 " \
                                                              "dimensions active against 26. " in text
    assert 'The ELBO alone says otherwise: −ELBO, 6e-freebits − 6e-baseline: +1.20 ± 0.00 nats' in text
    assert 'The bound of 6e-freebits is looser: its −ELBO lies further above its NLL' in text
    text = verdict_runs(tmp_path / 'cost', 0.5, 0.6)      # both say it costs: nothing to explain
    assert "nats higher than the baseline's" in text and 'otherwise' not in text
    text = verdict_runs(tmp_path / 'same', 0.0, -0.8)     # no measurable NLL difference, a lower −ELBO
    assert "its NLL is not measurably different from the baseline's" in text
    assert 'The bound of 6e-freebits is tighter: its −ELBO lies closer to its NLL' in text
