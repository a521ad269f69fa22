"""How a number of the runs is quoted and compared: its value with its standard error and the test
images it covers, and differences between runs, paired over the test images both cover (the
standard error of the mean per-image difference) when both saved per_image.pt, else from the means
with independent standard errors, said "unpaired". A difference under two standard errors is "no
measurable difference". Each run is one training seed: every standard error here is over test
images, never between seeds.

The words of the answers are written by hand in analysis/results.tex; reporting/numbers.py gives
them their numbers. What is left here is generated for a student's own runs: the 6e reading the
notebooks display (remedies_reading).
"""
from engine.config import PARTS, with_defaults
from engine.subsets import MNIST_TEST, subset_of, test_subset  # noqa: F401 (subset_of: the readers of answers)
from reporting.reader import per_image


REMEDIES = [p for p in PARTS if p.startswith('6e-')]


LATENT_DIMS = 49




CITES = {'vandenoord2016': 'van den Oord et al. 2016', 'gulrajani2016': 'Gulrajani et al. 2016',
         'kingma2016': 'Kingma et al. 2016', 'chen2017': 'Chen et al. 2017', 'bowman2016': 'Bowman et al. 2016',
         'sonderby2016': 'Sønderby et al. 2016', 'larochelle2011': 'Larochelle and Murray 2011',
         'burda2016': 'Burda et al. 2016', 'kingma2014': 'Kingma and Welling 2014',
         'rezende2015': 'Rezende and Mohamed 2015', 'williams1992': 'Williams 1992'}


# Published test NLLs on binarized MNIST (nats), for orientation: (model, NLL, citation key).
LITERATURE = [('PixelCNN', 81.30, 'vandenoord2016'), ('PixelVAE', 79.66, 'gulrajani2016'),
              ('IAF VAE', 79.88, 'kingma2016'), ('VLAE', 79.03, 'chen2017')]


# Said beside every comparison with a published number (engine/data.py draws our binarization).
DATA_NOTE = ('our binarized test set is a seeded sample of MNIST, not the fixed binarization [[cite:larochelle2011]] '
             'that the course and the papers use')


# What the handout itself sets (CSE 599i Homework 2, Problems 5 and 6), with the words that set it:
# (part, setting) -> value. Only these are called "the handout's"; every other value of the full
# profile is the course framework's (its notebooks), and 6e's are our own choice.
HANDOUT = {
    ('5c', 'test_images'): None,   # 5c: "Report the test-set value of the evidence lower bound"
    ('6a', 'test_images'): None,   # 6a: "Report test-set log-likelihood"
    ('6b', 'is_samples'): 1000,    # 6b: "importance sampling with M = 1,000 samples z_i for each data point"
    ('6b', 'is_images'): None,     # 6b: "report the test-set marginal log-likelihood"
    ('6c', 'autoregress'): True,   # 6c: "Set autoregress = True"
    ('6c', 'epochs'): 20,          # 6c: "the test set value of the ELBO after 20 epochs"
    ('6c', 'test_images'): None,   # 6c: "the test set value of the ELBO"
    ('6c', 'is_samples'): 1000,    # 6c: "importance sampling (M = 1,000)"
    ('6c', 'is_images'): None,
    ('6d', 'flows'): 8,            # 6d: "8 steps of Inverse Autoregressive Flow"
    ('6d', 'is_samples'): 1000,    # 6d: "the test-set marginal log-likelihood using importance sampling (M = 1,000)"
    ('6d', 'is_images'): None,
}


def images_words(subset, n):
    """A subset of the test images in words: 'all 10,000 test images', 'the first 1,000 test images',
    'a uniform sample of 1,000 test images (seed 599)'."""
    kind, _, arg = subset.partition(':')
    if kind == 'all':
        return f'all {n:,} test images'
    if kind == 'first':
        return f'the first {n:,} test images'
    return f'a uniform sample of {n:,} test images (seed {arg})'


def image_index(m, q, n):
    """The test-set indices of the n per-image values of quantity q of part m, in their order: those
    saved beside them (<q>_index), else those its value's subset names."""
    saved = per_image(m).get(f'{q}_index')
    if saved is not None:
        return [int(i) for i in saved]
    kind, _, arg = subset_of(m['values'][q]).partition(':') if q in m['values'] else ('first', '', '')
    if kind == 'uniform':
        index = test_subset(MNIST_TEST, n, seed=int(arg))
        return list(range(MNIST_TEST)) if index is None else [int(i) for i in index]
    return list(range(n))


def paired_series(terms):
    """The per-image values of each term [(c, m, q)] on the test images every one covers, in the first
    term's order: ([float64 tensor per term], indices, subset name); None where a part saved none."""
    series = [per_image(m).get(q) for _, m, q in terms]
    if any(s is None for s in series):
        return None
    indexed = [dict(zip(image_index(m, q, len(s)), s.double().tolist(), strict=True))
               for (_, m, q), s in zip(terms, series, strict=True)]
    common = [i for i in indexed[0] if all(i in d for d in indexed[1:])]
    import torch
    values = [torch.tensor([d[i] for i in common], dtype=torch.float64) for d in indexed]
    n = len(common)
    subset = 'all' if n >= MNIST_TEST else f'first:{n}' if common == list(range(n)) else 'some'
    return values, common, subset


def contrast(terms):
    """sum_k c_k * (quantity q_k of part m_k) per test image, for terms [(c_k, m_k, q_k)]. Paired when
    every part saved per-image values: over the test images all of them cover, with the standard
    error of the mean of the per-image combination. Otherwise unpaired: the combination of the means,
    with sqrt(sum c_k^2 se_k^2), as if the estimates were independent. 'images' names the test images
    in words."""
    paired = paired_series(terms)
    if paired is not None and paired[1]:
        values, common, subset = paired
        d = sum(c * s for (c, _, _), s in zip(terms, values, strict=True))
        n = len(common)
        words = images_words(subset, n) if subset != 'some' else f'{n:,} test images'
        return dict(value=d.mean().item(), se=d.std().item() / n ** 0.5, n=[n], paired=True, images=words)
    vs = [m['values'][q] for _, m, q in terms]
    subsets = list(dict.fromkeys(images_words(subset_of(v), v['n_images']) for v in vs))
    return dict(value=sum(c * v['value'] for (c, _, _), v in zip(terms, vs, strict=True)), paired=False,
                se=sum((c * v['stderr']) ** 2 for (c, _, _), v in zip(terms, vs, strict=True)) ** 0.5,
                n=sorted({v['n_images'] for v in vs}), images=' and '.join(subsets))


def measurable(c):
    """At least two standard errors from zero (an exact zero, such as a part against itself, is not)."""
    return c['value'] != 0 and abs(c['value']) >= 2 * c['se']


def how(c):
    return f'{"paired" if c["paired"] else "unpaired"}, {" and ".join(map(str, c["n"]))} test images'


def compared(c):
    """A difference in words: '+1.20 ± 0.30 nats (paired, 1000 test images)', or 'no measurable
    difference (...)' when it is under two standard errors."""
    number = f'{c["value"]:+.2f} ± {c["se"]:.2f} nats'
    if measurable(c):
        return f'{number} ({how(c)})'
    return f'no measurable difference ({number}, {how(c)}; under 2 standard errors)'


def value_text(v):
    return f'{v["value"]}' if v['stderr'] is None else f'{v["value"]:.2f} ± {v["stderr"]:.2f}'


def with_n(v, table=False):
    """A value with its standard error and the test images it covers: '88.65 ± 0.70 (the first 1,000
    test images, M = 1000)'; in a table '88.65 ± 0.70 (first 1,000)'; active units '38 of 49'."""
    if v is None:
        return ''
    if v['stderr'] is None:
        return f'{v["value"]} of {LATENT_DIMS}'
    words = images_words(subset_of(v), v['n_images'])
    if table:
        return f'{value_text(v)} ({words.removeprefix("the ").removesuffix(" test images")})'
    return f'{value_text(v)} ({words}' + (f', M = {v["M"]}' if v.get('M') else '') + ')'


def is_q(m):
    """The key of a part's importance-sampled NLL (test_nll_is<M>), or None."""
    return next((q for q in m['values'] if q.startswith('test_nll_is')), None)


def nll_q(m):
    """The key of a part's NLL: the importance-sampled one, else the exact one (6a), else None."""
    return is_q(m) or ('test_nll' if 'test_nll' in m['values'] else None)


class View(dict):
    """{part: metrics of its preferred run (course settings first)}, with pool {part: [metrics of
    every run that has the part, in the same order]}."""
    def __init__(self, runs=()):
        pool = {}
        for r in runs:
            for part, m in r['parts'].items():
                pool.setdefault(part, []).append(m)
        super().__init__({p: ms[0] for p, ms in pool.items()})
        self.pool = pool


def run_name(r, parts=()):
    """A run directory in a column header: 'course settings, float32', 'cpu profile, bf16 training';
    for 6e's parts alone, which the handout sets nothing for, 'full profile, our design, float32'."""
    precision = 'bf16 training' if r['precision'] == 'bf16' else 'float32'
    if r['profile'] != 'full':
        return f'{r["profile"]} profile, {precision}'
    ours = parts and all(p.startswith('6e') for p in parts)
    return f'{"full profile, our design" if ours else "course settings"}, {precision}'


def remedies_reading(metrics, refs=None):
    """What one run directory's 6e numbers say, for the notebook that displays them: each remedy's
    final KL term as a multiple of the baseline's and its NLL against the baseline's, paired where
    both saved per-image values; None without a baseline that has both. refs is not used (kept for
    callers that pass the other parts)."""
    ms = {m['part']: m for m in metrics}
    base = ms.get('6e-baseline')
    if base is None or not is_q(base) or 'kl' not in base['values']:
        return None
    kl0 = base['values']['kl']['value']
    lines = [f'Baseline: KL term {value_text(base["values"]["kl"])} nats, NLL {with_n(base["values"][is_q(base)])}. '
             'One training run each: standard errors are over test images, not between seeds.']
    for m in (ms[p] for p in REMEDIES[1:] if p in ms and is_q(ms[p]) and 'kl' in ms[p]['values']):
        d = contrast([(1, m, is_q(m)), (-1, base, is_q(base))])
        ratio = f'{m["values"]["kl"]["value"] / kl0:.2f} times the baseline\'s' if kl0 > 0 else 'the baseline\'s is 0'
        lines.append(f'{m["part"]}: KL term {value_text(m["values"]["kl"])} nats, {ratio}; NLL − baseline\'s: '
                     f'{compared(d)}.')
    alive = [p for p, m in ms.items() if p in REMEDIES and m['values'].get('kl', {}).get('value', 0) >= 1]
    lines.append(f'KL term of at least 1 nat (the latent in use): {", ".join(alive) or "none"}.')
    return ' '.join(lines)


def cfg_of(m):
    return with_defaults(m.get('config') or {})
