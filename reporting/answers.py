"""The answers to the handout's questions (5a-6e), written from the runs' numbers. Each answer
quotes the course-settings run (`full` profile) of its part where there is one, and otherwise
says so and lets another profile's run stand in. Every comparison names both runs (profile,
precision, epochs; the test images in its standard error) and is paired over the same test images
(the standard error of the mean per-image difference) when both saved per_image.pt, else made
from the means with independent standard errors, said "unpaired". A difference under two
standard errors reads "no measurable difference". Where the two runs differ in more than the
thing compared, the answer says so and draws no conclusion about that thing.
"""
import os

from engine.config import DEFAULTS, PARTS, config, with_defaults
from reporting.reader import history, per_image, seen


REMEDIES = [p for p in PARTS if p.startswith('6e-')]


LATENT_DIMS = 49


CITES = {'vandenoord2016': 'van den Oord et al. 2016', 'gulrajani2016': 'Gulrajani et al. 2016',
         'kingma2016': 'Kingma et al. 2016', 'chen2017': 'Chen et al. 2017', 'bowman2016': 'Bowman et al. 2016',
         'sonderby2016': 'Sønderby et al. 2016', 'larochelle2011': 'Larochelle and Murray 2011'}


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


def reference_word(part, key, value):
    """'handout' where the handout sets this value of the part's setting, else 'full' (the profile)."""
    return 'handout' if (part, key) in HANDOUT and HANDOUT[(part, key)] == value else 'full'


# The settings named where a run departs from the full profile, or from another run.
WORDS = dict(enc_capacity='encoder capacity', enc_depth='encoder depth', dec_capacity='decoder capacity',
             dec_depth='decoder depth', flows='IAF steps', iaf_depth='masked blocks per IAF step',
             pixelcnn_capacity='PixelCNN capacity',
             pixelcnn_depth='PixelCNN depth', epochs='epochs', autoregress_epoch='warm-up epochs before the PixelCNN',
             lr_drop_epoch=f'learning-rate drop to {DEFAULTS["lr_late"]:.0e} at epoch'.replace('e-0', 'e-'),
             kl_warmup='KL warm-up epochs', kl_warmup_start='KL warm-up from epoch', free_bits='free bits λ',
             test_images='test images', is_images='test images for importance sampling',
             is_samples='importance samples M', layout='network layout',
             init_output_bias='Gaussian output bias at the mean image')


def value_text(v):
    return f'{v["value"]}' if v['stderr'] is None else f'{v["value"]:.2f} ± {v["stderr"]:.2f}'


def with_n(v, table=False):
    """A value with its standard error and sample size: '88.65 ± 0.70 (1000 test images, M = 1000)';
    in a table '88.65 ± 0.70 (1000)'; active units '38 of 49'."""
    if v is None:
        return ''
    if v['stderr'] is None:
        return f'{v["value"]} of {LATENT_DIMS}'
    n = f'{v["n_images"]}' + ('' if table else ' test images' + (f', M = {v["M"]}' if v.get('M') else ''))
    return f'{value_text(v)} ({n})'


def is_q(m):
    """The key of a part's importance-sampled NLL (test_nll_is<M>), or None."""
    return next((q for q in m['values'] if q.startswith('test_nll_is')), None)


def contrast(terms):
    """sum_k c_k * (quantity q_k of part m_k) per test image, for terms [(c_k, m_k, q_k)]. Paired when
    every part saved per-image values: over the first n test images that all of them cover (one run
    directory evaluates its parts on the same images in the same order), with the standard error of
    the mean of the per-image combination. Otherwise unpaired: the combination of the means, with
    sqrt(sum c_k^2 se_k^2), as if the estimates were independent."""
    series = [per_image(m).get(q) for _, m, q in terms]
    if all(s is not None for s in series):
        n = min(len(s) for s in series)
        d = sum(c * s[:n].double() for (c, _, _), s in zip(terms, series))
        return dict(value=d.mean().item(), se=d.std().item() / n ** 0.5, n=[n], paired=True)
    vs = [m['values'][q] for _, m, q in terms]
    return dict(value=sum(c * v['value'] for (c, _, _), v in zip(terms, vs)), paired=False,
                se=sum((c * v['stderr']) ** 2 for (c, _, _), v in zip(terms, vs)) ** 0.5,
                n=sorted({v['n_images'] for v in vs}))


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


ONLY = {'is_images': 'binary_vae', 'is_samples': 'binary_vae', 'init_output_bias': 'gaussian_vae'}


def relevant(key, cfg):
    """Whether a setting of WORDS matters to the part's kind of model."""
    if key in ONLY:
        return cfg['model'] == ONLY[key]
    if key == 'iaf_depth':
        return cfg['flows'] > 0
    if cfg['model'] == 'pixelcnn':
        return not key.startswith(('enc_', 'dec_', 'flows', 'autoregress', 'kl_', 'free_bits'))
    return cfg['autoregress'] or not key.startswith(('pixelcnn_', 'autoregress'))


def shown(key, value):
    """A setting's value in words: None is 'all' (images) or 'none' (no learning-rate drop)."""
    return ('none' if key == 'lr_drop_epoch' else 'all') if value is None else value


def departures(cfg, ref, skip=(), word=None, part=None):
    """'setting value (reference value)' for each setting of WORDS where cfg departs from ref; the
    reference is named by `word`, or else 'handout' where the handout sets the part's value (HANDOUT)
    and 'full' (the full profile's) where it does not."""
    return [f'{WORDS[k]} {shown(k, cfg.get(k))} ({word or reference_word(part, k, ref[k])} {shown(k, ref[k])})'
            for k in WORDS if k not in skip and relevant(k, cfg) and cfg.get(k) != ref[k]]


def precision_words(precision):
    return 'bfloat16 training, float32 evaluation' if precision == 'bf16' else 'float32'


def cfg_of(m):
    return with_defaults(m.get('config') or {})


def trained_apart(m, ref):
    """', trained in float32' (or bfloat16) where ref was trained in another precision than m, else ''."""
    p, q = (cfg_of(x)['precision'] for x in (m, ref))
    return '' if p == q else f', trained in {"bfloat16" if q == "bf16" else "float32"}'


def where(m):
    """'full profile, the course settings' or 'cpu profile'."""
    return 'full profile, the course settings' if m['profile'] == 'full' else f'{m["profile"]} profile'


def run_label(m):
    """A run, named: '6c (full profile, the course settings, float32, 20 epochs)'."""
    precision = 'bf16 training' if cfg_of(m)['precision'] == 'bf16' else 'float32'
    return f'{m["part"]} ({where(m)}, {precision}, {m["epochs"]} epochs)'


def stand_in(*ms):
    """One sentence per profile standing in for parts without a course-settings run ('' if none)."""
    by_profile = {}
    for m in ms:
        if m['profile'] != 'full':
            by_profile.setdefault(m['profile'], []).append(m['part'])
    return ''.join(f'No course-settings run of {listed(parts)} yet: ' + (
        f'its {profile} profile run stands in. ' if len(parts) == 1 else f'their {profile} profile runs stand in. ')
        for profile, parts in by_profile.items())


def run_settings(m, ref=None):
    """The settings of the run a number comes from, against the full profile's; with ref (another
    part), only how m's settings differ from ref's."""
    cfg = cfg_of(m)
    if ref is not None:
        diffs = departures(cfg, cfg_of(ref), word=ref['part'])
        return (f'{m["part"]} ({where(m)}): ' + (', '.join(diffs) if diffs else f'the same settings as {ref["part"]}')
                + trained_apart(ref, m))
    diffs = departures(cfg, config(m['part'], 'full'), part=m['part'])
    return (f'{m["part"]} in the {m["profile"]} profile, {precision_words(cfg["precision"])}, '
            f'{m.get("hardware", m.get("device", ""))}; ' + (', '.join(diffs) if diffs else
                                                             "the full profile's settings (the course settings)"))


IMAGES = ('test_images', 'is_images')  # which test images: a comparison names the images it is made over


def setting_differences(a, b, thing=()):
    """The settings, other than those in `thing`, in which the runs of a and b differ, in words
    ('epochs 4 against 20'); precision included unless `thing` names it."""
    ca, cb = cfg_of(a), cfg_of(b)
    out = [f'{WORDS[k]} {shown(k, ca.get(k))} against {shown(k, cb.get(k))}' for k in WORDS
           if k not in thing + IMAGES and relevant(k, ca) and relevant(k, cb) and ca.get(k) != cb.get(k)]
    if 'precision' not in thing and ca['precision'] != cb['precision']:
        out.append(f'precision ({precision_words(ca["precision"])} against {precision_words(cb["precision"])})')
    return out


def listed(words):
    return ' and '.join(words) if len(words) < 3 else f'{", ".join(words[:-1])} and {words[-1]}'


def comparison(a, qa, b, qb, thing, keys=()):
    """a's quantity qa minus b's qb, both runs named: (text, contrast, clean). clean: the two runs
    differ in no setting but those of `keys` (the thing compared); otherwise the text says in what
    else they differ and that the difference is not the thing's alone."""
    c = contrast([(1, a, qa), (-1, b, qb)])
    others = setting_differences(a, b, keys)
    same = all(a.get(k) == b.get(k) for k in ('profile', 'epochs')) and trained_apart(a, b) == ''
    text = f'{run_label(a)} − {b["part"] + " (likewise)" if same else run_label(b)}: {compared(c)}'
    if others:
        text += (f'. These runs also differ in {listed(others)}, so the difference is not {thing} alone, and no '
                 f'conclusion about {thing} is drawn from it')
    return text + '. ', c, not others


def alike(ms, part, like):
    """The run of `part` in the same profile as the run `like`, where the view ms (a View) holds one
    besides the part's preferred run; else None."""
    for m in getattr(ms, 'pool', {}).get(part, []):
        if m['profile'] == like['profile']:
            return m
    return None


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


def run_name(r):
    """A run directory in a column header: 'course settings, float32', 'cpu profile, bf16 training'."""
    precision = 'bf16 training' if r['precision'] == 'bf16' else 'float32'
    return f'{"course settings" if r["profile"] == "full" else r["profile"] + " profile"}, {precision}'


def figure(directory, label, kinds, caption):
    """A figure block of the PNGs <kind>.png in directory, side by side ([] if none exists); a file
    that SEEN describes adds what it shows."""
    paths = [p for p in (os.path.join(directory, f'{k}.png') for k in kinds) if os.path.exists(p)]
    described = [f'{os.path.basename(p)[:-4]}: {seen(p)}' for p in paths if seen(p)]
    caption += ' In this run, ' + '; '.join(described) + '.' if described else ''
    return [('fig', label, paths, caption)] if paths else []


def vae_figure(m, what, extra=''):
    return figure(m['dir'], m['part'], ('samples', 'reconstructions'), f'{m["part"]}. Left: 49 samples, {what}. Right: '
                  f'ten test images (top) and their reconstructions from z = μ(x) (bottom). What to look for: whether '
                  f'draws from the prior decode to digits as the posterior means do.{extra}')


def gap(m):
    """The −ELBO minus the importance-sampled NLL of a part: the KL(q(z|x) ‖ p(z|x)) the bound pays."""
    return contrast([(1, m, 'test_elbo'), (-1, m, is_q(m))])


def answer_5a(ms):
    return [('p', '`models.ConvnetBlock` is the residual block x + conv(relu(conv(relu(x)))) of two 3×3 convolutions '
                  'that keep the shape; the encoder and both decoders are stacks of it, and `models.MaskedConvnetBlock` '
                  '(6a) is the same block with type-B masked convolutions. `tests/test_models.py` checks its shapes '
                  'and the framework\'s parameters and initialisation.')]


def squared_error(recon, sigma):
    """The squared error per image ‖x − g(z)‖² behind a reconstruction term ‖x − g(z)‖²/(2σ²), and its
    root mean square per pixel (784 pixels)."""
    sq = recon * 2 * sigma ** 2
    return sq, (sq / 784) ** 0.5


def answer_5b(ms):
    m = ms['5b']
    v, sigma = m['values'], cfg_of(m)['sigma']
    weight = 1 / (2 * sigma ** 2)
    text = (f'{stand_in(m)}Run: {run_settings(m)}. Test −ELBO {with_n(v["test_elbo"])} nats per image. [[fig:5b]] '
            f'shows the samples, decoder means g(z) for z ~ N(0, I), beside test images and their reconstructions. ')
    samples, recons = (seen(os.path.join(m['dir'], f'{k}.png')) for k in ('samples', 'reconstructions'))
    if samples:
        text += f'The samples are {samples}' + (f'; the reconstructions are {recons}' if recons else '') + '. '
    text += ('Why they are not digits' if samples and 'not digits' in samples else 'What shapes them') + (
        f': with σ = {sigma:g} the reconstruction term weighs squared error by 1/(2σ²) ≈ {weight:.0f} nats per unit, '
        f'so a nat of KL pays for itself once it lowers an image\'s squared error by {1 / weight:.4f}. ')
    if 'test_recon' in v and 'kl' in v:
        (sq, rms), kl = squared_error(v['test_recon']['value'], sigma), v['kl']
        au = v.get('active_units')
        text += (f'The measured reconstruction term, {value_text(v["test_recon"])} nats, is a squared error of '
                 f'{sq:.2f} per image ({rms:.3f} per pixel, root mean square), and the encoder spends '
                 f'KL freely: {value_text(kl)} nats per image, {kl["value"] / LATENT_DIMS:.2f} per latent dimension, '
                 + (f'{au["value"]} of {LATENT_DIMS} dimensions active' if au else 'active units not measured'))
        if 'kl' in ms.get('6b', {}).get('values', {}):
            kl = ms['6b']['values']['kl']
            text += (f' (the binary VAE {run_label(ms["6b"])}, whose reconstruction term is a cross-entropy: '
                     f'{value_text(kl)}, {kl["value"] / LATENT_DIMS:.2f} per dimension)')
        text += '. '
    return [('p', text + 'Codes that cost that many nats pin each training image to its own small region of the '
                         'latent space; the decoder only ever sees codes drawn from those posteriors, so a typical '
                         'draw from the prior can land where no image\'s code lies and decode to whatever lies between '
                         'digits. How much of the prior the posteriors cover is not measured here (it would take, e.g., '
                         'the KL from the aggregate posterior to the prior). A larger σ weighs squared error less and '
                         'lets the KL term shrink, at the price of blurrier reconstructions; no run here measures that.')
            ] + vae_figure(m, 'decoder means g(z) for z ~ N(0, I)')


def unbiasedness(b):
    """5b's own check of the Monte-Carlo KL: KL_mc − KL on its test images (= −ELBO_mc − −ELBO per
    image: both share the reconstruction term and the draws of z), or '' if 5b has no KL_mc."""
    v = b['values']
    keys = ('kl_mc', 'kl') if 'kl_mc' in v and 'kl' in v else ('test_elbo_mc', 'test_elbo') \
        if 'test_elbo_mc' in v else None
    if keys is None:
        return ''
    e = contrast([(1, b, keys[0]), (-1, b, keys[1])])
    return (f'The Monte-Carlo KL against the closed form on 5b itself, the same test images and the same draws of z '
            f'(the reconstruction term is shared and cancels), KL_mc − KL: {compared(e)}, '
            + ('a measurable difference, which an unbiased estimator should not show' if measurable(e) else
               'consistent with an unbiased estimator')
            + ('' if e['paired'] else '; unpaired, as this run saved no per-image KL values, so the check is far '
                                      'weaker than the paired one would be') + '. ')


def answer_5c(ms):
    b, c = ms['5b'], ms['5c']
    text = (f'{stand_in(c, b)}Run: {run_settings(c)}; {run_settings(b, c)}. Trained with the one-sample Monte-Carlo '
            f'KL and evaluated with the closed-form one, the test −ELBO of 5c is {with_n(c["values"]["test_elbo"])}; '
            f'that of 5b is {with_n(b["values"]["test_elbo"])}. ')
    said, d, clean = comparison(c, 'test_elbo', b, 'test_elbo', 'the KL estimator', keys=('loss',))
    text += said + unbiasedness(b)
    text += 'Both runs train the same objective in expectation; the Monte-Carlo KL only adds variance to the gradient. '
    if clean and not measurable(d):
        text += 'At this budget that variance leaves no measurable mark on the test bound.'
    elif clean:
        text += (f'The Monte-Carlo run ends with the {"worse" if d["value"] > 0 else "better"} test bound' +
                 ('; with one run per estimator (one seed) the spread between runs is not measured, so this is a '
                  'single draw.' if d['value'] > 0 else '. Extra variance does not explain that, and with one run per '
                  'estimator (one seed) the spread between runs is not measured, so this does not show that either '
                  'estimator trains better.'))
    return [('p', text + ' Samples: [[fig:5c]].')] + vae_figure(c, 'decoder means g(z) for z ~ N(0, I)')


def published(v, name, nll):
    """'2.0 above' or '1.0 below': where our NLL v lies against a published one."""
    diff = v - nll
    return f'{abs(diff):.1f} {"above" if diff > 0 else "below"}'


def answer_6a(ms):
    m = ms['6a']
    v, h = m['values']['test_nll'], history(m)
    name, nll, key = LITERATURE[0]
    text = (f'{stand_in(m)}Run: {run_settings(m)}. Test NLL, exact: {with_n(v)} nats per image, '
            f'{published(v["value"], name, nll)} the published {name}, {nll:.2f} [[cite:{key}]]: their network and '
            f'training differ, and {DATA_NOTE}. ')
    if h and h.get('test_loss'):
        n, losses = cfg_of(m)['monitor_images'], h['test_loss']
        every = 1 if len(losses) <= 10 else 5   # epochs 1, 5, 10, ... and the last, for long runs
        shown_epochs = sorted({1, len(losses)} | set(range(every, len(losses) + 1, every)))
        text += (f'The NLL on {f"the first {n}" if n else "all"} test images after '
                 + ('each epoch: ' + ' → '.join(f'{x:.2f}' for x in losses) if every == 1 else
                    'epochs ' + ', '.join(f'{e}: {losses[e - 1]:.2f}' for e in shown_epochs))
                 + ' ([[fig:6a-loss]]). ')
    return [('p', text + schedule_reading(m) + precision_reading(m, ms, 'test_nll')
             + 'Samples, drawn pixel by pixel: [[fig:6a]].')] + figure(
        m['dir'], '6a', ('samples',), '49 samples x ~ p(x) of the PixelCNN (6a), drawn pixel by pixel in raster '
                                      'order. What to look for: strokes that stay connected across rows; whole digits.'
    ) + figure(m['dir'], '6a-loss', ('loss',), 'PixelCNN (6a): training NLL per iteration (faint: each batch; line: '
                                               'moving mean) and test NLL at the end of each epoch. What to look for: '
                                               'whether the test NLL is still falling when training stops.')


def precision_reading(m, ms, q):
    """For a run trained in bfloat16: the part's bfloat16 and float32 runs of one profile, with the
    same settings and seed, set against each other on q, and what that says of the precision's
    share in m's number ('' if m trained in float32 or no such pair exists)."""
    if cfg_of(m)['precision'] != 'bf16':
        return ''
    runs = getattr(ms, 'pool', {}).get(m['part'], [])
    for low in (r for r in runs if cfg_of(r)['precision'] == 'bf16' and q in r['values']):
        full = next((r for r in runs if r['profile'] == low['profile'] and cfg_of(r)['precision'] == 'fp32'
                     and q in r['values'] and not setting_differences(low, r, ('precision',))), None)
        if full is None:
            continue
        text, c, _ = comparison(low, q, full, q, 'the precision', ('precision',))
        worse = c['value'] >= 2 * c['se']
        return (f'This run trained in bfloat16 (evaluated in float32). Where {m["part"]} trained in both precisions '
                f'with the same settings and seed: {text}'
                + ('bfloat16 training made the number measurably worse there, so it may account for part of the gap. '
                   if worse else 'bfloat16 training was not measurably worse there, so nothing points to the '
                                 'precision as a cause of the gap. '))
    return 'This run trained in bfloat16 (evaluated in float32); no float32 run with its settings is committed. '


def schedule_reading(m):
    """What the test NLL after each epoch says about the learning-rate drop and the epochs: its value
    after the last epoch at the first rate, after the last epoch, and its mean fall per epoch over the
    last five (from after epoch E − 5 to after epoch E); '' without a drop inside the run or a history
    that covers it."""
    cfg, losses = m.get('config') or {}, (history(m) or {}).get('test_loss') or []
    drop = cfg.get('lr_drop_epoch')
    if not drop or not 6 <= len(losses) or not drop < len(losses):
        return ''
    before, last = losses[drop - 1], losses[-1]    # losses[k]: after epoch k + 1; epochs >= drop train at lr_late
    slope = (losses[-6] - last) / 5
    return (f'The learning rate fell from {cfg["lr"]:g} to {cfg["lr_late"]:g} after epoch {drop}: the test NLL was '
            f'{before:.2f} then and {last:.2f} after epoch {len(losses)}, {before - last:.2f} lower; over the last '
            f'five epochs it fell by {slope:.2f} nats per epoch. ')


def answer_6b(ms):
    m = ms['6b']
    v = m['values']
    text = (f'{stand_in(m)}Run: {run_settings(m)}. Test NLL by importance sampling: {with_n(v[is_q(m)])} nats per '
            f'image. Test −ELBO {with_n(v["test_elbo"])}; −ELBO − NLL: {compared(gap(m))}. KL term '
            f'{value_text(v["kl"])} nats, {with_n(v.get("active_units")) or "an unmeasured number"} latent dimensions '
            f'active.')
    return [('p', text + ' Samples and reconstructions: [[fig:6b]].')] + vae_figure(
        m, 'Bernoulli means of p(x|z) for z ~ N(0, I)')


def kl_trend(m):
    """(mean KL of the 100 training batches before the PixelCNN is switched on, of the last 100, the switch step)."""
    h = history(m)
    if not (h and h.get('autoregress_step')):
        return None
    a, kl = h['autoregress_step'], h['kl']
    return sum(kl[max(0, a - 100):a]) / len(kl[max(0, a - 100):a]), sum(kl[-100:]) / len(kl[-100:]), a


def kl_over(m, n):
    """The mean per-image KL term over the first n test images, or None without per-image values."""
    s = per_image(m).get('kl')
    return None if s is None or len(s) < n else s[:n].double().mean().item()


def gap_reading(m):
    """What the ELBO–NLL gap of a PixelVAE says, set against its KL term over the same test images
    where per-image values allow; '' without a measurable gap."""
    g, kl = gap(m), m['values']['kl']
    same = kl_over(m, g['n'][0]) if g['paired'] else None
    if not (measurable(g) and kl['value'] > 0):
        return ''
    text = ('At finite M the importance-sampled estimate is itself an upper bound on the NLL in expectation, so this '
            'gap understates that divergence. ')
    if same is not None and same > 0:
        text += (f'It is {g["value"] / same:.0%} of the KL term of the bound over the same {g["n"][0]} test images '
                 f'({same:.2f} nats). ')
    else:
        text += (f'Set against the KL term of the bound, {kl["value"]:.2f} nats over {kl["n_images"]} test images, it '
                 f'is {g["value"] / kl["value"]:.0%}, the two measured on different sets of test images. ')
    return text + ('As the posterior collapses, q(z|x) and p(z|x) both approach p(z) and the bound tightens with the '
                   'cost of the code; the gap that remains is what the diagonal Gaussian q(z|x) misses of the '
                   'posterior under the PixelCNN decoder. ')


def kl_end(m):
    """(how the test KL term moved over the last three epochs, the sentence that says so), from the
    per-epoch test KL of the history: 'falling' or 'rising' where it moved in one direction over
    them, by two standard errors of the final value or more, else 'flat'; (None, '') without that history."""
    tk, kl = (history(m) or {}).get('test_kl') or [], m['values'].get('kl')
    if len(tk) < 3 or not kl or kl.get('stderr') is None:
        return None, ''
    (a, b, c), se = tk[-3:], kl['stderr']
    n = cfg_of(m)['monitor_images']
    trend = 'falling' if c - a <= -2 * se and a >= b >= c else 'rising' if c - a >= 2 * se and a <= b <= c else 'flat'
    return trend, (f'On {f"the first {n}" if n else "all"} test images the KL term was {a:.2f}, {b:.2f} and {c:.2f} '
                   f'after the last three epochs, a change of {c - a:+.2f} nats: ' + {
                       'falling': 'still falling when training stops. ',
                       'rising': 'rising again when training stops. ',
                       'flat': f'no steady change (within two standard errors of the final value, ± {se:.2f}, or '
                               'not in one direction), levelled off. '}[trend])


def collapse_reading(m, trend):
    """The KL's fall after the PixelCNN is switched on, and how far the collapse went by the end."""
    v, (before, last, step) = m['values'], trend
    moved, said = kl_end(m)
    text = (f'Over the 100 training batches before the PixelCNN is switched on (iteration {step}) it averages '
            f'{before:.1f} nats per image, over the last 100 {last:.1f} (a ratio of {last / before:.2f}); on the test '
            f'set it ends at {value_text(v["kl"])}, {with_n(v.get("active_units")) or "an unmeasured number of"} '
            f'dimensions active. {said}')
    if last < before:
        text += ('Once the decoder predicts each pixel from the pixels above and to its left, the latent code is '
                 'worth less than it costs and the posterior moves towards the prior: the posterior collapse the '
                 'handout asks to observe, ' + (
                     'complete.' if v['kl']['value'] < 1 else {
                         'falling': 'still under way when training stops.',
                         'flat': 'partial: the KL term levelled off above zero before training stopped.',
                         'rising': 'partial: the KL term rose again before training stopped.'}.get(
                         moved, 'how far by the end of training is not measured here (no per-epoch test KL).')))
    return text


def same_epochs(m, a):
    """Where the PixelCNN of 6a trained for more epochs than the PixelVAE m: its test NLL after m's
    number of epochs, from its history; '' otherwise."""
    losses, e = (history(a) or {}).get('test_loss') or [], m['epochs']
    if not e < len(losses):
        return ''
    cfg = cfg_of(a)
    drop, n = cfg['lr_drop_epoch'], cfg['monitor_images']
    return (f' 6a trained {len(losses)} epochs and 6c {e}. On {f"the first {n}" if n else "all"} test images (one '
            f'evaluation per epoch, in its history) the NLL of 6a was {losses[e - 1]:.2f} after epoch {e}'
            + (', before its learning-rate drop,' if drop and e <= drop else '')
            + f' and {losses[-1]:.2f} after epoch {len(losses)}: its further epochs gained it '
            f'{losses[e - 1] - losses[-1]:.2f} nats.')


def against_pixelcnn(m, a):
    """6c's importance-sampled NLL against 6a's exact one, qualified before the number."""
    said, c, clean = comparison(m, is_q(m), a, 'test_nll', 'the latent code')
    text = (f' Against the PixelCNN alone: 6c\'s number is an importance-sampled estimate, an upper bound on its NLL '
            f'in expectation (Problem 2), and 6a\'s an exact NLL, {with_n(a["values"]["test_nll"])}. {said}')
    if clean and measurable(c):
        text += ('Even as an upper bound it is lower: with its latent code the PixelVAE models the test images better '
                 'than the PixelCNN alone. ' if c['value'] < 0 else 'A higher upper bound does not show that the '
                 'PixelVAE models the test images worse: its NLL lies below the estimate by an unmeasured amount. ')
    return text.rstrip() + same_epochs(m, a)


KL_PLOT = ('the KL term of the ELBO against training iteration: each training batch (faint), their moving mean, the '
           'test value at the end of each epoch, and the iteration at which the PixelCNN is switched on (dashed).')


def answer_6c(ms):
    m = ms['6c']
    v, trend = m['values'], kl_trend(m)
    text = (f'{stand_in(m)}Run: {run_settings(m)}. After {m["epochs"]} epochs the test −ELBO is '
            f'{with_n(v["test_elbo"])} and the importance-sampled NLL {with_n(v[is_q(m)])}; −ELBO − NLL, the '
            f'KL(q(z|x) ‖ p(z|x)) that the bound pays and M samples recover: {compared(gap(m))}. {gap_reading(m)}'
            f'[[fig:6c-kl]] plots the KL term against training iteration. ')
    if trend:
        text += collapse_reading(m, trend)
    if '6a' in ms:
        text += against_pixelcnn(m, ms['6a'])
    return [('p', text + ' Samples and reconstructions: [[fig:6c]].')] + figure(
        m['dir'], '6c-kl', ('kl',), 'PixelVAE (6c): ' + KL_PLOT + ' What to look for: the fall after the '
                                                                         'switch, posterior collapse.') + vae_figure(
        m, 'x ~ p(x|z) drawn pixel by pixel, z ~ N(0, I)', ' With the PixelCNN on, reconstructions are samples too: a '
                                                           'code that no longer pins the digit down shows as a '
                                                           'reconstruction of another shape.')


def flow_reading(d, b):
    """6d against 6b: the NLLs, the gaps, and what the flow does to the bound, where nothing else differs."""
    said, _, clean = comparison(d, is_q(d), b, is_q(b), 'the flow', keys=('flows', 'iaf_depth'))
    tight = contrast([(1, b, 'test_elbo'), (-1, b, is_q(b)), (-1, d, 'test_elbo'), (1, d, is_q(d))])
    if clean:
        said += (f'One run per encoder, each from seed {cfg_of(d)["seed"]}: the standard errors are over test '
                 'images, and the spread between training runs is not measured. ')
    text = (said + f'The gap −ELBO − NLL, the KL(q(z|x) ‖ p(z|x)) that the bound pays: {compared(gap(d))} for 6d, '
            f'{compared(gap(b))} for 6b. ' + code_use(d, b))
    if not clean:
        return text + f'Nor is the difference of the gaps, 6b\'s − 6d\'s, {compared(tight)}, set down to the flow. '
    if measurable(tight):
        return text + (f'With the flow the bound is {"tighter" if tight["value"] > 0 else "looser"}, here by '
                       f'{abs(tight["value"]):.2f} ± {tight["se"]:.2f} nats ({how(tight)}). ')
    return text + f'Whether the flow tightens the bound is not resolved here: {compared(tight)}. '


def code_use(d, b):
    """How much of the latent code 6d and 6b use: their KL terms, paired where both saved them, and
    their active units."""
    if 'kl' not in d['values'] or 'kl' not in b['values']:
        return ''
    units = [with_n(m['values'].get('active_units')) for m in (d, b)]
    return (f'The code they use, the KL term on the test images: 6d {value_text(d["values"]["kl"])}, 6b '
            f'{value_text(b["values"]["kl"])} nats; 6d − 6b: {compared(contrast([(1, d, "kl"), (-1, b, "kl")]))}'
            + (f'; active dimensions: 6d {units[0]}, 6b {units[1]}. ' if all(units) else '. '))


def answer_6d(ms):
    b, d = ms['6b'], ms['6d']
    text = (f'{stand_in(d, b)}Run: {run_settings(d)}; {run_settings(b, d)}. With {cfg_of(d)["flows"]} IAF steps in '
            f'the encoder the importance-sampled NLL is {with_n(d["values"][is_q(d)])} against '
            f'{with_n(b["values"][is_q(b)])} for the diagonal Gaussian encoder of 6b. ' + flow_reading(d, b)
            + early_plateau(d))
    other = alike(ms, '6b', d) if b['profile'] != d['profile'] else None
    if other is not None and is_q(other):
        text += f'In the {d["profile"]} profile, where both parts ran: ' + flow_reading(d, other)
    name, nll, key = LITERATURE[2]
    return [('p', text + f'Published, for orientation: {name} {nll:.2f} [[cite:{key}]]; {DATA_NOTE}. Samples: '
                         f'[[fig:6d]].')] + vae_figure(d, 'Bernoulli means of p(x|z) for z ~ N(0, I)')


def counted(n, noun):
    """'1 epoch', '5 epochs'."""
    return f'{n} {noun}' + ('' if n == 1 else 's')


REMEDY_WORDS = {  # formatted with the run's settings, and its counts of epochs and blocks (counted)
    '6e-warmup': 'KL warm-up, the weight of the KL term rising from 0 to 1 over {warmup_epochs} from epoch '
                 '{kl_warmup_start} [[cite:bowman2016]] [[cite:sonderby2016]]',
    '6e-freebits': 'free bits, training on the sum over latent dimensions of max(λ, batch-mean KL), λ = {free_bits} '
                   'nats [[cite:kingma2016]]',
    '6e-weak': 'a weak PixelCNN of {pixelcnn_blocks}, a receptive field of a few rows [[cite:chen2017]]'}


REMEDY_KEYS = ('kl_warmup', 'kl_warmup_start', 'free_bits', 'pixelcnn_depth')  # what a remedy changes


def remedy_group(ms):
    """The 6e runs compared with one another, {part: metrics}: those of one profile, the one in which
    most 6e parts ran, the preferred baseline's on a tie (a comparison across profiles is confounded)."""
    pool = getattr(ms, 'pool', None) or {p: [ms[p]] for p in REMEDIES if p in ms}
    profiles = [m['profile'] for p in REMEDIES for m in pool.get(p, [])]
    profile = max(dict.fromkeys(profiles), key=profiles.count)
    return {p: next(m for m in pool[p] if m['profile'] == profile) for p in REMEDIES
            if any(m['profile'] == profile for m in pool.get(p, []))}


def early_plateau(m):
    """The first epochs whose test KL term stayed under 1 nat, and the epoch it rose, from the
    history's per-epoch test values; '' where the first epoch's was already 1 nat or more."""
    h = history(m) or {}
    tk, tl = h.get('test_kl') or [], h.get('test_loss') or []
    k = next((i for i, x in enumerate(tk) if x >= 1), len(tk))
    if k == 0 or len(tl) < len(tk):
        return ''
    cfg = cfg_of(m)
    n, before_switch = cfg['monitor_images'], cfg.get('autoregress') and k <= cfg.get('autoregress_epoch', 0)
    text = (f'On {f"the first {n}" if n else "all"} test images the KL term stayed under 1 nat for the first '
            f'{f"{k} epochs" if k > 1 else "epoch"} ({", ".join(f"{x:.2f}" for x in tk[:k])}; test −ELBO {", ".join(f"{x:.2f}" for x in tl[:k])}): '
            'the code was unused from the start' + (', before the PixelCNN was switched on. ' if before_switch else '. '))
    if k == len(tk):
        return text + 'It never rose above 1 nat in this run. '
    return text + f'After epoch {k + 1} it was {tk[k]:.2f} nats (test −ELBO {tl[k]:.2f}): the code came into use. '


def remedy_settings(cfg):
    """A run's settings with the counts that REMEDY_WORDS writes out."""
    return dict(cfg, warmup_epochs=counted(cfg['kl_warmup'], 'epoch'),
                pixelcnn_blocks=counted(cfg['pixelcnn_depth'], 'masked block'))


def baseline_reading(m):
    """The unremedied 6e configuration alone: its numbers, its early epochs and its KL after the switch."""
    v, trend = m['values'], kl_trend(m)
    text = (f'Run: {run_settings(m)}. After {m["epochs"]} epochs the test −ELBO is {with_n(v["test_elbo"])}'
            + (f' and the importance-sampled NLL {with_n(v[is_q(m)])}' if is_q(m) else '') + f'. {early_plateau(m)}')
    text += '[[fig:6e-baseline-kl]] plots its KL term against training iteration. ' if has_kl_plot(m) else ''
    return text + (collapse_reading(m, trend) if trend else '')


def has_kl_plot(m):
    return os.path.exists(os.path.join(m['dir'], 'kl.png'))


def remedies_so_far(base, ms):
    """The remedies that have a run in base's profile, while not all of them have: what each changes,
    and its KL term and NLL against base ('' if none has)."""
    done = [next(m for m in ms.pool[p] if m['profile'] == base['profile']) for p in REMEDY_WORDS
            if any(m['profile'] == base['profile'] for m in getattr(ms, 'pool', {}).get(p, []))]
    if not done:
        return ''
    plotted = ('[[fig:6e-kl-preferred]] plots their KL terms and the baseline\'s against training iteration. '
               if os.path.exists(os.path.join(os.path.dirname(base['dir']), '6e_kl.png')) else '')
    return (f'{listed([m["part"] for m in done])} also ran at these settings: '
            + '; '.join(f'{m["part"]}, ' + REMEDY_WORDS[m['part']].format(**remedy_settings(cfg_of(m))) for m in done)
            + '. ' + plotted + remedy_costs([base] + done, base))


def answer_6e(ms):
    group = remedy_group(ms)
    base, preferred = group.get('6e-baseline'), ms['6e-baseline']
    if base is preferred:  # every remedy compared in the preferred baseline's profile: its reading, then theirs
        first = [('p', f'{stand_in(*group.values())}{baseline_reading(base)} {against_references(base, ms)}')]
        head, known = '', (base,)
    else:  # the preferred baseline and the remedies at its settings; the others compared in another profile
        missing = [p for p in REMEDIES if p not in ms or ms[p]['profile'] != preferred['profile']]
        first = [('p', t) for t in (f'{baseline_reading(preferred)} {against_references(preferred, ms)}',
                                    remedies_so_far(preferred, ms)) if t.strip()]
        base = base or next(iter(group.values()))
        head, known = (f'No course-settings run of {listed(missing)} yet, so the remedies are compared among the runs '
                       f'of the {base["profile"]} profile, where {listed(list(group))} ran. Run: {run_settings(base)}. '), ()
    parts = [p for p in REMEDIES if p in group]
    text = (f'{head}The remedies change one thing each: '
            + '; '.join(f'{p}: ' + REMEDY_WORDS[p].format(**remedy_settings(cfg_of(group[p]))) for p in REMEDY_WORDS if p in group)
            + '. Every number is the true ELBO (KL weight 1, no free bits) or the importance-sampled NLL, whatever '
              'objective a configuration trained ([[tab:6e]]). ')
    own = (figure(preferred['dir'], '6e-baseline-kl', ('kl',), f'{run_label(preferred)}: {KL_PLOT}')
           + (remedies_figure(preferred, '6e-kl-preferred') if base is not preferred and len(first) > 1 else []))
    return first + [('p', text + (remedies_reading([group[p] for p in parts], ms, known) or ''))] + own + \
        remedies_figure(base, '6e-kl')


def remedies_figure(base, label):
    """The figure of the KL terms of every 6e configuration that ran in base's run directory."""
    return figure(os.path.dirname(base['dir']), label, ('6e_kl',), f'PixelVAE with an IAF encoder (6e), '
                  f'{where(base)}, {precision_words(cfg_of(base)["precision"])}: the KL term of the training batches (moving mean over 50 iterations) against '
                  'training iteration, one line style and marker per configuration; dotted vertical line: the PixelCNN '
                  'is switched on. What to look for: whether a remedy keeps the KL term above the baseline\'s after the '
                  'switch, and whether the curves still fall when training stops.')


def remedy_costs(rows, base):
    """Each remedy against the baseline: its final test KL term, and its importance-sampled NLL (the cost)."""
    others = [m for m in rows if m is not base]
    if base is None or not others:
        return ''
    return ('Final test KL term against the baseline\'s: ' + ''.join(
        comparison(m, 'kl', base, 'kl', f'the remedy of {m["part"]}', REMEDY_KEYS)[0] for m in others)
        + ('As a multiple of the baseline\'s: ' + ', '.join(
            f'{m["part"]} {m["values"]["kl"]["value"] / base["values"]["kl"]["value"]:.2f}' for m in others) + '. '
           if base['values']['kl']['value'] > 0 else '')  # a baseline KL of 0: no multiple
        + 'What each remedy costs in likelihood, its importance-sampled NLL against the baseline\'s: ' + ''.join(
        comparison(m, is_q(m), base, is_q(base), f'the remedy of {m["part"]}', REMEDY_KEYS)[0] for m in others)
        + ''.join(remedy_verdict(m, base) for m in others))


def remedy_verdict(m, base):
    """One remedy against the baseline in words: its NLL lower, higher or not measurably different, its
    active dimensions, and what the ELBO alone would have said, with the bound's gap of each."""
    if not (is_q(m) and is_q(base)):
        return ''
    nll = contrast([(1, m, is_q(m)), (-1, base, is_q(base))])
    said = ('not measurably different from' if not measurable(nll) else
            f'{abs(nll["value"]):.2f} ± {nll["se"]:.2f} nats {"lower" if nll["value"] < 0 else "higher"} than')
    units = [m['values'].get('active_units'), base['values'].get('active_units')]
    text = (f'{m["part"]}: its NLL is {said} the baseline\'s'
            + (f', with {with_n(units[0])} dimensions active against {units[1]["value"]}' if all(units) else '') + '. ')
    elbo = contrast([(1, m, 'test_elbo'), (-1, base, 'test_elbo')])
    disagree = measurable(elbo) and (not measurable(nll) or (elbo['value'] > 0) != (nll['value'] > 0))
    if disagree:
        wider = contrast([(1, m, 'test_elbo'), (-1, m, is_q(m)), (-1, base, 'test_elbo'), (1, base, is_q(base))])
        text += (f'The ELBO alone says otherwise: −ELBO, {m["part"]} − {base["part"]}: {compared(elbo)}. The two '
                 f'disagree by the gap −ELBO − NLL, the KL(q(z|x) ‖ p(z|x)) that the bound pays: {compared(gap(m))} '
                 f'for {m["part"]}, {compared(gap(base))} for the baseline, a difference of {compared(wider)}. The '
                 f'bound of {m["part"]} is {"looser" if wider["value"] > 0 else "tighter"}: its −ELBO lies '
                 f'{"further above" if wider["value"] > 0 else "closer to"} its NLL than the baseline\'s does, and the '
                 'importance-sampled estimate, the tighter bound of the two (Problem 2), is the one that ranks them. ')
    return text


def against_references(best, refs):
    """The best configuration against the PixelVAE of 6c and the PixelCNN of 6a, as refs holds them."""
    text = ''
    for part, label, thing in (('6c', 'the PixelVAE of 6c', 'the IAF encoder'),
                               ('6a', 'the PixelCNN alone (6a), an exact NLL', 'the latent code')):
        ref = refs.get(part)
        if ref is None or ref is best or not (is_q(ref) or 'test_nll' in ref['values']):
            continue
        text += f'Against {label}: ' + comparison(best, is_q(best), ref, is_q(ref) or 'test_nll', thing,
                                                  keys=('flows', 'iaf_depth'))[0]
        same = alike(refs, part, best) if ref['profile'] != best['profile'] else None
        if same is not None and (is_q(same) or 'test_nll' in same['values']):
            text += f'In the {best["profile"]} profile, where both ran: ' + comparison(
                best, is_q(best), same, is_q(same) or 'test_nll', thing, keys=('flows', 'iaf_depth'))[0]
    return text


def remedies_reading(metrics, refs=None, known=()):
    """What the 6e numbers say: which configurations keep the latent in use (KL ≥ 1 nat, an active
    unit), what each remedy costs against the baseline, which in use has the lowest NLL, and how it
    compares with 6c and 6a (refs: {part: metrics}, else those among metrics), unless it is among
    known, the runs already set against them."""
    ms = {m['part']: m for m in metrics}
    refs = ms if refs is None else refs
    rows = [m for m in metrics if m['part'] in REMEDIES and is_q(m) and 'kl' in m['values']]
    if not rows:
        return None
    trends = [(m['part'], kl_trend(m)) for m in rows if kl_trend(m)]
    text = ('Final test KL term: ' + ', '.join(f'{m["part"]} {value_text(m["values"]["kl"])}' for m in rows) + ' nats. '
            + ('Training KL, mean of the 100 batches before the PixelCNN is switched on → of the last 100: '
               + ', '.join(f'{p} {t[0]:.1f} → {t[1]:.1f}' for p, t in trends) + ' nats. ' if trends else ''))
    base = ms.get('6e-baseline')
    text += remedy_costs(rows, base if base in rows else None)
    alive = [m for m in rows if m['values']['kl']['value'] >= 1 and m['values'].get('active_units', {}).get('value', 1)]
    if not alive:
        return text + 'No configuration kept the KL term at or above 1 nat: the latent collapsed in every run.'
    if base in alive:
        before, last, _ = kl_trend(base) or (0, 0, 0)
        text += 'The unremedied baseline itself still uses its latent when training stops' + (
            {'falling': ': its KL term is still falling, so these runs measure how far each remedy slows the fall, '
                        'not whether the latent ends unused. ',
             'flat': ': its KL term fell after the PixelCNN was switched on and levelled off above 1 nat, so these runs '
                     'measure how far each remedy raises the level it settles at, not whether the latent ends unused. ',
             'rising': ': its KL term fell after the PixelCNN was switched on and rose again, so these runs measure how '
                       'far each remedy raises the KL term, not whether the latent ends unused. '}.get(
                kl_end(base)[0], ': its KL term fell after the PixelCNN was switched on (how it moved at the end is not '
                                 'measured here, no per-epoch test KL), so these runs measure how far each remedy '
                                 'holds it up, not whether the latent ends unused. ') if last < before else '. ')
    best = min(alive, key=lambda m: m['values'][is_q(m)]['value'])
    text += (f'{len(alive)} of {len(rows)} keep the latent in use (KL ≥ 1 nat): {", ".join(m["part"] for m in alive)}. '
             f'Of these, {best["part"]} has the lowest importance-sampled NLL, {with_n(best["values"][is_q(best)])}. ')
    return text + ('' if best in known else against_references(best, refs)) + 'Published, for orientation: ' + ', '.join(
        f'{name} {nll:.2f} [[cite:{key}]]' for name, nll, key in LITERATURE[1::2]) + f'; {DATA_NOTE}.'


ANSWERS = [  # (heading, the parts an answer needs, the function that writes it)
    ('Problem 5a: ConvnetBlock', (), answer_5a),
    ('Problem 5b: Gaussian VAE, closed-form KL', ('5b',), answer_5b),
    ('Problem 5c: Monte-Carlo KL, against 5b', ('5b', '5c'), answer_5c),
    ('Problem 6a: PixelCNN', ('6a',), answer_6a),
    ('Problem 6b: binary VAE', ('6b',), answer_6b),
    ('Problem 6c: PixelVAE and posterior collapse', ('6c',), answer_6c),
    ('Problem 6d: IAF encoder', ('6b', '6d'), answer_6d),
    ('Problem 6e: preventing posterior collapse', ('6e-baseline',), answer_6e),
]
