"""The answers to the handout's questions (5a-6e), written from the runs' numbers: each states the
settings of the run it quotes beside the handout's, and compares parts over the same test images
with paired per-image differences (the standard error of the mean difference) when both saved
per_image.pt, else with the means and independent standard errors, said "unpaired". A difference
under two standard errors reads "no measurable difference".
"""
import os

from config import DEFAULTS, PARTS, config, with_defaults
from report import history, per_image, seen


REMEDIES = [p for p in PARTS if p.startswith('6e-')]


LATENT_DIMS = 49


CITES = {'vandenoord2016': 'van den Oord et al. 2016', 'gulrajani2016': 'Gulrajani et al. 2016',
         'kingma2016': 'Kingma et al. 2016', 'chen2017': 'Chen et al. 2017', 'bowman2016': 'Bowman et al. 2016',
         'sonderby2016': 'Sønderby et al. 2016'}


# Published test NLLs on binarized MNIST (nats), for orientation: (model, NLL, citation key).
LITERATURE = [('PixelCNN', 81.30, 'vandenoord2016'), ('PixelVAE', 79.66, 'gulrajani2016'),
              ('IAF VAE', 79.88, 'kingma2016'), ('VLAE', 79.03, 'chen2017')]



# The settings named where a run departs from the handout's (the `full` profile).
WORDS = dict(enc_capacity='encoder capacity', enc_depth='encoder depth', dec_capacity='decoder capacity',
             dec_depth='decoder depth', flows='IAF steps', iaf_depth='masked blocks per IAF step',
             pixelcnn_capacity='PixelCNN capacity',
             pixelcnn_depth='PixelCNN depth', epochs='epochs', autoregress_epoch='warm-up epochs before the PixelCNN',
             lr_drop_epoch=f'learning-rate drop to {DEFAULTS["lr_late"]:.0e} at epoch'.replace('e-0', 'e-'),
             kl_warmup='KL warm-up epochs', kl_warmup_start='KL warm-up from epoch', test_images='test images',
             is_images='test images for importance sampling', layout='network layout',
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


def difference(a, b):
    """a - b and its standard error, the two estimates taken as independent."""
    return a['value'] - b['value'], (a['stderr'] ** 2 + b['stderr'] ** 2) ** 0.5


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
    return abs(c['value']) >= 2 * c['se']


def how(c):
    return f'{"paired" if c["paired"] else "unpaired"}, {" and ".join(map(str, c["n"]))} test images'


def compared(c):
    """A difference in words: '+1.20 ± 0.30 nats (paired, 1000 test images)', or 'no measurable
    difference (...)' when it is under two standard errors."""
    number = f'{c["value"]:+.2f} ± {c["se"]:.2f} nats'
    if measurable(c):
        return f'{number} ({how(c)})'
    return f'no measurable difference ({number}, {how(c)}; under 2 standard errors)'


ONLY = {'is_images': 'binary_vae', 'init_output_bias': 'gaussian_vae'}  # settings that matter to one kind only


def relevant(key, cfg):
    """Whether a setting of WORDS matters to the part's kind of model."""
    if key in ONLY:
        return cfg['model'] == ONLY[key]
    if key == 'iaf_depth':
        return cfg['flows'] > 0
    if cfg['model'] == 'pixelcnn':
        return not key.startswith(('enc_', 'dec_', 'flows', 'autoregress', 'kl_'))
    return cfg['autoregress'] or not key.startswith(('pixelcnn_', 'autoregress'))


def shown(key, value):
    """A setting's value in words: None is 'all' (images) or 'none' (no learning-rate drop)."""
    return ('none' if key == 'lr_drop_epoch' else 'all') if value is None else value


def departures(cfg, ref, skip=(), word='handout'):
    """'setting value (handout value)' for each setting of WORDS where cfg departs from ref."""
    return [f'{WORDS[k]} {shown(k, cfg.get(k))} ({word} {shown(k, ref[k])})' for k in WORDS
            if k not in skip and relevant(k, cfg) and cfg.get(k) != ref[k]]


def precision_words(precision):
    return 'bfloat16 training, float32 evaluation' if precision == 'bf16' else 'float32'


def trained_apart(m, ref):
    """', trained in float32' (or bfloat16) where ref was trained in another precision than m, else ''."""
    p, q = (with_defaults(x.get('config') or {})['precision'] for x in (m, ref))
    return '' if p == q else f', trained in {"bfloat16" if q == "bf16" else "float32"}'


def run_settings(m, ref=None):
    """The settings of the run a number comes from, against the handout's; with ref (another part
    of the same run), only how m's settings differ from ref's."""
    cfg = with_defaults(m.get('config') or {})
    if ref is not None:
        diffs = departures(cfg, with_defaults(ref.get('config') or {}), word=ref['part'])
        return (f'{m["part"]}: ' + (', '.join(diffs) if diffs else f'the same settings as {ref["part"]}')
                + trained_apart(ref, m))
    diffs = departures(cfg, config(m['part'], 'full'))
    return (f'{m["part"]} in the {m["profile"]} profile, {precision_words(cfg["precision"])}, '
            f'{m.get("hardware", m.get("device", ""))}; ' + (', '.join(diffs) if diffs else "the handout's settings"))


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


def answer_5b(ms):
    m = ms['5b']
    v, sigma = m['values'], with_defaults(m.get('config') or {})['sigma']
    weight = 1 / (2 * sigma ** 2)
    text = (f'Run: {run_settings(m)}. Test −ELBO {with_n(v["test_elbo"])} nats per image. [[fig:5b]] shows the '
            f'samples, decoder means g(z) for z ~ N(0, I), beside test images and their reconstructions. ')
    samples, recons = (seen(os.path.join(m['dir'], f'{k}.png')) for k in ('samples', 'reconstructions'))
    if samples:
        text += f'The samples are {samples}' + (f'; the reconstructions are {recons}' if recons else '') + '. '
    text += ('Why they are not digits' if samples and 'not digits' in samples else 'What shapes them') + (
        f': with σ = {sigma:g} the reconstruction term weighs squared error by 1/(2σ²) ≈ {weight:.0f} nats per unit, '
        f'so a nat of KL pays for itself once it lowers an image\'s squared error by {1 / weight:.4f}. ')
    if 'test_recon' in v and 'kl' in v:
        sq, kl = v['test_recon']['value'] * 2 * sigma ** 2, v['kl']
        au = v.get('active_units')
        text += (f'The measured reconstruction term, {value_text(v["test_recon"])} nats, is a squared error of '
                 f'{sq:.2f} per image ({(sq / 784) ** 0.5:.3f} per pixel, root mean square), and the encoder spends '
                 f'KL freely: {value_text(kl)} nats per image, {kl["value"] / LATENT_DIMS:.2f} per latent dimension, '
                 + (f'{au["value"]} of {LATENT_DIMS} dimensions active' if au else 'active units not measured'))
        if 'kl' in ms.get('6b', {}).get('values', {}):
            kl = ms['6b']['values']['kl']
            text += (f' (the binary VAE of 6b, whose reconstruction term is a cross-entropy: {value_text(kl)}, '
                     f'{kl["value"] / LATENT_DIMS:.2f} per dimension)')
        text += '. '
    return [('p', text + 'Codes that cost that many nats pin each training image to its own small region of the '
                         'latent space; the decoder only ever sees codes drawn from those posteriors, so a typical '
                         'draw from the prior can land where no image\'s code lies and decode to whatever lies between '
                         'digits. How much of the prior the posteriors cover is not measured here (it would take, e.g., '
                         'the KL from the aggregate posterior to the prior). A larger σ weighs squared error less and '
                         'lets the KL term shrink, at the price of blurrier reconstructions; no run here measures that.')
            ] + vae_figure(m, 'decoder means g(z) for z ~ N(0, I)')


def answer_5c(ms):
    b, c = ms['5b'], ms['5c']
    d = contrast([(1, c, 'test_elbo'), (-1, b, 'test_elbo')])
    text = (f'Run: {run_settings(c)}; {run_settings(b, c)}. Trained with the one-sample Monte-Carlo KL and evaluated '
            f'with the closed-form one, the test −ELBO of 5c is {with_n(c["values"]["test_elbo"])}; that of 5b is '
            f'{with_n(b["values"]["test_elbo"])}. 5c − 5b: {compared(d)}. ')
    if 'test_elbo_mc' in b['values']:
        e = contrast([(1, b, 'test_elbo_mc'), (-1, b, 'test_elbo')])
        text += (f'Evaluated with the Monte-Carlo KL on the same draws of z, 5b gives '
                 f'{value_text(b["values"]["test_elbo_mc"])}; against the closed form: {compared(e)}, '
                 + ('a measurable difference, which an unbiased estimator should not show. ' if measurable(e) else
                    'consistent with an unbiased estimator. '))
    text += 'Both runs train the same objective in expectation; the Monte-Carlo KL only adds variance to the gradient. '
    if not measurable(d):
        text += 'At this budget that variance leaves no measurable mark on the test bound.'
    else:
        text += (f'The Monte-Carlo run ends with the {"worse" if d["value"] > 0 else "better"} test bound' +
                 ('; with one run per estimator (one seed) the spread between runs is not measured, so this is a '
                  'single draw.' if d['value'] > 0 else '. Extra variance does not explain that, and with one run per '
                  'estimator (one seed) the spread between runs is not measured, so this does not show that either '
                  'estimator trains better.'))
    return [('p', text + ' Samples: [[fig:5c]].')] + vae_figure(c, 'decoder means g(z) for z ~ N(0, I)')


def answer_6a(ms):
    m = ms['6a']
    v, h = m['values']['test_nll'], history(m)
    name, nll, key = LITERATURE[0]
    text = (f'Run: {run_settings(m)}. Test NLL, exact: {with_n(v)} nats per image, {v["value"] - nll:.1f} above the '
            f'published {name}, {nll:.2f} [[cite:{key}]] (their network and training differ). ')
    if h and h.get('test_loss'):
        n, losses = with_defaults(m.get('config') or {})['monitor_images'], h['test_loss']
        every = 1 if len(losses) <= 10 else 5   # epochs 1, 5, 10, ... and the last, for long runs
        shown_epochs = sorted({1, len(losses)} | set(range(every, len(losses) + 1, every)))
        text += (f'The NLL on {f"the first {n}" if n else "all"} test images after '
                 + ('each epoch: ' + ' → '.join(f'{x:.2f}' for x in losses) if every == 1 else
                    'epochs ' + ', '.join(f'{e}: {losses[e - 1]:.2f}' for e in shown_epochs))
                 + ' ([[fig:6a-loss]]). ')
    return [('p', text + schedule_reading(m) + 'Samples, drawn pixel by pixel: [[fig:6a]].')] + figure(
        m['dir'], '6a', ('samples',), '49 samples x ~ p(x) of the PixelCNN (6a), drawn pixel by pixel in raster '
                                      'order. What to look for: strokes that stay connected across rows; whole digits.'
    ) + figure(m['dir'], '6a-loss', ('loss',), 'PixelCNN (6a): training NLL per iteration (faint: each batch; line: '
                                               'moving mean) and test NLL at the end of each epoch. What to look for: '
                                               'whether the test NLL is still falling when training stops.')


def schedule_reading(m):
    """What the test NLL after each epoch says about the learning-rate drop and the epochs: its value
    after the last epoch at the first rate, after the last epoch, and its mean fall per epoch over the
    last five; '' without a drop inside the run or a history that covers it."""
    cfg, losses = m.get('config') or {}, (history(m) or {}).get('test_loss') or []
    drop = cfg.get('lr_drop_epoch')
    if not drop or not 5 <= len(losses) or not drop < len(losses):
        return ''
    before, last = losses[drop - 1], losses[-1]    # losses[k]: after epoch k + 1; epochs >= drop train at lr_late
    slope = (losses[-5] - last) / 4
    return (f'The learning rate fell from {cfg["lr"]:g} to {cfg["lr_late"]:g} after epoch {drop}: the test NLL was '
            f'{before:.2f} then and {last:.2f} after epoch {len(losses)}, {before - last:.2f} lower; over the last '
            f'five epochs it fell by {slope:.2f} nats per epoch. ')


def answer_6b(ms):
    m = ms['6b']
    v = m['values']
    text = (f'Run: {run_settings(m)}. Test NLL by importance sampling: {with_n(v[is_q(m)])} nats per image. Test '
            f'−ELBO {with_n(v["test_elbo"])}; −ELBO − NLL: {compared(gap(m))}. KL term {value_text(v["kl"])} nats, '
            f'{with_n(v.get("active_units")) or "an unmeasured number"} latent dimensions active.')
    return [('p', text + ' Samples and reconstructions: [[fig:6b]].')] + vae_figure(
        m, 'Bernoulli means of p(x|z) for z ~ N(0, I)')


def kl_trend(m):
    """(mean KL of the 100 training batches before the PixelCNN is switched on, of the last 100, the switch step)."""
    h = history(m)
    if not (h and h.get('autoregress_step')):
        return None
    a, kl = h['autoregress_step'], h['kl']
    return sum(kl[max(0, a - 100):a]) / len(kl[max(0, a - 100):a]), sum(kl[-100:]) / len(kl[-100:]), a


def gap_reading(m):
    """What the ELBO–NLL gap of a PixelVAE says, set against its KL term; '' without a measurable gap."""
    g, kl = gap(m), m['values']['kl']['value']
    if not (measurable(g) and kl > 0):
        return ''
    return (f'At finite M the importance-sampled estimate is itself an upper bound on the NLL, so this gap understates '
            f'that divergence. It is {g["value"] / kl:.0%} of the KL term of the bound ({kl:.2f} nats). As the posterior '
            f'collapses, q(z|x) and p(z|x) both approach p(z) and the bound tightens with the cost of the code; the gap '
            f'that remains is what the diagonal Gaussian q(z|x) misses of the posterior under the PixelCNN decoder. ')


def same_epochs(m, a):
    """Where the PixelCNN of 6a trained for more epochs than the PixelVAE m: its test NLL after m's
    number of epochs, from its history; '' otherwise."""
    losses, e = (history(a) or {}).get('test_loss') or [], m['epochs']
    if not e < len(losses):
        return ''
    cfg = with_defaults(a.get('config') or {})
    drop = cfg['lr_drop_epoch']
    n = cfg['monitor_images']
    return (f' 6a trained {len(losses)} epochs and 6c {e}. On {f"the first {n}" if n else "all"} test images (one '
            f'evaluation per epoch, in its history) the NLL of 6a was {losses[e - 1]:.2f} after epoch {e}'
            + (', before its learning-rate drop,' if drop and e <= drop else '')
            + f' and {losses[-1]:.2f} after epoch {len(losses)}: its further epochs gained it '
            f'{losses[e - 1] - losses[-1]:.2f} nats.')


def answer_6c(ms):
    m = ms['6c']
    v, trend = m['values'], kl_trend(m)
    text = (f'Run: {run_settings(m)}. After {m["epochs"]} epochs the test −ELBO is {with_n(v["test_elbo"])} and the '
            f'importance-sampled NLL {with_n(v[is_q(m)])}; −ELBO − NLL, the KL(q(z|x) ‖ p(z|x)) that the bound '
            f'pays and M samples recover: {compared(gap(m))}. {gap_reading(m)}[[fig:6c-kl]] plots the KL term '
            f'against training iteration. ')
    if trend:
        before, last, step = trend
        text += (f'Over the 100 training batches before the PixelCNN is switched on (iteration {step}) it averages '
                 f'{before:.1f} nats per image, over the last 100 {last:.1f} (a ratio of {last / before:.2f}; a '
                 f'fall to a quarter or less is the collapse the handout asks to observe); on the test set it ends at '
                 f'{value_text(v["kl"])}, {with_n(v.get("active_units")) or "an unmeasured number of"} dimensions '
                 f'active. ')
        if last < before:
            text += ('Once the decoder predicts each pixel from the pixels above and to its left, the latent code is '
                     'worth less than it costs and the posterior moves towards the prior: posterior collapse, '
                     + ('complete.' if v['kl']['value'] < 1 else 'still under way when training stops.'))
    if '6a' in ms:  # the same profile: the PixelCNN alone at the same settings
        c = contrast([(1, m, is_q(m)), (-1, ms['6a'], 'test_nll')])
        verdict = ('.' if not measurable(c) else
                   ', lower: with its latent code the PixelVAE models the test images better than the PixelCNN alone.'
                   if c['value'] < 0 else ', higher: the PixelVAE models the test images worse than the PixelCNN alone.')
        text += (f' Against the exact NLL of the PixelCNN alone at the same settings (6a{trained_apart(m, ms["6a"])}: '
                 f'{with_n(ms["6a"]["values"]["test_nll"])}), its importance-sampled NLL differs by {compared(c)}{verdict}'
                 + same_epochs(m, ms['6a']))
    return [('p', text + ' Samples and reconstructions: [[fig:6c]].')] + figure(
        m['dir'], '6c-kl', ('kl',), 'PixelVAE (6c): the KL term of the ELBO against training iteration: each training '
                                    'batch (faint), their moving mean, the test value at the end of each epoch, and the '
                                    'iteration at which the PixelCNN is switched on (dashed). What to look for: the '
                                    'fall after the switch, posterior collapse.') + vae_figure(
        m, 'x ~ p(x|z) drawn pixel by pixel, z ~ N(0, I)', ' With the PixelCNN on, reconstructions are samples too: a '
                                                           'code that no longer pins the digit down shows as a '
                                                           'reconstruction of another shape.')


def answer_6d(ms):
    b, d = ms['6b'], ms['6d']
    tight = contrast([(1, b, 'test_elbo'), (-1, b, is_q(b)), (-1, d, 'test_elbo'), (1, d, is_q(d))])
    flows = with_defaults(d.get('config') or {})['flows']
    text = (f'Run: {run_settings(d)}; {run_settings(b, d)}. With {flows} IAF steps in the encoder the '
            f'importance-sampled NLL is {with_n(d["values"][is_q(d)])} against {with_n(b["values"][is_q(b)])} for the '
            f'diagonal Gaussian encoder of 6b; 6d − 6b: {compared(contrast([(1, d, is_q(d)), (-1, b, is_q(b))]))}. '
            f'The gap −ELBO − NLL, the KL(q(z|x) ‖ p(z|x)) that the bound pays: {compared(gap(d))} for 6d, '
            f'{compared(gap(b))} for 6b. ')
    others = [w for k, w in (('layout', 'the networks\' layout and initialisation'), ('epochs', 'the number of epochs'),
                             ('lr_drop_epoch', 'the learning-rate schedule'))
              if with_defaults(b.get('config') or {})[k] != with_defaults(d.get('config') or {})[k]]
    if others:
        listed = ' and '.join(others) if len(others) < 3 else f'{", ".join(others[:-1])} and {others[-1]}'
        text += f'The two runs also differ in {listed}: these differences are not the encoder\'s alone. '
    if measurable(tight):
        text += (f'With the flow the bound is {"tighter" if tight["value"] > 0 else "looser"}, here by '
                 f'{abs(tight["value"]):.2f} ± {tight["se"]:.2f} nats ({how(tight)}). ')
    else:
        text += f'Whether the flow tightens the bound is not resolved here: {compared(tight)}. '
    name, nll, key = LITERATURE[2]
    return [('p', text + f'Published, for orientation: {name} {nll:.2f} [[cite:{key}]]. Samples: [[fig:6d]].')] + \
        vae_figure(d, 'Bernoulli means of p(x|z) for z ~ N(0, I)')


REMEDY_WORDS = {
    '6e-warmup': 'KL warm-up, the weight of the KL term rising from 0 to 1 over {kl_warmup} epoch(s) from epoch '
                 '{kl_warmup_start} [[cite:bowman2016]] [[cite:sonderby2016]]',
    '6e-freebits': 'free bits, training on the sum over latent dimensions of max(λ, batch-mean KL), λ = {free_bits} '
                   'nats [[cite:kingma2016]]',
    '6e-weak': 'a weak PixelCNN of {pixelcnn_depth} masked block(s), a receptive field of a few rows [[cite:chen2017]]'}


def answer_6e(ms):
    base = ms['6e-baseline']
    text = (f'Run: {run_settings(base)}. The remedies change one thing each: ' + '; '.join(
        f'{p}: ' + REMEDY_WORDS[p].format(**with_defaults(ms[p].get('config') or {})) for p in REMEDY_WORDS if p in ms)
        + '. Every number is the true ELBO (KL weight 1, no free bits) or the importance-sampled NLL, whatever '
          'objective a configuration trained ([[tab:6e]]). ')
    return [('p', text + (remedies_reading(list(ms.values())) or ''))] + figure(
        os.path.dirname(base['dir']), '6e-kl', ('6e_kl',), 'PixelVAE with an IAF encoder (6e): the KL term of the '
        'training batches (moving mean over 50 iterations) against training iteration, one line style and marker per '
        'configuration; dotted vertical line: the PixelCNN is switched on. What to look for: whether a remedy keeps '
        'the KL term above the baseline\'s after the switch, and whether the curves still fall when training stops.')


def remedies_reading(metrics):
    """What the 6e numbers say: which configurations keep the latent in use (KL ≥ 1 nat, an active
    unit), which of those has the lowest NLL, and how it compares with the baseline, 6c and 6a."""
    ms = {m['part']: m for m in metrics}
    rows = [m for m in metrics if m['part'] in REMEDIES and is_q(m) and 'kl' in m['values']]
    if not rows:
        return None
    trends = [(m['part'], kl_trend(m)) for m in rows if kl_trend(m)]
    text = ('Final test KL term: ' + ', '.join(f'{m["part"]} {value_text(m["values"]["kl"])}' for m in rows) + ' nats. '
            + ('Training KL, mean of the 100 batches before the PixelCNN is switched on → of the last 100: '
               + ', '.join(f'{p} {t[0]:.1f} → {t[1]:.1f}' for p, t in trends) + ' nats. ' if trends else ''))
    base = ms.get('6e-baseline')
    if base in rows and len(rows) > 1:
        text += 'Final test KL against the baseline\'s: ' + ', '.join(
            f'{m["part"]} {compared(contrast([(1, m, "kl"), (-1, base, "kl")]))}' for m in rows if m is not base) + '. '
    alive = [m for m in rows if m['values']['kl']['value'] >= 1 and m['values'].get('active_units', {}).get('value', 1)]
    if not alive:
        return text + 'No configuration kept the KL term at or above 1 nat: the latent collapsed in every run.'
    if base in alive:
        before, last, _ = kl_trend(base) or (0, 0, 0)
        falling = last < before
        text += ('The unremedied baseline itself still uses its latent when training stops' + (
            ': its KL term is still falling, so these runs measure how far each remedy slows the fall, not whether '
            'the latent ends unused. ' if falling else '. '))
    best = min(alive, key=lambda m: m['values'][is_q(m)]['value'])
    text += (f'{len(alive)} of {len(rows)} keep the latent in use (KL ≥ 1 nat): {", ".join(m["part"] for m in alive)}. '
             f'Of these, {best["part"]} has the lowest importance-sampled NLL, {with_n(best["values"][is_q(best)])}. ')
    for part, label in (('6e-baseline', 'the unremedied baseline'), ('6c', 'the PixelVAE of 6c'),
                        ('6a', 'the PixelCNN alone (6a)')):
        ref = ms.get(part)
        if ref is not None and ref is not best and (is_q(ref) or 'test_nll' in ref['values']):
            c = contrast([(1, best, is_q(best)), (-1, ref, is_q(ref) or 'test_nll')])
            text += f'Against {label}{trained_apart(best, ref)}: {compared(c)}. '
    return text + 'Published, for orientation: ' + ', '.join(
        f'{name} {nll:.2f} [[cite:{key}]]' for name, nll, key in LITERATURE[1::2]) + '.'


ANSWERS = [  # (heading, the parts an answer needs from one profile, the function that writes it)
    ('Problem 5a: ConvnetBlock', (), answer_5a),
    ('Problem 5b: Gaussian VAE, closed-form KL', ('5b',), answer_5b),
    ('Problem 5c: Monte-Carlo KL, against 5b', ('5b', '5c'), answer_5c),
    ('Problem 6a: PixelCNN', ('6a',), answer_6a),
    ('Problem 6b: binary VAE', ('6b',), answer_6b),
    ('Problem 6c: PixelVAE and posterior collapse', ('6c',), answer_6c),
    ('Problem 6d: IAF encoder', ('6b', '6d'), answer_6d),
    ('Problem 6e: preventing posterior collapse', ('6e-baseline',), answer_6e),
]
