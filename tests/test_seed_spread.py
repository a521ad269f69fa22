"""The spread between training seeds (reporting/seeds.py): each seed's comparison is the paired one,
the spread is the sample standard deviation over seeds, and a difference is a finding only beyond
two standard errors that include it. Synthetic runs in a temporary results folder, nothing trained."""
import json
import math
import os
import statistics

import torch

from engine.config import config
from reporting import seeds
from reporting.seeds import Comparison

Q = 'test_nll_is1000'


def fake_part(results, profile, part, seed, nll, kl=None, index=None, precision='fp32'):
    """A finished run of `part` at a training seed, with per-image NLLs (and KL terms) over the test
    images `index` (default: the first len(nll)), as run_part leaves one."""
    name = part if seed == 0 else f'{part}-seed{seed}'
    out = results / (profile if precision == 'fp32' else f'{profile}-{precision}') / name
    out.mkdir(parents=True)
    per, values = {}, {}
    for q, v in ((Q, nll), ('kl', kl)):
        if v is None:
            continue
        v = torch.tensor(v, dtype=torch.float64)
        subset = 'all' if len(v) == 10000 else f'first:{len(v)}'
        values[q] = dict(value=v.mean().item(), stderr=(v.std() / len(v) ** 0.5).item(), n_images=len(v),
                         subset=subset)
        per[q] = v
        if index is not None:
            per[f'{q}_index'] = torch.tensor(index)
    cfg = dict(config(part, profile), seed=seed, precision=precision)
    (out / 'metrics.json').write_text(json.dumps(dict(part=part, profile=profile, precision=precision, config=cfg,
                                                      values=values)))
    torch.save(per, out / 'per_image.pt')


def pair_of_runs(tmp_path, shifts, noise=1.0, n=400):
    """6d and 6b at seeds 0..K-1 over the same n images, 6d lower by shifts[k] at seed k."""
    g = torch.Generator().manual_seed(0)
    base = 90 + 10 * torch.randn(n, generator=g, dtype=torch.float64)
    for k, shift in enumerate(shifts):
        b = base + noise * torch.randn(n, generator=g, dtype=torch.float64)
        d = b - shift + noise * torch.randn(n, generator=g, dtype=torch.float64)
        fake_part(tmp_path, 'cpu', '6b', k, b.tolist())
        fake_part(tmp_path, 'cpu', '6d', k, d.tolist())


def test_the_spread_is_the_standard_deviation_of_the_paired_difference_over_seeds(tmp_path):
    pair_of_runs(tmp_path, [3.0, 1.0, 2.0])
    spread = seeds.seed_spread(str(tmp_path), Comparison('6d', '6b', 'nll'), 'cpu')
    assert spread['seeds'] == [0, 1, 2]
    for k, value in zip(spread['seeds'], spread['values'], strict=True):
        a, b = (torch.load(tmp_path / 'cpu' / (p if k == 0 else f'{p}-seed{k}') / 'per_image.pt')[Q]
                for p in ('6d', '6b'))
        assert math.isclose(value, (a - b).mean().item(), rel_tol=1e-12)
    assert math.isclose(spread['sd'], statistics.stdev(spread['values']), rel_tol=1e-12)
    assert math.isclose(spread['se_mean'], spread['sd'] / math.sqrt(3), rel_tol=1e-12)
    assert -3.5 < spread['mean'] < -1.5


def test_a_difference_many_test_image_errors_away_can_lie_within_the_seed_spread(tmp_path):
    """Seeds whose 6d − 6b ranges from −4 to +2: the quoted −1 is far beyond its standard error over
    test images, but within the seed spread, so it is not a finding; with seeds that agree it is."""
    pair_of_runs(tmp_path, [-2.0, 4.0, 1.0], noise=0.1)
    quoted = dict(value=-1.0, se=0.02)
    spread = seeds.seed_spread(str(tmp_path), Comparison('6d', '6b', 'nll'), 'cpu')
    judged = seeds.beyond_seeds(quoted, spread)
    assert abs(quoted['value']) > 20 * quoted['se'] and judged['finding'] is False and judged['seeds'] == 3
    assert math.isclose(judged['se_seeds'], math.hypot(0.02, spread['sd']))
    assert seeds.mean_beyond_seeds(spread) is False

    agreeing = tmp_path / 'agreeing'
    pair_of_runs(agreeing, [1.0, 1.1, 0.9], noise=0.1)
    spread = seeds.seed_spread(str(agreeing), Comparison('6d', '6b', 'nll'), 'cpu')
    assert seeds.beyond_seeds(quoted, spread)['finding'] is True and seeds.mean_beyond_seeds(spread) is True


def test_one_seed_gives_no_spread_and_no_verdict(tmp_path):
    pair_of_runs(tmp_path, [1.0])
    spread = seeds.seed_spread(str(tmp_path), Comparison('6d', '6b', 'nll'), 'cpu')
    assert spread['seeds'] == [0] and spread['sd'] is None
    assert seeds.beyond_seeds(dict(value=-5.0, se=0.1), spread)['finding'] is None
    assert seeds.mean_beyond_seeds(spread) is None
    assert seeds.seed_words(spread) == 'not measured: 1 seed of both parts (cpu profile)'


def test_seeds_pair_only_where_both_parts_have_the_seed(tmp_path):
    pair_of_runs(tmp_path, [1.0, 2.0])
    fake_part(tmp_path, 'cpu', '6d', 2, [80.0] * 400)  # a third seed of 6d alone
    assert seeds.seed_spread(str(tmp_path), Comparison('6d', '6b', 'nll'), 'cpu')['seeds'] == [0, 1]


def test_the_kl_ratio_pairs_by_test_image_not_by_position(tmp_path):
    """Two runs over the same images saved in other orders: the ratio of their means is unchanged,
    and its delta-method standard error is that of the per-image influence."""
    g = torch.Generator().manual_seed(1)
    kl_b = 5 + torch.rand(300, generator=g, dtype=torch.float64)
    kl_a = 2 * kl_b + 0.1 * torch.randn(300, generator=g, dtype=torch.float64)
    order = torch.randperm(300, generator=g)
    fake_part(tmp_path, 'full', '6e-baseline', 0, [90.0] * 300, kl=kl_b.tolist(), index=list(range(300)))
    fake_part(tmp_path, 'full', '6e-freebits', 0, [90.0] * 300, kl=kl_a[order].tolist(), index=order.tolist())
    ma, mb = (dict(json.loads((tmp_path / 'full' / p / 'metrics.json').read_text()), dir=str(tmp_path / 'full' / p))
              for p in ('6e-freebits', '6e-baseline'))
    r = seeds.ratio(ma, mb)
    expected = kl_a.mean().item() / kl_b.mean().item()
    influence = (kl_a - expected * kl_b) / kl_b.mean()
    assert math.isclose(r['value'], expected, rel_tol=1e-12)
    assert math.isclose(r['se'], influence.std().item() / 300 ** 0.5, rel_tol=1e-9)


def test_the_chapter_judges_each_comparison_with_the_course_settings_spread_where_it_exists(tmp_path):
    """Two course-settings seeds of 6e-baseline and 6e-freebits are preferred to the cpu profile's three."""
    from reporting.numbers import Runs
    g = torch.Generator().manual_seed(2)
    for profile, k_seeds in (('full', 2), ('cpu', 3)):
        for k in range(k_seeds):
            base = 90 + torch.randn(200, generator=g, dtype=torch.float64)
            kl = 10 + torch.rand(200, generator=g, dtype=torch.float64)
            fake_part(tmp_path, profile, '6e-baseline', k, base.tolist(), kl=kl.tolist())
            fake_part(tmp_path, profile, '6e-freebits', k, (base - 0.4 - 0.2 * k).tolist(), kl=(2.5 * kl).tolist())
    judged = seeds.seed_judgements(Runs(str(tmp_path)))
    quoted, spread, verdict = judged['SixEFreebitsNLL']
    assert spread['profile'] == 'full' and spread['seeds'] == [0, 1]
    assert math.isclose(spread['sd'], statistics.stdev(spread['values'])) and verdict['seeds'] == 2
    assert math.isclose(quoted['value'], spread['values'][0])  # the quoted pair is seed 0 of the course settings
    table = seeds.table_seeds(Runs(str(tmp_path)))
    row = next(row for row in table.rows if row[0] == '6e-freebits − 6e-baseline, NLL')
    assert table.header[2].startswith('at each seed (full profile)') and row[2].startswith('−0.40, −0.60')
    assert row[3].endswith('(2 seeds)')
    assert row[4] in ('beyond it', 'within it')


def test_the_one_seed_sentence_fails_once_a_second_seed_of_both_parts_exists(tmp_path):
    """The chapter's 'each configuration trained once' is pinned: a second seed of 6d and 6b at the cpu
    profile beside the course-settings runs makes its claim fail."""
    from reporting import claims
    from reporting.numbers import Runs
    for part in ('6b', '6d'):
        fake_part(tmp_path, 'full', part, 0, [85.0 + (part == '6b')] * 200)
    pair_of_runs(tmp_path, [1.0])
    check = claims.CLAIMS['one-seed'].check
    assert check(Runs(str(tmp_path)))[0]
    fake_part(tmp_path, 'cpu', '6b', 1, [86.0] * 400)
    fake_part(tmp_path, 'cpu', '6d', 1, [85.0] * 400)
    holds, detail = check(Runs(str(tmp_path)))
    assert not holds and 'SixDSixB (cpu)' in detail


def test_the_other_sign_sentence_needs_a_measurable_reversal_at_the_cpu_profile(tmp_path):
    """6d − 6b at −1 in the quoted runs: +1 at the cpu profile makes 'some of its differences take the
    other sign' true; −1 there, or +0.01 (under two standard errors), makes it fail."""
    from reporting import claims
    from reporting.numbers import Runs
    g = torch.Generator().manual_seed(3)
    base = 90 + 10 * torch.randn(300, generator=g, dtype=torch.float64)
    fake_part(tmp_path, 'full', '6b', 0, base.tolist())
    fake_part(tmp_path, 'full', '6d', 0, (base - 1 + 0.1 * torch.randn(300, generator=g, dtype=torch.float64)).tolist())
    check = claims.CLAIMS['cpu-profile-other-sign'].check
    for shift, holds in ((1.0, True), (-1.0, False), (0.01, False)):
        folder = tmp_path / f'cpu{shift}'
        for part in ('6b', '6d'):
            (folder / 'full').mkdir(parents=True, exist_ok=True)
            os.symlink(tmp_path / 'full' / part, folder / 'full' / part)
        fake_part(folder, 'cpu', '6b', 0, base.tolist())
        fake_part(folder, 'cpu', '6d', 0, (base + shift + torch.randn(300, generator=g, dtype=torch.float64)).tolist())
        assert check(Runs(str(folder)))[0] is holds, shift


def test_the_readme_says_one_seed_until_a_run_from_another_seed_exists(tmp_path):
    from reporting import writeup
    from reporting.reader import load_runs
    fake_part(tmp_path, 'cpu', '6b', 0, [86.0] * 50)
    assert 'Each configuration trained once, from one seed' in writeup.glance(load_runs(str(tmp_path)))
    fake_part(tmp_path, 'cpu', '6b', 1, [86.5] * 50)
    text = writeup.glance(load_runs(str(tmp_path)))
    assert 'trained once' not in text and 'the spread between seeds of each comparison is in the seed table' in text
