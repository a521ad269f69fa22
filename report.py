"""The results write-up of CSE 599i Homework 2, generated from the runs' files: every number and
figure comes from results/<profile>[-<precision>]/<part>/ (metrics.json, per_image.pt, history.json
and the PNGs), never typed by hand.

    python report.py     # README.md's generated sections, docs/speed.md, analysis/results.tex
    python report.py --results-dir results --readme README.md --tex analysis/results.tex

The chapter is built once as a list of blocks, ('h', title), ('p', text), ('table', label,
caption, header, rows, LaTeX columns) and ('fig', label, paths, caption), and written twice: as
Markdown into the README and as LaTeX into analysis/results.tex (`make -C analysis`). Texts mark
references as [[fig:x]], [[tab:x]] and [[cite:key]] (keys of analysis/hw2.tex's bibliography).

Two parts are compared over the same test images, paired, when both saved per-image values
(per_image.pt): the standard error is that of the mean per-image difference. Otherwise the
comparison uses the means and independent standard errors and says "unpaired". A difference under
two standard errors reads "no measurable difference".
"""
import argparse
import hashlib
import json
import os
import re
import shlex

from config import (DEFAULTS, PARTS, PRECISIONS, PROFILES, REASONS, TITLES, config, pick_device, pick_profile,
                    quantities, quantity_label, run_dir, with_defaults)
from data import write_json

REMEDIES = [p for p in PARTS if p.startswith('6e-')]
LATENT_DIMS = 49
BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'
MAP_BEGIN, MAP_END = '<!-- map:begin -->', '<!-- map:end -->'
GPU_BEGIN, GPU_END = '<!-- gpu:begin -->', '<!-- gpu:end -->'
SPEED_BEGIN, SPEED_END = '<!-- speed:begin -->', '<!-- speed:end -->'
CITES = {'vandenoord2016': 'van den Oord et al. 2016', 'gulrajani2016': 'Gulrajani et al. 2016',
         'kingma2016': 'Kingma et al. 2016', 'chen2017': 'Chen et al. 2017', 'bowman2016': 'Bowman et al. 2016',
         'sonderby2016': 'Sønderby et al. 2016'}
# Published test NLLs on binarized MNIST (nats), for orientation: (model, NLL, citation key).
LITERATURE = [('PixelCNN', 81.30, 'vandenoord2016'), ('PixelVAE', 79.66, 'gulrajani2016'),
              ('IAF VAE', 79.88, 'kingma2016'), ('VLAE', 79.03, 'chen2017')]
# What a figure shows, as seen by eye, keyed by the first 16 hex digits of the file's SHA-256: it
# applies to that file only, so a rerun's figures are described once somebody has looked at them.
SEEN = {'4168688abb451e3b': 'strokes and squiggles, not digits', 'f40cf9fc9c20e756': 'the test digits above them',
        '39dff568c5a83884': 'strokes and squiggles, not digits', '35ab3a552961661e': 'the test digits above them',
        '97e2ee1b0e589328': 'connected pen strokes, a few of them recognisable digits',
        '0ea1ddfca15d8135': 'blurred, mostly recognisable digits',
        'cc63255cb878d9dc': 'the first four are their test digits; several of the last six are another shape'}
# The settings named where a run departs from the handout's (the `full` profile).
WORDS = dict(enc_capacity='encoder capacity', enc_depth='encoder depth', dec_capacity='decoder capacity',
             dec_depth='decoder depth', flows='IAF steps', pixelcnn_capacity='PixelCNN capacity',
             pixelcnn_depth='PixelCNN depth', epochs='epochs', autoregress_epoch='warm-up epochs before the PixelCNN',
             lr_drop_epoch=f'learning-rate drop to {DEFAULTS["lr_late"]:.0e} at epoch'.replace('e-0', 'e-'),
             kl_warmup='KL warm-up epochs', kl_warmup_start='KL warm-up from epoch', test_images='test images',
             is_images='test images for importance sampling', layout='network layout',
             init_output_bias='Gaussian output bias at the mean image')
# The handout's items: (item, what it asks, parts and quantities that answer it, figure, (notebook,
# text of the cell that runs it, its parameters), where the implementation or the proof is).
HOMEWORK = [
    ('5a', 'implement ConvnetBlock', (), (), None, None, '`models.ConvnetBlock`'),
    ('5b', 'Gaussian VAE, closed-form KL: samples', ('5b',), ('test_elbo', 'kl'), 'samples',
     ('gaussian_vae.ipynb', "run_part('5b'", ''),
     '`losses.gaussian_elbo`, `models.VAEEncoder.reparameterize`, `models.GaussianVAEDecoder`'),
    ('5c', 'Monte-Carlo KL: test ELBO, against 5b', ('5c',), ('test_elbo',), 'samples',
     ('gaussian_vae.ipynb', "compare(['5b'", ''), '`losses.mc_gaussian_elbo`'),
    ('6a', 'PixelCNN: test log-likelihood', ('6a',), ('test_nll',), 'samples', ('pixelcnn.ipynb', "run_part('6a'", ''),
     '`models.MaskedConv2d`, `models.MaskedConvnetBlock`, `models.PixelCNN`, `losses.cross_entropy`'),
    ('6b', 'binary VAE: test NLL, importance sampling', ('6b',), ('test_nll_is',), 'samples',
     ('binaryvae.ipynb', 'run_part(part', ', autoregress = False, flows = 0'),
     '`losses.discrete_output_elbo`, `evaluate.importance_sampled_nll`'),
    ('6c', 'PixelVAE: test ELBO against NLL; KL against iteration', ('6c',), ('test_elbo', 'test_nll_is', 'kl'), 'kl',
     ('binaryvae.ipynb', 'run_part(part', ', autoregress = True'),
     '`models.DiscreteVAEDecoder`, `train.Training.start_epoch`, `figures.kl_figure`'),
    ('6d', 'IAF encoder: test NLL', ('6d',), ('test_nll_is',), 'samples',
     ('binaryvae.ipynb', 'run_part(part', ', flows = 8'), '`models.IAF`, `models.VAEEncoder.reparameterize`'),
    ('6e', 'PixelVAE + IAF: prevent posterior collapse?', tuple(REMEDIES), ('kl',), '6e_kl',
     ('binaryvae.ipynb', 'run_part(part', ', remedy = "baseline", "warmup", "freebits" or "weak"'),
     '`train.kl_weight`, `train.free_bits_kl`, `config.PARTS`, `report.show_remedies`'),
    ('Problem 1', 'KL between Gaussians', (), (), None, None, '`analysis/p1_kl.tex`; used in `losses.gaussian_elbo`'),
    ('Problem 2', 'importance sampling is biased, consistent', (), (), None, None,
     '`analysis/p2_importance_sampling.tex`; used in `evaluate.importance_sampled_nll`'),
    ('Problem 3', 'density of a normalizing flow', (), (), None, None,
     '`analysis/p3_flows.tex`; used in `models.VAEEncoder.reparameterize`'),
    ('Problem 4', 'entropy gradient estimator', (), (), None, None,
     '`analysis/p4_entropy_gradient.tex`; checked numerically in `tests/test_analysis.py`'),
]


# ---------------------------------------------------------------------------------------------
# Reading the runs' files

def read_json(path):
    """A JSON file of the results (metrics.json, summary.json), with an error that names it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} cannot be read ({type(err).__name__}: {err}); restore it with git '
                         f'(`git checkout -- {path}`) or delete the part\'s directory and rerun it') from err


def load_metrics(results_dir):
    """The metrics.json of every finished part of one run directory, in handout order; each with
    'dir', the part's directory (per_image.pt, history.json and the figures lie there)."""
    return [dict(read_json(os.path.join(results_dir, p, 'metrics.json')), dir=os.path.join(results_dir, p))
            for p in PARTS if os.path.exists(os.path.join(results_dir, p, 'metrics.json'))]


def part_metrics(results_dir, profile, part, precision='fp32'):
    """The metrics of a finished part (None if it has not finished); profile 'auto' is resolved
    from the device, as run_part does."""
    profile = pick_profile(profile, pick_device(None), quiet=True)
    path = os.path.join(run_dir(results_dir, profile, precision), part, 'metrics.json')
    return read_json(path) if os.path.exists(path) else None


def run_dirs(results_dir):
    """The run directories under results_dir that hold a finished part: [(path, profile, precision)]."""
    found = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        profile, _, precision = name.partition('-')
        if profile in PROFILES and (precision or 'fp32') in PRECISIONS and any(
                os.path.exists(os.path.join(results_dir, name, p, 'metrics.json')) for p in PARTS):
            found.append((os.path.join(results_dir, name), profile, precision or 'fp32'))
    return found


def load_runs(results_dir):
    """Every run directory with a finished part, the course settings (`full`) first:
    [{name, profile, precision, path, parts: {part: metrics}}]."""
    runs = [dict(name=os.path.basename(path), profile=profile, precision=precision, path=path,
                 parts={m['part']: m for m in load_metrics(path)}) for path, profile, precision in run_dirs(results_dir)]
    return sorted(runs, key=lambda r: (list(PROFILES).index(r['profile']), PRECISIONS.index(r['precision'])))


def per_image(m):
    """{quantity: float64 tensor over the first n test images} from the part's per_image.pt ({} if none)."""
    path = os.path.join(m['dir'], 'per_image.pt') if 'dir' in m else None
    if path is None or not os.path.exists(path):
        return {}
    import torch
    return torch.load(path, weights_only=True)


def history(m):
    """The part's history.json (per-iteration training curves), or None."""
    path = os.path.join(m['dir'], 'history.json') if 'dir' in m else None
    return read_json(path) if path and os.path.exists(path) else None


def seen(path):
    """What SEEN says the figure file shows, or None."""
    return SEEN.get(hashlib.sha256(open(path, 'rb').read()).hexdigest()[:16]) if os.path.exists(path) else None


# ---------------------------------------------------------------------------------------------
# Notebook displays and the per-run summaries (summary.md, summary.json)

def show(part, results_dir='results', profile='auto', precision='fp32'):
    """Display a part's metrics and all its figures in a notebook."""
    show_finished([part], results_dir, profile, figures=None, precision=precision)


def compare(parts, results_dir='results', profile='auto', precision='fp32'):
    """Display the metrics of several finished parts as one table in a notebook."""
    show_finished(parts, results_dir, profile, figures=(), precision=precision)


def show_finished(parts, results_dir='results', profile='auto', figures=('samples', 'kl'), precision='fp32'):
    """Display one table of every part among `parts` that has finished, then the named figures of
    each (None: all of them); a part that has not run is named, not an error."""
    from IPython.display import Image, Markdown, display
    done = [m for m in (part_metrics(results_dir, profile, p, precision) for p in parts) if m is not None]
    missing = [p for p in parts if p not in {m['part'] for m in done}]
    if missing:
        display(Markdown(f'Not finished in the {profile} profile in `{results_dir}`: {", ".join(missing)}.'))
    if done:
        display(Markdown(metrics_table(done)))
    for m in done if figures != () else []:
        display(Markdown(f'**{m["part"]}: {m["title"]}** ({m["profile"]} profile, {m["epochs"]} epochs)'))
        for path in (m['figures'].values() if figures is None else (m['figures'].get(k, '') for k in figures)):
            if os.path.exists(path):
                display(Image(filename=path))


def reproduce_command(m, quantity, results_dir):
    """The command that recomputes one reported number from the part's model.pt."""
    precision = m['config'].get('precision', 'fp32')
    return (f'python experiments.py eval {m["part"]} --quantity {quantity} --profile {m["profile"]}'
            + (f' --precision {precision}' if precision != 'fp32' else '')
            + (f' --results-dir {shlex.quote(results_dir)}' if results_dir != 'results' else '')
            + f' --device {m["device"]}')


def summary_rows(metrics, results_dir):
    """One entry per reported number of summary.json, with its reproduce command."""
    return [dict(part=m['part'], quantity=q, value=v['value'], stderr=v['stderr'], n_images=v['n_images'], M=v.get('M'),
                 profile=m['profile'], precision=m['config'].get('precision', 'fp32'), device=m['device'],
                 hardware=m.get('hardware', m['device']), epochs=m['epochs'], train_seconds=m['train_seconds'],
                 model=m['model'], reproduce=reproduce_command(m, q, results_dir))
            for m in metrics for q, v in ((q, m['values'][q]) for q in quantities(m['config']))]


def metrics_table(metrics, reported_only=False):
    lines = ['| part | what | quantity | value ± stderr | images | M | epochs | train time | profile, precision, '
             'hardware |', '|---|---|---|---|---|---|---|---|---|']
    for m in metrics:
        for q, v in m['values'].items():
            if not reported_only or q in quantities(m['config']):
                lines.append(f'| {m["part"]} | {m["title"]} | {q} | {value_text(v)} | {v["n_images"]} | '
                             f'{v.get("M") or ""} | {m["epochs"]} | {m["train_seconds"] / 60:.1f} min | {m["profile"]}, '
                             f'{m["config"].get("precision", "fp32")}, {m.get("hardware", m["device"])} |')
    return '\n'.join(lines)


def write_summary(results_dir='results', profile=None, precision='fp32'):
    """<run dir>/summary.md (a table) and <run dir>/summary.json (one entry per reported number, with
    its reproduce command), for the run directory of (profile, precision), or for every one."""
    dirs = run_dirs(results_dir) if profile is None else [(run_dir(results_dir, profile, precision), profile, precision)]
    metrics = []
    for path, _, _ in dirs:
        these = [read_json(os.path.join(path, p, 'metrics.json')) for p in PARTS
                 if os.path.exists(os.path.join(path, p, 'metrics.json'))]
        with open(os.path.join(path, 'summary.md'), 'w') as fh:
            fh.write('# Results\n\nNats per image, mean over test images ± standard error. test_elbo is the negative '
                     'ELBO (the training loss; lower is better); test_nll is -log p(x), exact for the PixelCNN; '
                     'test_nll_is<M> is -log p(x) estimated by importance sampling with M samples; kl is the '
                     'KL term of the ELBO; active_units counts latent dimensions with Var_x E_q[z_d] > 0.01.\n\n')
            fh.write(metrics_table(these, reported_only=True) + '\n')
        write_json(os.path.join(path, 'summary.json'), summary_rows(these, results_dir), indent=1)
        metrics += these
    return metrics


# ---------------------------------------------------------------------------------------------
# Numbers in words: values, settings, paired comparisons

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


def run_settings(m, ref=None):
    """The settings of the run a number comes from, against the handout's; with ref (another part
    of the same run), only how m's settings differ from ref's."""
    cfg = with_defaults(m.get('config') or {})
    if ref is not None:
        diffs = departures(cfg, with_defaults(ref.get('config') or {}), word=ref['part'])
        return f'{m["part"]}: ' + (', '.join(diffs) if diffs else f'the same settings as {ref["part"]}')
    diffs = departures(cfg, config(m['part'], 'full'))
    return (f'{m["part"]} in the {m["profile"]} profile, {precision_words(cfg["precision"])}, '
            f'{m.get("hardware", m.get("device", ""))}; ' + (', '.join(diffs) if diffs else "the handout's settings"))


def run_name(r):
    """A run directory in a column header: 'course settings, float32', 'cpu profile, bf16 training'."""
    precision = 'bf16 training' if r['precision'] == 'bf16' else 'float32'
    return f'{"course settings" if r["profile"] == "full" else r["profile"] + " profile"}, {precision}'


# ---------------------------------------------------------------------------------------------
# The answers, one per handout item, each from one run directory's parts ({part: metrics})

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
        text += (f'The NLL on the first {with_defaults(m.get("config") or {})["monitor_images"] or "all"} test images '
                 f'after each epoch: ' + ' → '.join(f'{x:.2f}' for x in h['test_loss']) + ' ([[fig:6a-loss]]). ')
    return [('p', text + 'Samples, drawn pixel by pixel: [[fig:6a]].')] + figure(
        m['dir'], '6a', ('samples',), '49 samples x ~ p(x) of the PixelCNN (6a), drawn pixel by pixel in raster '
                                      'order. What to look for: strokes that stay connected across rows; whole digits.'
    ) + figure(m['dir'], '6a-loss', ('loss',), 'PixelCNN (6a): training NLL per iteration (faint: each batch; line: '
                                               'moving mean) and test NLL at the end of each epoch. What to look for: '
                                               'whether the test NLL is still falling when training stops.')


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


def answer_6c(ms):
    m = ms['6c']
    v, trend = m['values'], kl_trend(m)
    text = (f'Run: {run_settings(m)}. After {m["epochs"]} epochs the test −ELBO is {with_n(v["test_elbo"])} and the '
            f'importance-sampled NLL {with_n(v[is_q(m)])}; −ELBO − NLL, the KL(q(z|x) ‖ p(z|x)) that the bound '
            f'pays and M samples recover: {compared(gap(m))}. [[fig:6c-kl]] plots the KL term against training '
            f'iteration. ')
    if trend:
        before, last, step = trend
        text += (f'Over the 100 training batches before the PixelCNN is switched on (iteration {step}) it averages '
                 f'{before:.1f} nats per image, over the last 100 {last:.1f}; on the test set it ends at '
                 f'{value_text(v["kl"])}, {with_n(v.get("active_units")) or "an unmeasured number of"} dimensions '
                 f'active. ')
        if last < before:
            text += ('Once the decoder predicts each pixel from the pixels above and to its left, the latent code is '
                     'worth less than it costs and the posterior moves towards the prior: posterior collapse, '
                     + ('complete.' if v['kl']['value'] < 1 else 'still under way when training stops.'))
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
            text += f'Against {label}: {compared(c)}. '
    return text + 'Published, for orientation: ' + ', '.join(
        f'{name} {nll:.2f} [[cite:{key}]]' for name, nll, key in LITERATURE[1::2]) + '.'


ANSWERS = [  # (heading, the parts an answer needs from one run directory, the function that writes it)
    ('Problem 5a: ConvnetBlock', (), answer_5a),
    ('Problem 5b: Gaussian VAE, closed-form KL', ('5b',), answer_5b),
    ('Problem 5c: Monte-Carlo KL, against 5b', ('5b', '5c'), answer_5c),
    ('Problem 6a: PixelCNN', ('6a',), answer_6a),
    ('Problem 6b: binary VAE', ('6b',), answer_6b),
    ('Problem 6c: PixelVAE and posterior collapse', ('6c',), answer_6c),
    ('Problem 6d: IAF encoder', ('6b', '6d'), answer_6d),
    ('Problem 6e: preventing posterior collapse', ('6e-baseline',), answer_6e),
]


# ---------------------------------------------------------------------------------------------
# The chapter: settings, tables at a glance, the answers

def settings_blocks():
    """Each profile against the handout's settings (the `full` profile), generated from config.py."""
    blocks = [('p', f'The handout\'s settings are the full profile (`config.PARTS` over `config.DEFAULTS`: batch '
                    f'{DEFAULTS["batch_size"]}, Adam, the course framework\'s networks; `python experiments.py list '
                    f'--profile PROFILE` prints every setting). The smoke profile, seconds per part, serves the tests. '
                    f'The other profiles depart from the handout as [[tab:settings]] lists.')]
    for profile in (p for p in PROFILES if p not in ('full', 'smoke')):
        shared = PROFILES[profile].get('*', {})
        rows = []
        for part in PARTS:
            cfg = config(part, profile)
            same = [k for k in shared if cfg[k] == shared[k]]  # said once, below the table
            rows.append((part, TITLES[part], ', '.join(departures(cfg, config(part, 'full'), same))
                         or "the handout's settings"))
        blocks += [('table', 'settings', f'The {profile} profile: the settings of each part that differ from the '
                    f'handout\'s (in brackets).', ('part', 'what', f'{profile} profile (handout)'), rows,
                    r'lp{0.27\linewidth}p{0.57\linewidth}'),
                   ('p', f'Every part of the {profile} profile also has ' + '; '.join(
                       f'{k} = {shown(k, v)} (handout {shown(k, DEFAULTS[k])})'
                       + (f': {REASONS[profile][k]}' if k in REASONS.get(profile, {}) else '')
                       for k, v in shared.items()) + '.')]
    return blocks


def glance_table(runs, parts, label, caption):
    """One row per reported quantity of the parts, one column per run directory that has any of them,
    course settings first: value ± standard error (number of test images)."""
    cols = [r for r in runs if any(p in r['parts'] for p in parts)]
    rows = []
    for part in parts:
        values = [r['parts'].get(part, {}).get('values', {}) for r in cols]
        for q in dict.fromkeys(q for vs in values for q in vs if q not in ('test_recon', 'kl_mc')):
            rows.append((part, quantity_label(q), *(with_n(vs.get(q), table=True) for vs in values)))
    return [('table', label, caption + ' Nats per image: mean ± standard error (number of test images); active '
             'units: latent dimensions in use.', ('part', 'quantity', *map(run_name, cols)), rows,
             'll' + 'r' * len(cols))] if rows else []


def glance_blocks(runs):
    """The tables of every reported number, after a paragraph on where the numbers come from."""
    hardware = {r['name']: ', '.join(sorted({m.get('hardware', m.get('device', '')) for m in r['parts'].values()}))
                for r in runs}
    paired = [f'{r["name"]}/{p}' for r in runs for p, m in r['parts'].items() if per_image(m)]
    checks = [c.replace('numbers above', f'numbers of {r["name"]}') for r in runs
              if (c := verification(list(r['parts'].values()), r['path']))]
    text = ('Every number is read from results/<profile>[-<precision>]/<part>/metrics.json: the mean over the test '
            'images used ± its standard error, with their number; M is the number of importance samples per image. '
            'bf16 training: bfloat16 forward passes in training, every evaluation in float32. Runs: '
            + '; '.join(f'{r["name"]} ({run_name(r)}) on {hardware[r["name"]]}' for r in runs) + '. '
            + (f'Per-image values, for paired comparisons, are saved for {", ".join(paired)}; a comparison is '
               f'paired when every part in it saved the per-image values it compares, and marked unpaired otherwise '
               f'(standard errors combined as if independent). ' if paired else
               'No run has saved per-image values yet, so every comparison below is unpaired (standard errors '
               'combined as if independent). ')
            + 'Published NLLs on binarized MNIST: ' + ', '.join(f'{n} {v:.2f} [[cite:{k}]]' for n, v, k in LITERATURE)
            + '. ' + ' '.join(checks))
    return [('h', 'Results at a glance'), ('p', text)] + \
        glance_table(runs, ['5b', '5c'], 'p5', 'Problem 5, Gaussian VAEs on MNIST.') + \
        glance_table(runs, ['6a', '6b', '6c', '6d'], 'p6', 'Problem 6a–d, binarized MNIST.') + \
        glance_table(runs, REMEDIES, '6e', 'Problem 6e: PixelVAE with an IAF encoder, without and with a remedy for '
                                           'posterior collapse; the true ELBO and the NLL, whatever each trained.')


def chapter(runs):
    """The blocks of the results chapter: settings, tables, then one answer per handout item, each
    from the first run directory (course settings first) that has the parts it needs."""
    blocks = [('h', 'Settings')] + settings_blocks() + glance_blocks(runs)
    for heading, needs, write in ANSWERS:
        run = next((r for r in runs if all(p in r['parts'] for p in needs)), None)
        blocks.append(('h', heading))
        if run is None and needs:
            blocks.append(('p', f'Not run yet: {", ".join(needs)}.'))
        else:
            blocks += write(run['parts'] if run else {})
    return blocks


# ---------------------------------------------------------------------------------------------
# Writing the chapter: Markdown and LaTeX

def numbering(blocks):
    """{'fig:x' or 'tab:x': number}, in the order LaTeX numbers the floats."""
    count, out = {'fig': 0, 'table': 0}, {}
    for b in blocks:
        if b[0] in count:
            count[b[0]] += 1
            out[f'{b[0][:3]}:{b[1]}'] = count[b[0]]
    return out


def resolve(text, numbers, tex=False):
    """The [[fig:x]], [[tab:x]] and [[cite:key]] marks of a text, in LaTeX or in words."""
    def one(match):
        kind, key = match.groups()
        word = {'fig': 'Figure', 'tab': 'Table'}.get(kind)
        if kind == 'cite':
            return f'\\cite{{{key}}}' if tex else f'({CITES[key]})'
        if f'{kind}:{key}' not in numbers:
            return f'{word.lower()} (not drawn)'
        return f'{word}~\\ref{{{kind}:{key}}}' if tex else f'{word} {numbers[f"{kind}:{key}"]}'
    return re.sub(r'\[\[(fig|tab|cite):([^\]]+)\]\]', one, text)


def to_markdown(blocks, base):
    """The chapter in Markdown; figure paths relative to base (the README's folder)."""
    numbers, out = numbering(blocks), []
    for b in blocks:
        if b[0] == 'h':
            out.append(f'### {b[1]}\n')
        elif b[0] == 'p':
            out.append(resolve(b[1], numbers) + '\n')
        elif b[0] == 'table':
            out.append(f'**Table {numbers["tab:" + b[1]]}.** {resolve(b[2], numbers)}\n\n| ' + ' | '.join(b[3])
                       + ' |\n|' + '---|' * len(b[3]) + '\n' + ''.join(f'| {" | ".join(map(str, r))} |\n' for r in b[4]))
        else:
            links = ', '.join(f'[{os.path.basename(p)}]({os.path.relpath(p, base)})' for p in b[2])
            out.append(f'**Figure {numbers["fig:" + b[1]]}** ({links}). {resolve(b[3], numbers)}\n')
    return '\n'.join(out)


TEX = {'\\': r'\textbackslash{}', '&': r'\&', '%': r'\%', '_': r'\_', '#': r'\#', '$': r'\$', '{': r'\{',
       '}': r'\}', '^': r'\^{}', '~': r'$\sim$', '|': '$|$', '<': r'\textless{}', '>': r'\textgreater{}', '−': '$-$',
       '–': '--', '±': r'$\pm$', '‖': r'$\|$', '≥': r'$\geq$', '≈': r'$\approx$', '→': r'$\to$', 'σ': r'$\sigma$',
       'μ': r'$\mu$', 'λ': r'$\lambda$', '²': '$^2$', '×': r'$\times$', 'ø': r'{\o}'}


def tex(text, numbers=None):
    """Plain text as LaTeX: special characters escaped, `code` in typewriter type (breakable after / . _),
    references and citations resolved."""
    s = ''.join(TEX.get(ch, ch) for ch in text)
    s = re.sub(r'`([^`]*)`', lambda m: r'\texttt{' + re.sub(r'(/|\.|\\_)', r'\1\\allowbreak{}', m.group(1)) + '}', s)
    return resolve(s, numbers or {}, tex=True)


def tex_float(b, numbers, base):
    """A table or figure block as a LaTeX float; a table wider than the line is scaled down to it."""
    if b[0] == 'table':
        _, label, caption, header, rows, columns = b
        ragged = ['\\raggedright ' if c.startswith('p') else '' for c in re.findall(r'[lrc]|p\{[^}]*\}', columns)]
        def line(cells):
            return ' & '.join(r + tex(str(c)) for r, c in zip(ragged, cells)) + r' \tabularnewline'
        return [r'\begin{table}[htbp]\centering\small', f'\\caption{{{tex(caption, numbers)}}}\\label{{tab:{label}}}',
                r'\setbox0\hbox{\begin{tabular}{' + columns + r'}\hline', line(header) + r' \hline', *map(line, rows),
                r'\hline\end{tabular}}%', r'\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\box0}\else\box0\fi',
                r'\end{table}']
    width = {'samples.png': 0.28, 'reconstructions.png': 0.55, '6e_kl.png': 0.75}
    return [r'\begin{figure}[htbp]\centering', r'\quad'.join(
        f'\\includegraphics[width={width.get(os.path.basename(p), 0.6)}\\linewidth]{{{os.path.relpath(p, base)}}}'
        for p in b[2]), f'\\caption{{{tex(b[3], numbers)}}}\\label{{fig:{b[1]}}}', r'\end{figure}']


def latex(runs, tex_path):
    """analysis/results.tex: the chapter, from every run directory in runs (load_runs)."""
    blocks = chapter(runs)
    numbers = numbering(blocks)
    out = [r'\renewcommand{\topfraction}{0.85}\renewcommand{\bottomfraction}{0.6}\renewcommand{\textfraction}{0.1}'
           r'\renewcommand{\floatpagefraction}{0.8}',  # floats fill text pages rather than half-empty float pages
           r'\section*{Implementation results}', r'\begingroup\sloppy']
    section = []
    for b in blocks + [('h', None)]:  # a float lands no earlier than its place in the source: each section's first
        if b[0] != 'h':
            section.append(b)
            continue
        for c in sorted(section, key=lambda c: c[0] == 'p'):
            out += [tex(c[1], numbers) + '\n'] if c[0] == 'p' else tex_float(c, numbers, os.path.dirname(
                os.path.abspath(tex_path)))
        out += [f'\\subsection*{{{tex(b[1])}}}'] if b[1] is not None else []
        section = []
    with open(tex_path, 'w') as fh:
        fh.write('\n'.join(out + [r'\par\endgroup']) + '\n')


# ---------------------------------------------------------------------------------------------
# 6e in the notebooks; the combined KL plot

def remedies_markdown(metrics):
    """The 6e table of one run directory's metrics (true ELBO and IS NLL, whatever each remedy trained)."""
    run = dict(name='', profile=metrics[0]['profile'] if metrics else '', parts={m['part']: m for m in metrics},
               precision=with_defaults(metrics[0].get('config') or {})['precision'] if metrics else 'fp32')
    blocks = glance_table([run], REMEDIES, '6e', 'PixelVAE with an IAF encoder, remedies for posterior collapse.')
    return to_markdown(blocks, '.') if blocks else ''


def show_remedies(results_dir='results', profile='auto'):
    """Display the 6e table, its reading and the combined KL plot of a profile's runs in a notebook."""
    from IPython.display import Image, Markdown, display
    results_dir = run_dir(results_dir, pick_profile(profile, pick_device(None), quiet=True))
    metrics = load_metrics(results_dir)
    table = remedies_markdown(metrics)
    if not table:
        display(Markdown(f'No 6e configuration has finished in `{results_dir}` yet.'))
        return
    display(Markdown(table + '\n' + resolve(remedies_reading(metrics) or '', {})))
    path = remedies_kl_figure(results_dir)
    if path:
        display(Image(filename=path))


STYLES = {'6e-baseline': dict(color='k', ls='-', marker='o', lw=2.2, zorder=5),  # on top of the others
          '6e-warmup': dict(color='C1', ls='--', marker='s'), '6e-freebits': dict(color='C2', ls='-.', marker='^'),
          '6e-weak': dict(color='C3', ls=(0, (1, 1.5)), marker='D')}


def remedies_kl_figure(results_dir):
    """results_dir/6e_kl.png: the KL term against training iteration of every 6e part that has run
    (training batches, moving mean over 50 iterations), a line style and marker each, the
    baseline on top, the switch to the PixelCNN marked."""
    from matplotlib.figure import Figure

    from figures import smooth
    drawn = [p for p in STYLES if os.path.exists(os.path.join(results_dir, p, 'history.json'))]
    if not drawn:
        return None
    fig = Figure(figsize=(8, 4.5), tight_layout=True)
    ax = fig.subplots()
    for i, part in enumerate(drawn):
        h = read_json(os.path.join(results_dir, part, 'history.json'))
        every = max(len(drawn), len(h['step']) // 10)  # markers staggered, so that none hides another
        ax.plot(h['step'], smooth(h['kl'], 50), label=f'{part}: {TITLES[part]}', ms=6,
                markevery=(i * every // len(drawn), every), **{'lw': 1.6, **STYLES[part]})
        if h.get('autoregress_step') is not None and part == drawn[0]:
            ax.axvline(h['autoregress_step'], color='0.4', ls=':', lw=1.2, label='PixelCNN switched on')
    ax.set(xlabel='training iteration', ylabel='KL term of the ELBO (nats, 50-step mean)', ylim=(0, None),
           title='6e: PixelVAE + IAF encoder, KL term per remedy')
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(results_dir, '6e_kl.png'), dpi=100)
    return os.path.join(results_dir, '6e_kl.png')


def verification(metrics, results_dir):
    """A sentence on results/verify.json (written by `experiments.py verify`): how many of the run's
    reported numbers were recomputed by their `reproduce` command and agreed, counting a check only
    if it was made against the value reported now. None when nothing has been checked."""
    path = os.path.join(os.path.dirname(os.path.normpath(results_dir)), 'verify.json')
    if not os.path.exists(path):
        return None
    profile, _, precision = os.path.basename(os.path.normpath(results_dir)).partition('-')
    checks = {(c['part'], c['quantity']): c for c in read_json(path)
              if (c.get('profile', 'cpu'), c.get('precision', 'fp32')) == (profile, precision or 'fp32')}
    rows = [(m['part'], q, v['value']) for m in metrics for q, v in m['values'].items()
            if q not in ('test_recon', 'kl_mc')]
    current = [checks[(p, q)] for p, q, value in rows if (p, q) in checks and checks[(p, q)]['reported'] == value]
    ok = [c for c in current if c['ok']]
    failed = [f'{c["part"]} {c["quantity"]}' for c in current if not c['ok']]
    return (f'{len(ok)} of the {len(rows)} numbers above were recomputed from the committed checkpoints by their '
            f'`reproduce` commands (`python experiments.py verify`, each in a fresh process; `{path}`) and agreed '
            f'within max(0.05, stderr)'
            + (f'; the longest took {max(c["seconds"] for c in ok) / 60:.1f} min' if ok else '')
            + (f'; did not agree: {", ".join(failed)}' if failed else '')
            + (f'; {len(rows) - len(current)} not checked against their current value' if len(current) < len(rows)
               else '') + '.')


# ---------------------------------------------------------------------------------------------
# The README's generated sections

def notebook_cell(notebook, needle):
    """'`name` cell N': the (1-based) cell of a notebook whose source holds needle."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), notebook)
    cells = read_json(path)['cells'] if os.path.exists(path) else []
    found = [i for i, c in enumerate(cells) if needle in ''.join(c['source'])]
    return f'`{notebook}` cell {found[0] + 1}' if found else f'`{notebook}`'


def homework_map(runs, base):
    """The handout's items: the number that answers each (from the first run that has it, course
    settings first), its figure, notebook cell and implementation."""
    lines = ['| item | the handout asks | number: nats per image ± standard error (test images); run | figure | '
             'notebook | implementation |', '|---|---|---|---|---|---|']
    for item, asks, parts, qs, fig, nb, code in HOMEWORK:
        numbers, figs, names = [], [], []
        for part in parts:
            run = next((r for r in runs if part in r['parts']), None)
            m = run and run['parts'][part]
            numbers += [f'{part}: not run yet'] if m is None else [
                (f'{part} ' if len(parts) > 1 else '') + f'{quantity_label(q)}: {with_n(m["values"][q], table=True)}'
                for q in (is_q(m) if q == 'test_nll_is' else q for q in qs) if q in m['values']]
            names += [run_name(run)] if run and run_name(run) not in names else []
            path = m and os.path.join(m['dir'] if fig != '6e_kl' else run['path'], f'{fig}.png')
            figs += [path] if path and os.path.exists(path) and path not in figs else []
        number = '; '.join(numbers) + (f'; {", ".join(names)}' if names else '')
        lines.append(f'| {item} | {asks} | {number or ("proof" if item.startswith("Problem") else "code")} | '
                     + ', '.join(f'[{os.path.basename(p)}]({os.path.relpath(p, base)})' for p in figs)
                     + f' | {notebook_cell(*nb[:2]) + nb[2] if nb else ""} | {code} |')
    return '\n'.join(lines) + '\n'


def gpu_time(runs):
    """The measured time of each part trained on a GPU, or a sentence saying that none has been."""
    rows = [(r, m) for r in runs for m in r['parts'].values() if str(m.get('device', '')).startswith('cuda')]
    if not rows:
        return ('No GPU time has been measured yet: no run in `results/` was trained on a GPU. `python experiments.py '
                'estimate --profile full` measures the machine it runs on and prints the expected time of each part.\n')
    return '| part | run | hardware | training | evaluation |\n|---|---|---|---|---|\n' + ''.join(
        f'| {m["part"]} | {run_name(r)} | {m.get("hardware")} | {m["train_seconds"] / 60:.0f} min | '
        f'{m.get("eval_seconds", 0) / 60:.0f} min |\n' for r, m in rows)


def fill_file(path, sections):
    """Replace each generated section [(begin marker, end marker, body)] of a file."""
    with open(path) as fh:
        text = fh.read()
    for begin, end, body in sections:
        if begin not in text or end not in text:
            raise ValueError(f'{path} has no {begin} ... {end} section to fill')
        text = re.sub(re.escape(begin) + '.*?' + re.escape(end), lambda _: f'{begin}\n{body}{end}', text, flags=re.S)
    with open(path, 'w') as fh:
        fh.write(text)


def update_readme(readme, runs):
    """README.md's homework map, results chapter and GPU times, from runs (load_runs)."""
    base = os.path.dirname(os.path.abspath(readme))
    fill_file(readme, [(MAP_BEGIN, MAP_END, homework_map(runs, base)), (GPU_BEGIN, GPU_END, gpu_time(runs)),
                       (BEGIN, END, to_markdown(chapter(runs), base) if runs else 'No run has finished yet.\n')])


# ---------------------------------------------------------------------------------------------
# Speed tables (bench.py's JSON files)

BENCH_ROWS = [('train_img_per_s', k, 'training, images/s') for k in
              ('pixelcnn', 'binary_vae', 'gaussian_vae', 'pixelvae', 'iaf_vae')] + \
             [('sample_s', 'pixelcnn_49', 'sampling 49 images, s')] + \
             [('is_img_per_s', k, 'importance sampling M = 1000, images/s') for k in ('binary_vae', 'pixelvae')]

# Speed-up goals over a straightforward solution (the speed issue), per workload.
GOALS = {'pixelcnn': 2.5, 'pixelvae': 2.0, 'binary_vae': 1.5, 'gaussian_vae': 1.5, 'iaf_vae': 1.5,
         'pixelcnn_49': 20.0, ('is', 'binary_vae'): 2.0, ('is', 'pixelvae'): 5.0}


def goal(group, key):
    return GOALS.get(('is', key)) if group == 'is_img_per_s' else GOALS.get(key)


def speed_markdown(results_dir):
    """The benchmark table from results/bench_<device>.json and, beside it,
    results/bench_<device>_straightforward.json (written by bench.py); with
    results/bench_<device>_flops.json also the FLOPs per image and the share of the device's
    measured convolution ceiling that each workload reaches, and that its goal would need."""
    tables = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        if not (name.startswith('bench_') and name.endswith('.json')) or name.endswith(('_straightforward.json',
                                                                                        '_flops.json', '_bf16.json')):
            continue
        with open(os.path.join(results_dir, name)) as fh:
            ours = json.load(fh)
        plain_path = os.path.join(results_dir, name[:-5] + '_straightforward.json')
        plain = json.load(open(plain_path)) if os.path.exists(plain_path) else {}
        flops_path = os.path.join(results_dir, name[:-5] + '_flops.json')
        flops = json.load(open(flops_path)) if os.path.exists(flops_path) else None
        head = '| workload | this implementation | straightforward solution | speed-up | goal |'
        rule = '|---|---|---|---|---|'
        if flops:
            head += ' goal needs | GFLOP per image | GFLOP/s reached | main layer, GFLOP/s | bound |'
            rule += '---|---|---|---|---|'
        lines = [f'`{results_dir}/{name}` ({ours.get("device", name[6:-5])}):', '', head, rule]
        met, unmet = [], []
        for group, key, label in BENCH_ROWS:
            a, b = ours[group][key], plain.get(group, {}).get(key)
            ratio = '' if b is None else f'{(b / a if group == "sample_s" else a / b):.1f}x'
            g = goal(group, key)
            line = (f'| {label}: {key} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | {ratio} | '
                    f'{"" if g is None else f"{g:g}x"} |')
            fkey = {'train_img_per_s': 'train_', 'is_img_per_s': 'is_'}.get(group, '') + key
            if b is not None and g is not None:
                speedup = b / a if group == 'sample_s' else a / b
                (met if speedup >= g else unmet).append((label, key, speedup, g, fkey, b))
            if flops and fkey in flops['gflop_per_image']:
                per_image, rate = flops['gflop_per_image'][fkey], flops['layer_gflop_per_s'][fkey]
                need = '' if b is None or g is None else f'{g * b:.2f}'
                line += (f' {need} | {per_image:.3g} | {a * per_image:.0f} | {rate:.0f} | {rate / per_image:.2f} |')
            elif flops:
                line += ' | | | | |'
            lines.append(line)
        if flops:
            lines += ['', f'Measured in the same run. *goal needs*: the goal times the straightforward figure '
                          f'(images/s). *GFLOP per image*: convolutions and matrix products, forward and backward, '
                          f'counted by torch.utils.flop_counter (masked kernels count dense, as computed). *main '
                          f'layer*: the rate of the 3×3 convolution that carries most of the workload\'s FLOPs, at '
                          f'its own sizes (PixelCNN: 32 channels at 28×28, batch 100; VAE trunks: 32 or 128 '
                          f'channels at 7×7; importance sampling: forward only, 2000 latents per pass). *bound*: '
                          f'that rate divided by the FLOPs per image, the images/s of an implementation that spent '
                          f'all its time in such convolutions. For reference, a large convolution (128 channels, '
                          f'28×28, batch 32) runs at {flops["ceiling_gflop_per_s"]:.0f} GFLOP/s.']
        if met or unmet:
            def listed(rows):
                return ', '.join(f'{k} ({label.split(",")[0]}, {x:.1f}x of {g:g}x)' for label, k, x, g, _, _ in rows)
            text = f'Goals met: {listed(met) or "none"}. Not met: {listed(unmet) or "none"}'
            beyond = [f'{k} ({label.split(",")[0]})' for label, k, _, g, fkey, b in unmet if flops and fkey in flops['gflop_per_image']
                      and g * b >= flops['layer_gflop_per_s'][fkey] / flops['gflop_per_image'][fkey]]
            if beyond:
                text += (f'. For {", ".join(beyond)} the goal needs at least the bound, the images/s of an '
                         f'implementation that did nothing but run its main layer at the rate measured here')
            lines += ['', text + '.']
        tables.append('\n'.join(lines) + '\n')
        bf16_path = os.path.join(results_dir, name[:-5] + '_bf16.json')
        if os.path.exists(bf16_path):
            with open(bf16_path) as fh:
                tables.append(bf16_markdown(json.load(fh)['train_img_per_s'], ours['train_img_per_s'],
                                            plain.get('train_img_per_s', {}), f'{results_dir}/{name[:-5]}_bf16.json'))
    if tables:
        tables.append(bf16_runs_markdown(results_dir))
    return '\n'.join(t for t in tables if t) if tables else 'No benchmark has been run yet.\n'


def bf16_markdown(bf16, fp32, plain, path):
    """Training throughput with bfloat16 forward passes (experiments.py run --precision bf16) beside
    float32, from the same machine; not counted against the goals, which ask for the same arithmetic."""
    lines = [f'Opt-in bfloat16 training (`{path}`): not the same arithmetic, so not counted against the goals '
             f'above.', '', '| training, images/s | bfloat16 | float32 | bfloat16 / float32 | bfloat16 / straightforward |'
             ' goal |', '|---|---|---|---|---|---|']
    for key, a in bf16.items():
        b, c, g = fp32.get(key), plain.get(key), GOALS.get(key)
        lines.append(f'| {key} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | {"" if b is None else f"{a / b:.1f}x"} | '
                     f'{"" if c is None else f"{a / c:.1f}x"} | {"" if g is None else f"{g:g}x"} |')
    return '\n'.join(lines) + '\n'


def bf16_runs_markdown(results_dir):
    """Parts trained again with --precision bf16 into results/bf16/<part> (same settings and seed),
    set against the float32 run of results/<part>; both evaluated in float32."""
    root, results_dir = os.path.join(results_dir, 'cpu-bf16'), os.path.join(results_dir, 'cpu')
    lines = []
    for part in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        paths = [os.path.join(d, part, 'metrics.json') for d in (root, results_dir)]
        if not all(os.path.exists(p) for p in paths):
            continue
        low, full = (json.load(open(p)) for p in paths)
        q = next(q for q in ('test_nll', 'test_elbo') if q in low['values'] and q in full['values'])
        a, b = low['values'][q], full['values'][q]
        shared = (set(low['config']) & set(full['config'])) - {'precision'}  # settings added later: at defaults
        same = all(low['config'][k] == full['config'][k] for k in shared)
        diff, se = difference(a, b)
        lines.append(f'| {part} | {q} | {value_text(a)} | {value_text(b)} | {diff:+.2f} ± {se:.2f} | {a["n_images"]} | '
                     f'{low["epochs"]} | {"yes" if same else "no"} |')
    if not lines:
        return ''
    return ('Parts trained again in bfloat16 (`python experiments.py run PART --profile cpu --precision bf16`, '
            f'results in `{root}`), against their float32 run; both evaluated in float32, nats per image (speeds: the '
            'table above, measured side by side; the runs\' own wall times come from machines under '
            f'different loads; each bfloat16 number is recomputed by `python experiments.py eval PART --quantity '
            f'QUANTITY --profile cpu --precision bf16`):\n\n'
            '| part | quantity | bfloat16 | float32 | difference | images | epochs | same settings and seed |\n'
            '|---|---|---|---|---|---|---|---|\n'
            + '\n'.join(lines) + '\n')



def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--results-dir', default='results', help='the folder of the run directories <profile>[-<precision>]')
    ap.add_argument('--readme', default='README.md')
    ap.add_argument('--speed', default=os.path.join('docs', 'speed.md'), help='the speed document (benchmark tables)')
    ap.add_argument('--tex', default=os.path.join('analysis', 'results.tex'))
    args = ap.parse_args()
    runs = load_runs(args.results_dir)
    for r in runs:
        remedies_kl_figure(r['path'])
    latex(runs, args.tex)
    update_readme(args.readme, runs)
    fill_file(args.speed, [(SPEED_BEGIN, SPEED_END, speed_markdown(args.results_dir))])
    print(f'{sum(len(r["parts"]) for r in runs)} parts in {len(runs)} run directories -> {args.tex}, {args.readme}, '
          f'{args.speed}')


if __name__ == '__main__':
    main()
