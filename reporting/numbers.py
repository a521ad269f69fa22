"""Every number of the results chapter, by name, generated from results/: the chapter's words are
written by hand in analysis/results.tex and name each number by a macro (\\SixBNLL), which
analysis/numbers.tex defines and the Markdown twin (docs/results.md) fills in the same way.

A number carries its standard error and the test images it covers ('(the first 1,000 test
images)'); a difference between runs says whether it is paired over the same images. Runs (below)
is what the numbers and the claims (reporting/claims.py) read: one preferred run per part, course
settings first, and the runs of the cpu profile beside them.

    python report.py     # writes analysis/numbers.tex, among the rest
"""
import math
import re

from engine.config import PARTS, config
from reporting.answers import (LITERATURE, MNIST_TEST, REMEDIES, View, cfg_of, contrast, images_words, is_q, nll_q,
                               subset_of)
from reporting import seeds
from reporting.formats import Number, Table, cell, diff_cell, error, num, signed
from reporting.reader import history, load_runs, log_attempts, per_image  # noqa: F401 (claims)

NAMES = {'5b': 'FiveB', '5c': 'FiveC', '6a': 'SixA', '6b': 'SixB', '6c': 'SixC', '6d': 'SixD',
         '6e-baseline': 'SixEBase', '6e-warmup': 'SixEWarmup', '6e-freebits': 'SixEFreebits', '6e-weak': 'SixEWeak'}

PIXELS = 784  # 28 x 28

# The goals the chapter judges the runs against (reporting/claims.py checks each judgement).
GOALS = dict(SixBNLL=86.0,   # 6b: an importance-sampled NLL of at most this many nats
             SixDGain=1.0,   # 6d: at least this many nats below 6b, paired
             KLRatio=2.0,    # 6e: a remedy keeps a KL term at least this many times the baseline's ...
             NLLSlack=0.5)   # ... with an NLL no more than this many nats above the baseline's


def estimate(v, unit='nats'):
    """A value of metrics.json: '85.14 ± 0.69 nats (first 1,000 test images)'."""
    words = images_words(subset_of(v), v['n_images']).removeprefix('the ')
    return Number(f'{num(v["value"])} ± {error(v["stderr"])} {unit} ({words})', v['value'], v['stderr'],
                  v['n_images'])


def difference(c, unit='nats'):
    """A contrast (answers.contrast): '−3.05 ± 0.10 nats (paired, first 1,000 test images)'."""
    how = 'paired' if c['paired'] else 'unpaired'
    return Number(f'{signed(c["value"])} ± {error(c["se"])} {unit} ({how}, {c["images"].removeprefix("the ")})',
                  c['value'], c['se'], c['n'][0])


def per_epoch(m, values, epoch, unit='nats'):
    """A value of a run's history after an epoch (1-based), over the images it monitors; a history
    keeps no standard error."""
    n = cfg_of(m)['monitor_images']
    images = f'first {n:,}' if n else f'all {MNIST_TEST:,}'
    return Number(f'{num(values[epoch - 1])} {unit} ({images} test images, after epoch {epoch})', values[epoch - 1])


def plain(x, digits=0, unit=''):
    """An exact number (a setting, a count, a published value): no standard error."""
    text = num(x, digits) if isinstance(x, float) or digits else f'{x:,}'
    return Number(text + (f' {unit}' if unit else ''), x)


def per_epochs(m, values, unit='nats'):
    """Values of a run's history, one per epoch, over the images it monitors: '8.37, 7.61 nats (all
    10,000 test images)'."""
    n = cfg_of(m)['monitor_images']
    images = f'first {n:,}' if n else f'all {MNIST_TEST:,}'
    return Number(', '.join(num(x) for x in values) + f' {unit} ({images} test images)', list(values))


def slope(ys):
    """Least-squares slope of ys against 0, 1, 2, ... and its standard error (residual spread)."""
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    b = sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sxx
    resid = sum((y - ym - b * (i - xm)) ** 2 for i, y in enumerate(ys))
    return b, math.sqrt(resid / (n - 2) / sxx)


class Runs:
    """The runs the chapter quotes: view[part] is each part's preferred run (course settings first),
    cpu[part] and cpu_bf16[part] those of the cpu profile."""
    def __init__(self, results_dir):
        runs = load_runs(results_dir)
        self.results_dir, self.view = results_dir, View(runs)
        by_name = {r['name']: r['parts'] for r in runs}
        self.cpu, self.cpu_bf16 = by_name.get('cpu', {}), by_name.get('cpu-bf16', {})

    def __getitem__(self, part):
        return self.view[part]

    def __contains__(self, part):
        return part in self.view

    def value(self, part, q):
        """A value of the part's preferred run: q 'nll' is its NLL (importance-sampled, or exact)."""
        m = self.view[part]
        return m['values'][nll_q(m) if q == 'nll' else q]

    def diff(self, a, b, q, ma=None, mb=None):
        """Part a's quantity minus part b's (runs ma, mb, else the preferred ones), paired where both saved it."""
        ma, mb = ma or self.view[a], mb or self.view[b]
        qa, qb = (nll_q(m) if q == 'nll' else q for m in (ma, mb))
        return contrast([(1, ma, qa), (-1, mb, qb)])

    def gap(self, part):
        """−ELBO − NLL of a part over the images both cover: what the bound pays, KL(q(z|x) ‖ p(z|x))."""
        m = self.view[part]
        return contrast([(1, m, 'test_elbo'), (-1, m, is_q(m))])

    def ratio(self, a, b, q='kl'):
        """mean(a) / mean(b) of a quantity over the same images, with its delta-method standard error."""
        return seeds.ratio(self.view[a], self.view[b], q)

    def epochs_kl(self, part):
        """The test KL term after each epoch (history.json), over the images monitor_images names."""
        return (history(self.view[part]) or {}).get('test_kl') or []

    def stall(self, part):
        """The first epochs whose test KL term stayed under 1 nat: how many."""
        kl = self.epochs_kl(part)
        return next((i for i, x in enumerate(kl) if x >= 1), len(kl))

    def trend(self, part, last=6):
        """(slope, its standard error) of the test KL term over the last epochs, nats per epoch."""
        return slope(self.epochs_kl(part)[-last:])

    def first(self, part, q, n):
        """The mean and standard error of a part's per-image values over the first n test images."""
        s = per_image(self.view[part])[q][:n].double()
        return dict(value=s.mean().item(), stderr=s.std().item() / n ** 0.5, n_images=n)


def equal_epochs(r):
    """6c's NLL minus 6a's after as many epochs as 6c trained, both over all test images, or None
    until 6c's covers all of them (or 6a's history is shorter). 6a's value after each epoch comes
    from its history, which keeps no per-image values and no standard error: the difference is
    unpaired, and 6a's standard error is that of its final NLL over the same images, a stand-in."""
    v, a = r.value('6c', 'nll'), r.value('6a', 'nll')
    losses = (history(r['6a']) or {}).get('test_loss') or []
    epochs = r['6c']['epochs']
    monitored = cfg_of(r['6a'])['monitor_images']
    if subset_of(v) != 'all' or subset_of(a) != 'all' or monitored or len(losses) < epochs:
        return None
    return dict(value=v['value'] - losses[epochs - 1], se=math.hypot(v['stderr'], a['stderr']), n=[v['n_images']],
                paired=False, images=f'all {MNIST_TEST:,} test images', epochs=epochs)


def gap_difference(r, a, b):
    """a's −ELBO − NLL minus b's, over the images all four values cover: how much looser a's bound is."""
    ma, mb = r[a], r[b]
    return contrast([(1, ma, 'test_elbo'), (-1, ma, is_q(ma)), (-1, mb, 'test_elbo'), (1, mb, is_q(mb))])


def settings_numbers(r):
    """The settings the chapter names: what the handout sets and what we chose."""
    full = {p: config(p, 'full') for p in PARTS}
    cpu5 = config('5b', 'cpu')
    sigma = full['5b']['sigma']
    return {
        'TestImages': plain(MNIST_TEST), 'BatchSize': plain(full['6b']['batch_size']),
        'ISSamples': plain(full['6b']['is_samples']),
        'ISImagesRun': plain(r['6c']['config']['is_images'] or MNIST_TEST),
        'SixCEpochs': plain(full['6c']['epochs']), 'SixDFlows': plain(full['6d']['flows']),
        'SwitchEpoch': plain(full['6c']['autoregress_epoch']), 'LatentDims': plain(49),
        'Seed': plain(cfg_of(r['6b'])['seed']),
        'GaussSigma': plain(sigma, 2),
        'GaussNormaliser': plain(PIXELS / 2 * math.log(2 * math.pi * sigma ** 2), 1, 'nats'),
        'FiveCpuEpochs': plain(cpu5['epochs']), 'FiveFullEpochs': plain(full['5b']['epochs']),
        'FiveCpuCapacity': plain(cpu5['enc_capacity']), 'FiveFullCapacity': plain(full['5b']['enc_capacity']),
        'FiveCpuDepth': plain(cpu5['enc_depth']), 'FiveFullDepth': plain(full['5b']['enc_depth']),
        'SixAEpochs': plain(r['6a']['epochs']), 'SixBEpochs': plain(r['6b']['epochs']),
        'SixDEpochs': plain(r['6d']['epochs']), 'SixEEpochs': plain(r['6e-baseline']['epochs']),
        'WarmupStart': plain(full['6e-warmup']['kl_warmup_start']),
        'WarmupEpochs': plain(full['6e-warmup']['kl_warmup']),
        'FreeBits': plain(full['6e-freebits']['free_bits'], 1, 'nats'),
        'FreeBitsFloor': plain(full['6e-freebits']['free_bits'] * 49, 1, 'nats'),
        'WeakDepth': plain(full['6e-weak']['pixelcnn_depth']),
        'PixelCNNDepth': plain(full['6e-baseline']['pixelcnn_depth']),
        'GoalSixBNLL': plain(GOALS['SixBNLL'], 0, 'nats'), 'GoalSixDGain': plain(GOALS['SixDGain'], 0, 'nat'),
        'GoalKLRatio': plain(GOALS['KLRatio'], 0), 'GoalNLLSlack': plain(GOALS['NLLSlack'], 1, 'nats'),
        **{f'Lit{name.replace(" ", "")}': plain(nll, 2) for name, nll, _ in LITERATURE},
    }


def part_numbers(r, part):
    """A part's own values: −ELBO, KL term, active units, NLL, and the bound's gap."""
    m, name = r[part], NAMES[part]
    v, out = m['values'], {}
    for q, suffix in (('test_elbo', 'ELBO'), ('kl', 'KL'), ('test_elbo_mc', 'ELBOmc'), ('kl_mc', 'KLmc'),
                      ('test_recon', 'Recon')):
        if q in v:
            out[name + suffix] = estimate(v[q])
    if 'active_units' in v:
        out[name + 'AU'] = plain(v['active_units']['value'])
    if nll_q(m):
        out[name + 'NLL'] = estimate(v[nll_q(m)])
        out[name + 'NLLImages'] = Number(images_words(subset_of(v[nll_q(m)]), v[nll_q(m)]['n_images']))
    if is_q(m) and 'test_elbo' in v:
        out[name + 'Gap'] = difference(r.gap(part))
    return out


def problem5_numbers(r):
    b = r['5b']
    kl_mc = contrast([(1, b, 'kl_mc'), (-1, b, 'kl')])
    return {'DiffFiveCFiveB': difference(r.diff('5c', '5b', 'test_elbo')), 'FiveBKLmcMinusKL': difference(kl_mc),
            'DiffFiveCFiveBKL': difference(r.diff('5c', '5b', 'kl'))}


def problem6a_numbers(r):
    first = r.first('6a', 'test_nll', 1000)
    out = {'SixANLLFirst': estimate(first)}
    losses = (history(r['6a']) or {}).get('test_loss') or []
    epochs = r['6c']['epochs']
    if len(losses) >= epochs:
        out['SixANLLAtSixCEpochs'] = per_epoch(r['6a'], losses, epochs)
    if equal_epochs(r) is not None:
        out['DiffSixCSixAEqualEpochs'] = difference(equal_epochs(r))
    if '6a' in r.cpu and '6a' in r.cpu_bf16:
        low, full = r.cpu_bf16['6a'], r.cpu['6a']
        out['CpuSixANLL'] = estimate(full['values']['test_nll'])
        out['CpuBfSixANLL'] = estimate(low['values']['test_nll'])
        out['DiffCpuSixABf'] = difference(contrast([(1, low, 'test_nll'), (-1, full, 'test_nll')]))
    return out


def problem6c_numbers(r):
    kl = r.epochs_kl('6c')
    switch = cfg_of(r['6c'])['autoregress_epoch']
    b, se = r.trend('6c')
    return {'SixCKLAtSwitch': per_epoch(r['6c'], kl, switch),
            'SixCKLLastSix': per_epochs(r['6c'], kl[-6:]),
            'SixCKLSlope': Number(f'{signed(b)} ± {num(se)} nats per epoch', b, se),
            'DiffSixCSixA': difference(r.diff('6c', '6a', 'nll'))}


def problem6d_numbers(r):
    attempts = log_attempts(r['6d'])
    last = attempts[-1] if attempts else []
    off = [e for e, _, setting in last if not setting]
    earlier = attempts[0] if len(attempts) > 1 else []
    earlier_stall = next((i for i, (_, kl, _) in enumerate(earlier) if kl >= 1), len(earlier))
    return {'DiffSixDSixB': difference(r.diff('6d', '6b', 'nll')),
            'SixDTighter': difference(gap_difference(r, '6b', '6d')),
            'DiffSixDSixBKL': difference(r.diff('6d', '6b', 'kl')),
            'SixDStall': plain(r.stall('6d')), 'SixDUsedEpochs': plain(r['6d']['epochs'] - r.stall('6d')),
            'SixBStall': plain(r.stall('6b')), 'SixDCompileOffEpochs': plain(len(off)),
            'SixDEarlierStall': plain(earlier_stall), 'SixDEarlierEpochs': plain(len(earlier)),
            'SixEBaseStall': plain(r.stall('6e-baseline')), 'SixEWarmupStall': plain(r.stall('6e-warmup')),
            'SixEWeakStall': plain(r.stall('6e-weak')), 'SixEFreebitsStall': plain(r.stall('6e-freebits'))}


def problem6e_numbers(r):
    out = {}
    base = r['6e-baseline']
    switch = cfg_of(base)['autoregress_epoch']
    for part in REMEDIES:
        name, kl = NAMES[part], r.epochs_kl(part)
        out[name + 'KLAtSwitch'] = per_epoch(r[part], kl, switch)
        b, se = r.trend(part)
        out[name + 'KLSlope'] = Number(f'{signed(b)} ± {num(se)} nats per epoch', b, se)
        if part != '6e-baseline':
            ratio = r.ratio(part, '6e-baseline')
            out[name + 'Ratio'] = Number(f'{num(ratio["value"])} ± {error(ratio["se"])}', ratio['value'], ratio['se'])
            out[name + 'DiffNLL'] = difference(r.diff(part, '6e-baseline', 'nll'))
            out[name + 'DiffELBO'] = difference(r.diff(part, '6e-baseline', 'test_elbo'))
            out[name + 'DiffKL'] = difference(r.diff(part, '6e-baseline', 'kl'))
    out.update({'SixEBaseKLLastSix': per_epochs(base, r.epochs_kl('6e-baseline')[-6:]),
                'SixEFreebitsLooser': difference(gap_difference(r, '6e-freebits', '6e-baseline')),
                'DiffSixEBaseSixC': difference(r.diff('6e-baseline', '6c', 'nll'))})
    return out


def chapter_numbers(r):
    """{macro name: Number} of every number the chapter quotes, from the runs r (Runs)."""
    out = settings_numbers(r)
    for part in NAMES:
        if part in r:
            out.update(part_numbers(r, part))
    for more in (problem5_numbers, problem6a_numbers, problem6c_numbers, problem6d_numbers, problem6e_numbers,
                 seeds.seed_numbers):
        out.update(more(r))
    return out


def hardware(m):
    """Where a run trained, shortly: 'CPU, 2 cores', 'CPU, 2 cores, then AMD EPYC, 2 cores'."""
    from reporting.reader import training_time
    labels = [re.sub(r'CPU \((?:([^,)]+), )?x86_64\)', lambda f: f[1] or 'CPU', label) for label, _ in training_time(m)]
    return ', then '.join(labels)


def runs_table(r):
    """The runs the chapter quotes: profile, precision, epochs, hardware and the test images of each number."""
    rows = []
    quoted = ([(p, r[p]) for p in ('5b', '5c', '6a')] + [('6a', r.cpu.get('6a')), ('6a', r.cpu_bf16.get('6a'))]
              + [(p, r[p]) for p in PARTS if p[:2] in ('6b', '6c', '6d', '6e')])
    for label, m in quoted:
        if m is None:
            continue
        cfg = cfg_of(m)
        profile = ('full profile, our design' if m['part'].startswith('6e') else 'course settings') \
            if m['profile'] == 'full' else f'{m["profile"]} profile'
        v = m['values']
        first = v.get('test_elbo', v.get('test_nll'))
        q = is_q(m)
        rows.append([label, profile, 'bf16 training' if cfg['precision'] == 'bf16' else 'float32', str(m['epochs']),
                     hardware(m), images_words(subset_of(first), first['n_images']).removesuffix(' test images'),
                     images_words(subset_of(v[q]), v[q]['n_images']).removeprefix('the ').removesuffix(' test images')
                     if q else ''])
    return Table(['part', 'profile', 'precision', 'epochs', 'trained on', 'images: −ELBO, KL, 6a\'s NLL',
                  'images: IS NLL'], rows,
                 'lllrlll')


def table_5b(r):
    v = r['5b']['values']
    rows = [['−ELBO, the handout\'s loss', cell(v['test_elbo'])], ['reconstruction term', cell(v['test_recon'])],
            ['KL term', cell(v['kl'])], ['active units', cell(v['active_units'])]]
    return Table(['5b (cpu profile)', 'nats per image'], rows, 'lr')


def table_5c(r):
    b, c = r['5b'], r['5c']
    rows = [[m['part'], cell(m['values']['test_elbo']), cell(m['values']['kl']), cell(m['values']['kl_mc'])]
            for m in (b, c)]
    rows.append(['5c − 5b', diff_cell(r.diff('5c', '5b', 'test_elbo')), diff_cell(r.diff('5c', '5b', 'kl')),
                 diff_cell(r.diff('5c', '5b', 'kl_mc'))])
    return Table(['part (cpu profile)', '−ELBO', 'KL term, closed form', 'KL term, Monte-Carlo'], rows, 'lrrr')


def table_6a(r):
    rows = []
    for label, m in (('course settings, bf16 training', r['6a']), ('cpu profile, float32', r.cpu.get('6a')),
                     ('cpu profile, bf16 training', r.cpu_bf16.get('6a'))):
        if m is not None:
            s = per_image(m)['test_nll'][:1000].double()
            rows.append([label, str(m['epochs']), cell(m['values']['test_nll']),
                         cell(dict(value=s.mean().item(), stderr=s.std().item() / 1000 ** 0.5, n_images=1000))])
    if '6a' in r.cpu and '6a' in r.cpu_bf16:
        c = contrast([(1, r.cpu_bf16['6a'], 'test_nll'), (-1, r.cpu['6a'], 'test_nll')])
        rows.append(['cpu profile, bf16 − float32', '', diff_cell(c), ''])
    return Table(['6a run', 'epochs', 'NLL, exact', 'NLL, exact'], rows, 'lrrr')


def table_6b(r):
    v = r['6b']['values']
    rows = [['NLL, importance sampling', cell(v[is_q(r['6b'])])], ['−ELBO', cell(v['test_elbo'])],
            ['−ELBO − NLL', diff_cell(r.gap('6b'))], ['KL term', cell(v['kl'])],
            ['active units', cell(v['active_units'])]]
    return Table(['6b', 'nats per image'], rows, 'lr')


def table_6c(r):
    c, a = r['6c'], r['6a']
    rows = [['6c', str(c['epochs']), cell(c['values'][is_q(c)]), cell(c['values']['test_elbo']),
             cell(c['values']['kl']), cell(c['values']['active_units'])],
            ['6a', str(a['epochs']), cell(r.first('6a', 'test_nll', c['values'][is_q(c)]['n_images'])), '', '', ''],
            ['6c − 6a', '', diff_cell(r.diff('6c', '6a', 'nll')), '', '', '']]
    return Table(['part', 'epochs', 'NLL', '−ELBO', 'KL term', 'active units'], rows, 'lrrrrr')


def table_6d(r):
    rows = [[p, cell(r.value(p, 'nll')), diff_cell(r.gap(p)), cell(r.value(p, 'kl')), cell(r.value(p, 'active_units')),
             str(r.stall(p))] for p in ('6b', '6d')]
    rows.append(['6d − 6b', diff_cell(r.diff('6d', '6b', 'nll')), '', diff_cell(r.diff('6d', '6b', 'kl')), '', ''])
    return Table(['part', 'NLL, importance sampling', '−ELBO − NLL', 'KL term', 'active units',
                  'first epochs with KL < 1 nat'], rows, 'lrrrrr')


def table_6e(r):
    rows = []
    for p in REMEDIES:
        ratio = r.ratio(p, '6e-baseline') if p != '6e-baseline' else None
        rows.append([p, cell(r.value(p, 'kl')), f'{num(ratio["value"])} ± {error(ratio["se"])}' if ratio else '1',
                     cell(r.value(p, 'active_units')), cell(r.value(p, 'test_elbo')), cell(r.value(p, 'nll')),
                     diff_cell(r.diff(p, '6e-baseline', 'nll')) if ratio else ''])
    return Table(['configuration', 'KL term', 'KL ÷ baseline\'s', 'active units', '−ELBO', 'NLL',
                  'NLL − baseline\'s'], rows, 'lrrrrrr')


TABLES = {'TableRuns': runs_table, 'TableFiveB': table_5b, 'TableFiveC': table_5c, 'TableSixA': table_6a,
          'TableSixB': table_6b, 'TableSixC': table_6c, 'TableSixD': table_6d, 'TableSixE': table_6e,
          'TableSeeds': seeds.table_seeds}


def chapter_tables(r):
    """{macro name: Table} of the chapter's tables, from the runs r (Runs)."""
    return {name: make(r) for name, make in TABLES.items()}
