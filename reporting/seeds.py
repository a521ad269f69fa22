"""The spread between training seeds of each comparison the answers draw between two runs.

A difference between two runs, one training seed each, has a standard error over test images only:
it says how far the mean over other test images could move, not how far another pair of training
runs could land. Training a part again from another seed (`run PART --seed k`, into <part>-seed<k>;
engine.runs.seed_dirs) measures that. For a comparison a − b at a profile with K seeds of both,
the paired difference d_k at each seed k has a between-seed standard deviation s, which holds the
test-image noise of each d_k and the training noise together.

- One pair of runs (the course-settings pair the answers quote): its difference d counts as a
  finding only when |d| ≥ 2 sqrt(se² + s²), se its standard error over test images. This counts
  the test-image noise twice (once in se, once inside s): a cautious bound.
- The K pairs: their mean counts as a finding when |mean d_k| ≥ 2 s / sqrt(K).

With fewer than two seeds of both parts there is no spread, and no verdict beyond one seed.

    spread = seed_spread(results_dir, Comparison('6d', '6b', 'nll'), 'cpu')
    judged = beyond_seeds(difference_of_the_quoted_pair, spread)
"""
import math
from collections import namedtuple

from reporting.answers import cfg_of, contrast, images_words, nll_q, paired_series
from reporting.formats import Number, Table, error, num, signed
from reporting.reader import seed_runs

Comparison = namedtuple('Comparison', 'a b q')   # part a's quantity q minus part b's; q 'nll' is the NLL
# The comparisons the answers draw between runs (6c against 6a, 6d against 6b, each 6e remedy against
# the baseline), by the quantity each is judged on.
COMPARISONS = {
    'SixCSixA': Comparison('6c', '6a', 'nll'),
    'SixDSixB': Comparison('6d', '6b', 'nll'),
    'SixEFreebitsNLL': Comparison('6e-freebits', '6e-baseline', 'nll'),
    'SixEFreebitsKL': Comparison('6e-freebits', '6e-baseline', 'kl ratio'),
    'SixEWarmupNLL': Comparison('6e-warmup', '6e-baseline', 'nll'),
    'SixEWarmupKL': Comparison('6e-warmup', '6e-baseline', 'kl ratio'),
    'SixEWeakNLL': Comparison('6e-weak', '6e-baseline', 'nll'),
    'SixEWeakKL': Comparison('6e-weak', '6e-baseline', 'kl ratio'),
}


def ratio(ma, mb, q='kl'):
    """mean(q of run a) / mean(q of run b) over the test images both cover, with its delta-method
    standard error (the per-image influence of the ratio)."""
    (x, y), common, subset = paired_series([(1, ma, q), (1, mb, q)])
    n = len(common)
    r = x.mean().item() / y.mean().item()
    d = (x - r * y) / y.mean()
    return dict(value=r, se=d.std().item() / n ** 0.5, n=[n], paired=True,
                images=images_words(subset, n) if subset != 'some' else f'{n:,} test images')


def measure(comparison, ma, mb):
    """The comparison between one run of each part: {value, se, ...}, a paired difference where both
    saved per-image values (answers.contrast), or the ratio of their KL terms."""
    if comparison.q == 'kl ratio':
        return ratio(ma, mb)
    qa, qb = (nll_q(m) if comparison.q == 'nll' else comparison.q for m in (ma, mb))
    return contrast([(1, ma, qa), (-1, mb, qb)])


def seed_spread(results_dir, comparison, profile, precisions=('fp32', 'fp32')):
    """The comparison at each training seed both parts finished at `profile`, part a trained in
    precisions[0] and b in precisions[1]: {seeds, values and ses (standard errors over test images),
    images, sd, mean, se_mean, profile, precisions}; sd, mean and se_mean are None under two seeds."""
    ra, rb = (seed_runs(results_dir, p, profile, precision)
              for p, precision in zip((comparison.a, comparison.b), precisions, strict=True))
    seeds = sorted(set(ra) & set(rb))
    measured = [measure(comparison, ra[k], rb[k]) for k in seeds]
    values = [c['value'] for c in measured]
    out = dict(seeds=seeds, values=values, ses=[c['se'] for c in measured],
               images=sorted({c['images'] for c in measured}), sd=None, mean=None, se_mean=None, profile=profile,
               precisions=precisions)
    if len(values) >= 2:
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        out.update(sd=sd, mean=mean, se_mean=sd / math.sqrt(len(values)))
    return out


def beyond_seeds(c, spread, against=0.0):
    """One pair's comparison c {value, se} judged with the seed spread: c with se_seeds =
    sqrt(se² + s²), and finding = |value − against| ≥ 2 se_seeds (against: 0 for a difference, 1 for
    a ratio); finding is None when the spread is not measured (fewer than two seeds)."""
    if spread is None or spread['sd'] is None:
        return dict(c, se_seeds=None, finding=None, seeds=len(spread['seeds']) if spread else 0)
    se = math.sqrt(c['se'] ** 2 + spread['sd'] ** 2)
    return dict(c, se_seeds=se, finding=abs(c['value'] - against) >= 2 * se, seeds=len(spread['seeds']))


def mean_beyond_seeds(spread, against=0.0):
    """Whether the mean over seeds lies two of its standard errors (s / sqrt(K)) from `against`;
    None under two seeds."""
    if spread['sd'] is None:
        return None
    return abs(spread['mean'] - against) >= 2 * spread['se_mean']


def seed_judgements(r):
    """{comparison name: (the quoted pair's comparison, the spread it is judged with, judged)} for
    each comparison of COMPARISONS both of whose parts the chapter quotes. The spread is the
    course settings' where both parts have two seeds or more there, else the cpu profile's."""
    out = {}
    for name, comparison in COMPARISONS.items():
        if comparison.a not in r or comparison.b not in r:
            continue
        quoted = measure(comparison, r[comparison.a], r[comparison.b])
        measured = {}
        for profile, pool in (('full', r.view), ('cpu', r.cpu)):
            if all(p in pool and pool[p]['profile'] == profile for p in (comparison.a, comparison.b)):
                precisions = tuple(cfg_of(pool[p])['precision'] for p in (comparison.a, comparison.b))
                measured[profile] = seed_spread(r.results_dir, comparison, profile, precisions)
        spread = next((measured[p] for p in ('full', 'cpu') if p in measured and measured[p]['sd'] is not None),
                      measured.get('cpu') or measured.get('full'))
        against = 1.0 if comparison.q == 'kl ratio' else 0.0
        out[name] = (quoted, spread, beyond_seeds(quoted, spread, against))
    return out


def seed_words(spread, short=False):
    """The between-seed spread of a comparison in words: '0.31 (3 seeds each, cpu profile)', or why
    there is none; short (in a table): '0.31 (3 seeds)', or '—'."""
    if spread is None or spread['sd'] is None:
        if short:
            return '—'
        if spread is None:
            return 'not measured: no run of both parts at a profile with seeds'
        k = len(spread['seeds'])
        return f'not measured: {k} seed{"s" if k != 1 else ""} of both parts ({spread["profile"]} profile)'
    k = len(spread['seeds'])
    return f'{error(spread["sd"])} ({k} seeds' + (')' if short else f' each, {spread["profile"]} profile)')


def seed_numbers(r):
    """Per comparison: Seeds<name>, its between-seed standard deviation in words."""
    return {'Seeds' + name: Number(seed_words(spread), spread['sd'] if spread else None)
            for name, (_, spread, _) in seed_judgements(r).items()}


def table_seeds(r):
    """Each comparison: the quoted runs' value (paired), the same comparison at each training seed of
    the profile whose spread judges it (named in the header when it is one profile for all), the
    between-seed standard deviation, and whether the quoted value lies beyond two standard errors
    that include it."""
    judged = seed_judgements(r)
    profiles = {spread['profile'] for _, spread, _ in judged.values() if spread}
    rows = []
    for name, (quoted, spread, verdict) in judged.items():
        c = COMPARISONS[name]
        shown = signed if c.q == 'nll' else num
        what = f'{c.a} − {c.b}, NLL' if c.q == 'nll' else f'{c.a} ÷ {c.b}, KL term'
        per_seed = ''
        if spread:
            values = ', '.join(shown(v) for v in spread['values'])
            per_seed = (values if len(profiles) == 1 else f'{spread["profile"]}: {values}',
                        ' and '.join(spread['images']).removeprefix('the ').replace(' test images', ''))
        value = (f'{shown(quoted["value"])} ± {error(quoted["se"])}',
                 quoted['images'].removeprefix('the ').removesuffix(' test images'))
        beyond = '—' if verdict['finding'] is None else 'beyond it' if verdict['finding'] else 'within it'
        rows.append([what, value, per_seed, seed_words(spread, short=True), beyond])
    at = f'at each seed ({next(iter(profiles))} profile)' if len(profiles) == 1 else 'at each seed'
    return Table(['comparison', 'quoted runs, paired', at, 'SD between seeds', 'quoted value beyond it?'], rows,
                 'lrrrl')
