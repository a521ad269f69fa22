"""The results write-up, generated from the runs' files: every number and figure is read from
results/<part>/metrics.json and the PNGs beside it, never typed by hand.

    python report.py                      # analysis/results.tex and README.md's results section
    python report.py --results-dir results --readme README.md --tex analysis/results.tex

`make -C analysis` then builds the homework write-up: the proofs and this chapter.
"""
import argparse
import json
import os
import re
import shlex

from config import (PARTS, PRECISIONS, PROFILES, pick_device, pick_profile, quantities, run_dir)
from data import write_json

PART_ORDER = ['5b', '5c', '6a', '6b', '6c', '6d', '6e-baseline', '6e-warmup', '6e-freebits', '6e-weak']
# Negative log-likelihoods on binarized MNIST reported in the literature (nats), for orientation.
LITERATURE = [
    ('PixelCNN', 81.30, 'van den Oord et al. 2016'),
    ('PixelVAE', 79.66, 'Gulrajani et al. 2016'),
    ('IAF VAE', 79.88, 'Kingma et al. 2016'),
    ('VLAE', 79.03, 'Chen et al. 2017'),
]
QUANTITY_NAMES = {
    'test_elbo': '$-$ELBO', 'test_elbo_mc': '$-$ELBO, Monte-Carlo KL', 'test_nll': 'NLL (exact)',
    'kl': 'KL term', 'kl_mc': 'KL term, Monte-Carlo', 'active_units': 'active units', 'test_recon': 'reconstruction',
}
BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'
SPEED_BEGIN, SPEED_END = '<!-- speed:begin -->', '<!-- speed:end -->'
BENCH_ROWS = [('train_img_per_s', k, 'training, images/s') for k in
              ('pixelcnn', 'binary_vae', 'gaussian_vae', 'pixelvae', 'iaf_vae')] + \
             [('sample_s', 'pixelcnn_49', 'sampling 49 images, s')] + \
             [('is_img_per_s', k, 'importance sampling M = 1000, images/s') for k in ('binary_vae', 'pixelvae')]


def load_metrics(results_dir):
    """The metrics.json of every part that has one, in handout order."""
    found = []
    for part in PART_ORDER:
        path = os.path.join(results_dir, part, 'metrics.json')
        if os.path.exists(path):
            with open(path) as fh:
                found.append(json.load(fh))
    return found


# ---------------------------------------------------------------------------------------------
# Reading results: summaries and notebook displays

def read_json(path):
    """A JSON file of the results (metrics.json, summary.json), with an error that names it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} cannot be read ({type(err).__name__}: {err}); restore it with git '
                              f'(`git checkout -- {path}`) or delete the part\'s directory and rerun it') from err


def part_metrics(results_dir, profile, part, precision='fp32'):
    """The metrics of a finished part (None if it has not finished); profile 'auto' is resolved
    from the device, as run_part does."""
    profile = pick_profile(profile, pick_device(None), quiet=True)
    path = os.path.join(run_dir(results_dir, profile, precision), part, 'metrics.json')
    return read_json(path) if os.path.exists(path) else None


def show(part, results_dir='results', profile='auto', precision='fp32'):
    """Display a part's metrics and figures in a notebook."""
    from IPython.display import Image, Markdown, display
    m = part_metrics(results_dir, profile, part, precision)
    if m is None:
        display(Markdown(f'{part} has not finished in the {profile} profile in `{results_dir}`.'))
        return
    display(Markdown(metrics_table([m])))
    for path in m['figures'].values():
        display(Image(filename=path))


def compare(parts, results_dir='results', profile='auto', precision='fp32'):
    """Display the metrics of several finished parts as one table in a notebook."""
    from IPython.display import Markdown, display
    done = [m for m in (part_metrics(results_dir, profile, p, precision) for p in parts) if m is not None]
    display(Markdown(metrics_table(done) if done else f'None of {", ".join(parts)} has finished.'))


def show_finished(parts, results_dir='results', profile='auto', figures=('samples', 'kl'), precision='fp32'):
    """Display one table of every part among `parts` that has finished, then the named figures of
    each; a part that has not run is named, not an error."""
    from IPython.display import Image, Markdown, display
    done = [m for m in (part_metrics(results_dir, profile, p, precision) for p in parts) if m is not None]
    missing = [p for p in parts if p not in {m['part'] for m in done}]
    if missing:
        display(Markdown(f'Not run yet in the {profile} profile in `{results_dir}`: {", ".join(missing)}.'))
    if not done:
        return
    display(Markdown(metrics_table(done)))
    for m in done:
        display(Markdown(f'**{m["part"]}: {m["title"]}** ({m["profile"]} profile, {m["epochs"]} epochs)'))
        for name in figures:
            if os.path.exists(m['figures'].get(name, '')):
                display(Image(filename=m['figures'][name]))


def reproduce_command(m, quantity, results_dir):
    """The command that recomputes one reported number from the part's model.pt."""
    precision = m['config'].get('precision', 'fp32')
    return (f'python experiments.py eval {m["part"]} --quantity {quantity} --profile {m["profile"]}'
            + (f' --precision {precision}' if precision != 'fp32' else '')
            + (f' --results-dir {shlex.quote(results_dir)}' if results_dir != 'results' else '')
            + f' --device {m["device"]}')


def summary_rows(metrics, results_dir):
    rows = []
    for m in metrics:
        for q in quantities(m['config']):
            v = m['values'][q]
            rows.append(dict(part=m['part'], quantity=q, value=v['value'], stderr=v['stderr'], n_images=v['n_images'],
                             M=v.get('M'), profile=m['profile'], precision=m['config'].get('precision', 'fp32'),
                             device=m['device'], hardware=m.get('hardware', m['device']), epochs=m['epochs'],
                             train_seconds=m['train_seconds'], model=m['model'],
                             reproduce=reproduce_command(m, q, results_dir)))
    return rows


def metrics_table(metrics, reported_only=False):
    lines = ['| part | what | quantity | value ± stderr | images | M | epochs | train time | profile, precision, hardware |',
             '|---|---|---|---|---|---|---|---|---|']
    for m in metrics:
        for q, v in m['values'].items():
            if reported_only and q not in quantities(m['config']):
                continue
            value = f'{v["value"]:.2f}' if isinstance(v['value'], float) else f'{v["value"]}'
            if v['stderr'] is not None:
                value += f' ± {v["stderr"]:.2f}'
            lines.append(f'| {m["part"]} | {m["title"]} | {q} | {value} | {v["n_images"]} | {v.get("M") or ""} | '
                         f'{m["epochs"]} | {m["train_seconds"] / 60:.1f} min | {m["profile"]}, '
                         f'{m["config"].get("precision", "fp32")}, {m.get("hardware", m["device"])} |')
    return '\n'.join(lines)


def run_dirs(results_dir):
    """The run directories under results_dir that hold a finished part: [(path, profile, precision)]."""
    found = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        profile, _, precision = name.partition('-')
        if profile in PROFILES and (precision or 'fp32') in PRECISIONS and any(
                os.path.exists(os.path.join(results_dir, name, p, 'metrics.json')) for p in PARTS):
            found.append((os.path.join(results_dir, name), profile, precision or 'fp32'))
    return found


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
# The README and LaTeX sections

def quantity_name(q, tex=False):
    if q.startswith('test_nll_is'):
        return f'NLL, importance sampling (M = {q[len("test_nll_is"):]})'
    name = QUANTITY_NAMES.get(q, q)
    return name if tex else name.replace('$-$', '−')


def value_text(v, tex=False):
    pm = r' $\pm$ ' if tex else ' ± '
    if v['stderr'] is None:
        return f'{v["value"]}'
    return f'{v["value"]:.2f}{pm}{v["stderr"]:.2f}'


def get(metrics, part, quantity):
    for m in metrics:
        if m['part'] == part and quantity in m['values']:
            return m['values'][quantity]
    return None


def is_value(metrics, part):
    for m in metrics:
        if m['part'] == part:
            for q, v in m['values'].items():
                if q.startswith('test_nll_is'):
                    return v
    return None


def history(metrics, part):
    """results/<part>/history.json next to the part's figures, if present."""
    for m in metrics:
        if m['part'] == part:
            path = os.path.join(os.path.dirname(m.get('model') or ''), 'history.json')
            if os.path.exists(path):
                with open(path) as fh:
                    return json.load(fh)
    return None


def findings(metrics):
    """One short paragraph per handout question, with the numbers read from the runs."""
    out = []
    b, c = get(metrics, '5b', 'test_elbo'), get(metrics, '5c', 'test_elbo')
    if b and c:
        bmc = get(metrics, '5b', 'test_elbo_mc')
        diff, se = difference(c, b)
        out.append(('5c: closed-form vs Monte-Carlo KL',
                    f'Trained with the closed-form KL (5b) the test −ELBO is {value_text(b)} nats; trained with '
                    f'the one-sample Monte-Carlo KL (5c) it is {value_text(c)} (both evaluated with the closed-form '
                    f'KL over {b["n_images"]} test images; difference {diff:+.2f} ± {se:.2f}). '
                    + (f'Evaluating 5b with the Monte-Carlo KL instead gives {value_text(bmc)}: the estimator is '
                       f'unbiased, so the two evaluations agree up to its noise. ' if bmc else '')
                    + 'Both train the same objective in expectation; the Monte-Carlo KL only adds gradient '
                      'variance. '
                    + ('At this budget the Monte-Carlo run ends with the worse test bound, by more than two '
                       'standard errors: the price of that variance. ' if diff > 2 * se else
                       'At this budget the two test bounds are statistically indistinguishable (within two '
                       'standard errors). ' if abs(diff) <= 2 * se else
                       'At this budget the Monte-Carlo run ends with the better test bound, by more than two '
                       'standard errors; extra variance does not explain that, and with one training run per '
                       'estimator the run-to-run spread (a different trajectory from the same seed) is not '
                       'measured, so this does not show that either estimator trains better. ')
                    + '(The standard error of the difference treats the two evaluations as independent.)'))
    e, n = get(metrics, '6c', 'test_elbo'), is_value(metrics, '6c')
    if e and n:
        kl = get(metrics, '6c', 'kl')
        text = (f'The PixelVAE reaches a test −ELBO of {value_text(e)} ({e["n_images"]} images) and an '
                f'importance-sampled NLL of {value_text(n)} ({n["n_images"]} images, M = {n.get("M")}). The '
                f'difference, about {e["value"] - n["value"]:.1f} nats (the two use different numbers of test '
                f'images), estimates the KL(q(z|x) ‖ p(z|x)) that the bound pays and M = 1000 samples recover. ')
        hist = history(metrics, '6c')
        if hist and hist.get('autoregress_step'):
            k, a = hist['kl'], hist['autoregress_step']
            before, last = sum(k[max(0, a - 100):a]) / len(k[max(0, a - 100):a]), sum(k[-100:]) / len(k[-100:])
            text += (f'The KL term, {before:.1f} nats per image over the 100 training iterations before the '
                     f'PixelCNN is switched on (iteration {a}), falls to {last:.1f} over the last 100 '
                     f'(test: {value_text(kl)}): the decoder now predicts each pixel from its neighbours, the '
                     f'latent code is worth less than it costs, and the posterior moves towards the prior '
                     f'(figure: KL against training iteration). That is posterior collapse, still under way '
                     f'when training stops.')
        out.append(('6c: ELBO vs importance-sampled NLL, and posterior collapse', text))
    b6, d6 = is_value(metrics, '6b'), is_value(metrics, '6d')
    if b6 and d6:
        eb, ed = get(metrics, '6b', 'test_elbo'), get(metrics, '6d', 'test_elbo')
        epochs = {m['part']: m['epochs'] for m in metrics}
        d, se = difference(d6, b6)
        out.append(('6d: what IAF buys',
                    f'With 8 IAF steps in the encoder (6d, {epochs["6d"]} epochs) the importance-sampled NLL is '
                    f'{value_text(d6)} against {value_text(b6)} for the diagonal-Gaussian encoder of 6b '
                    f'({epochs["6b"]} epochs, same decoder), a difference of {d:+.2f} ± {se:.2f}. The gap between '
                    f'the −ELBO and the NLL, the KL(q(z|x) ‖ p(z|x)) that the bound pays, is '
                    f'{ed["value"] - d6["value"]:.2f} nats for 6d and {eb["value"] - b6["value"]:.2f} for 6b '
                    f'(−ELBO {value_text(ed)} and {value_text(eb)}; the −ELBO over every test image, the NLL '
                    f'over the first {d6["n_images"]}): '
                    + ('with the flow the bound is tighter, here by '
                       f'{(eb["value"] - b6["value"]) - (ed["value"] - d6["value"]):.2f} nats.'
                       if ed['value'] - d6['value'] < eb['value'] - b6['value'] else
                       'the flow does not tighten the bound at this budget.')))
    reading = remedies_reading(metrics)
    if reading:
        out.append(('6e: preventing posterior collapse', reading))
    return out


def remedies(metrics):
    """[(metrics, IS NLL value)] of the 6e parts that have finished, in PART_ORDER."""
    return [(m, is_value(metrics, m['part'])) for m in metrics if m['part'].startswith('6e-')]


def remedies_markdown(metrics):
    """The 6e table: remedy, test -ELBO, IS NLL, KL, active units, training time (all true-ELBO
    evaluations, whatever objective each remedy trained)."""
    rows = remedies(metrics)
    if not rows:
        return ''
    lines = ['| remedy | part | test −ELBO | NLL, importance sampling | KL term (nats) | active units | train time |',
             '|---|---|---|---|---|---|---|']
    for m, nll in rows:
        v = m['values']
        au = v.get('active_units')
        au = '' if au is None else f'{au["value"]:g} of 49'
        lines.append(f'| {m["title"]} | {m["part"]} | {value_text(v["test_elbo"])} ({v["test_elbo"]["n_images"]}) | '
                     + (f'{value_text(nll)} ({nll["n_images"]}, M = {nll.get("M")})' if nll else '') + ' | '
                     f'{value_text(v["kl"])} | {au} | '
                     f'{m["train_seconds"] / 60:.0f} min |')
    return '\n'.join(lines) + '\n\n(In brackets: the number of test images.)\n'


def difference(a, b):
    """a - b and its standard error, the two estimates taken as independent."""
    return a['value'] - b['value'], (a['stderr'] ** 2 + b['stderr'] ** 2) ** 0.5


def remedies_reading(metrics):
    """What the 6e table says: which remedies keep the latent in use (KL >= 1 nat and at least
    one active unit), which of those costs least NLL against the unremedied baseline, and how
    they compare with 6c and the PixelCNN alone (6a)."""
    rows = [(m, nll) for m, nll in remedies(metrics) if nll and 'kl' in m['values']]
    if not rows:
        return None
    text = 'Final KL term per configuration: ' + ', '.join(
        f'{m["part"]} {value_text(m["values"]["kl"])} nats' for m, _ in rows) + '. '
    trend = []
    for m, _ in rows:
        h = history(metrics, m['part'])
        if h and h.get('autoregress_step'):
            a, kl = h['autoregress_step'], h['kl']
            before, last = kl[max(0, a - 100):a], kl[-100:]
            trend.append(f'{m["part"]} {sum(before) / len(before):.1f} → {sum(last) / len(last):.1f}')
    if trend:
        text += ('KL term of the training batches, mean of the 100 iterations before the PixelCNN is switched '
                 'on → mean of the last 100: ' + ', '.join(trend) + ' nats. ')
    alive = [(m, nll) for m, nll in rows
             if m['values']['kl']['value'] >= 1.0 and m['values'].get('active_units', {}).get('value', 1) > 0]
    base = next((nll for m, nll in rows if m['part'] == '6e-baseline'), None)
    if not alive:
        return text + 'No configuration kept the KL term at or above 1 nat: the latent collapsed in every run.'
    if any(m['part'] == '6e-baseline' for m, _ in alive):
        text += ('The unremedied baseline itself still uses its latent when training stops: in this budget the KL '
                 'term is still falling, so these runs measure how far each remedy slows the fall, not whether '
                 'the latent ends unused; that needs longer training (the full profile). ')
    best_m, best = min(alive, key=lambda r: r[1]['value'])
    text += (f'{len(alive)} of {len(rows)} keep the latent in use (KL ≥ 1 nat): '
             + ', '.join(m['part'] for m, _ in alive) + f'. Of these, {best_m["part"]} has the lowest '
             f'importance-sampled NLL, {value_text(best)}')
    if base and best_m['part'] != '6e-baseline':
        d, se = difference(best, base)
        verdict = ('within two standard errors' if abs(d) <= 2 * se else 'a cost' if d > 0 else 'a gain')
        text += (f', {d:+.2f} ± {se:.2f} nats against the unremedied baseline ({value_text(base)}; same test '
                 f'images): {verdict}')
    text += '. '
    for part, label in (('6c', 'the PixelVAE of 6c'), ('6a', 'the PixelCNN alone (6a)')):
        ref = is_value(metrics, part) or get(metrics, part, 'test_nll')
        if ref:
            d, se = difference(best, ref)
            word = 'beats' if d < -2 * se else 'is worse than' if d > 2 * se else 'is within two standard errors of'
            text += (f'It {word} {label}: {value_text(ref)} over {ref["n_images"]} images, difference '
                     f'{d:+.2f} ± {se:.2f}. ')
    return text + ('(These comparisons use the first n test images of each evaluation, so the subsets differ, '
                   'and the settings differ by part and profile: see each metrics.json.)')


def write_remedies(metrics, results_dir):
    """results/6e.md: the 6e table, the reading, and the combined KL plot."""
    table = remedies_markdown(metrics)
    if not table:
        return None
    path = os.path.join(results_dir, '6e.md')
    reading = remedies_reading(metrics) or ''
    with open(path, 'w') as fh:
        fh.write('# 6e: PixelVAE with an IAF encoder, remedies for posterior collapse\n\n'
                 'Generated by `python report.py` from `results/6e-*/metrics.json`. Every value is the true '
                 'ELBO (KL weight 1, no free bits) or the importance-sampled NLL, whatever objective each '
                 'configuration trained on.\n\n' + table + '\n' + reading + '\n\n![KL per remedy](6e_kl.png)\n')
    return path


def show_remedies(results_dir='results', profile='auto'):
    """Display the 6e table, its reading and the combined KL plot of a profile's runs in a notebook."""
    from IPython.display import Image, Markdown, display
    results_dir = run_dir(results_dir, pick_profile(profile, pick_device(None), quiet=True))
    metrics = load_metrics(results_dir)
    table = remedies_markdown(metrics)
    if not table:
        display(Markdown(f'No 6e configuration has finished in `{results_dir}` yet.'))
        return
    display(Markdown(table + '\n' + (remedies_reading(metrics) or '')))
    figure = remedies_kl_figure(results_dir)
    if figure:
        display(Image(filename=figure))


def remedies_kl_figure(results_dir):
    """results/6e_kl.png: the KL term against training iteration for every 6e part that has run,
    in one plot (train batches, moving average over 50 iterations), autoregression switch marked."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4.5), tight_layout=True)
    ax = fig.subplots()
    drawn = 0
    for part in PART_ORDER:
        path = os.path.join(results_dir, part, 'history.json')
        if not part.startswith('6e-') or not os.path.exists(path):
            continue
        with open(path) as fh:
            h = json.load(fh)
        kl, width = h['kl'], 50
        smooth = [sum(kl[max(0, i - width + 1):i + 1]) / len(kl[max(0, i - width + 1):i + 1]) for i in range(len(kl))]
        ax.plot(h['step'], smooth, label=part)
        if h.get('autoregress_step') is not None and drawn == 0:
            ax.axvline(h['autoregress_step'], color='k', ls='--', lw=1, label='autoregression on')
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel('training iteration')
    ax.set_ylabel('KL term of the ELBO (nats, 50-step mean)')
    ax.set_ylim(bottom=0)
    ax.set_title('6e: PixelVAE + IAF encoder, KL term per remedy')
    ax.legend(fontsize=8)
    out = os.path.join(results_dir, '6e_kl.png')
    fig.savefig(out, dpi=100)
    return out


def reported(metrics):
    """(metrics, quantity, value) of every number the tables show."""
    for m in metrics:
        for q, v in m['values'].items():
            if q not in ('test_recon', 'kl_mc'):
                yield m, q, v


def literature_text():
    return ', '.join(f'{name} {nll:.2f} ({ref})' for name, nll, ref in LITERATURE)


def verification(metrics, results_dir):
    """A sentence on results_dir/verify.json (written by `experiments.py verify`): how many of the
    reported numbers were recomputed by their `reproduce` command and agreed, counting a check only
    if it was made against the value reported now. None when nothing has been checked."""
    path = os.path.join(os.path.dirname(os.path.normpath(results_dir)), 'verify.json')
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        checks = {(c['part'], c['quantity']): c for c in json.load(fh)
                  if (c.get('profile', 'cpu'), c.get('precision', 'fp32')) == run_of(results_dir)}
    rows = [(m['part'], q, v['value']) for m, q, v in reported(metrics)]
    current = [checks[(p, q)] for p, q, value in rows if (p, q) in checks and checks[(p, q)]['reported'] == value]
    ok = [c for c in current if c['ok']]
    failed = [f'{c["part"]} {c["quantity"]}' for c in current if not c['ok']]
    text = (f'{len(ok)} of the {len(rows)} numbers above were recomputed from the committed checkpoints by '
            f'their `reproduce` commands (`python experiments.py verify`, each in a fresh process; '
            f'`{os.path.join(os.path.dirname(os.path.normpath(results_dir)), "verify.json")}`) and agreed '
            f'within max(0.05, stderr)')
    if ok:
        text += f'; the longest took {max(c["seconds"] for c in ok) / 60:.1f} min'
    if failed:
        text += f'; did not agree: {", ".join(failed)}'
    if len(current) < len(rows):
        text += f'; {len(rows) - len(current)} not checked against their current value'
    return text + '.'


def run_of(run_dir):
    """(profile, precision) of a run directory results/<profile>[-<precision>]."""
    profile, _, precision = os.path.basename(os.path.normpath(run_dir)).partition('-')
    return profile, precision or 'fp32'


def markdown(metrics, results_dir=None):
    lines = ['| part | model | quantity | value ± stderr (nats) | test images | profile | hardware | epochs | train time |',
             '|---|---|---|---|---|---|---|---|---|']
    for m, q, v in reported(metrics):
        lines.append(f'| {m["part"]} | {m["title"]} | {quantity_name(q)} | {value_text(v)} | {v["n_images"]} | '
                     f'{m["profile"]} | {m.get("hardware", m["device"])} | {m["epochs"]} | '
                     f'{m["train_seconds"] / 60:.0f} min |')
    text = '\n'.join(lines) + f'\n\nFor orientation, published NLLs on binarized MNIST: {literature_text()}.\n'
    checked = verification(metrics, results_dir) if results_dir else None
    if checked:
        text += f'\n{checked}\n'
    table6e = remedies_markdown(metrics)
    if table6e:
        text += '\n**6e, remedies for posterior collapse** (true ELBO and importance-sampled NLL, whatever each trained on):\n\n' + table6e
    for title, para in findings(metrics):
        text += f'\n**{title}.** {para}\n'
    return text


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


def fill(text, begin, end, body):
    if begin not in text or end not in text:
        raise ValueError(f'README has no {begin} ... {end} section to fill')
    return re.sub(re.escape(begin) + '.*?' + re.escape(end), lambda _: f'{begin}\n{body}{end}', text, flags=re.S)


def update_readme(readme, metrics, results_dir='results/cpu'):
    with open(readme) as fh:
        text = fh.read()
    root = os.path.dirname(os.path.normpath(results_dir))
    text = fill(text, BEGIN, END, markdown(metrics, results_dir) if metrics else 'No run has finished yet.\n')
    text = fill(text, SPEED_BEGIN, SPEED_END, speed_markdown(root))
    with open(readme, 'w') as fh:
        fh.write(text)


def tex_escape(s):
    return s.replace('\\', r'\textbackslash{}').replace('&', r'\&').replace('%', r'\%').replace('_', r'\_') \
        .replace('#', r'\#').replace('−', '$-$').replace('‖', r'$\|$').replace('≥', r'$\geq$').replace('±', r'$\pm$')


def latex(metrics, results_dir, tex_path):
    """analysis/results.tex: the table, the findings and each part's figures."""
    rel = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(tex_path)))
    out = [r'\section*{Implementation results}',
           'Every number below is read from \\texttt{' + tex_escape(results_dir) + '/<part>/metrics.json}: '
           'nats per image, mean over the test images used $\\pm$ its standard error.',
           r'\begin{center}\small', r'\begin{tabular}{llrrll}', r'\hline',
           r'part & quantity & value & images & profile, hardware & epochs \\ \hline']
    for m, q, v in reported(metrics):
        out.append(f'{tex_escape(m["part"])} & {tex_escape(quantity_name(q, tex=True))} & {value_text(v, tex=True)} & '
                   f'{v["n_images"]} & {tex_escape(m["profile"])}, {tex_escape(m.get("hardware", m["device"]))} & '
                   f'{m["epochs"]} \\\\')
    out += [r'\hline', r'\end{tabular}', r'\end{center}',
            f'Published NLLs on binarized MNIST, for orientation: {literature_text()}.']
    checked = verification(metrics, results_dir)
    if checked:
        out.append(tex_escape(checked.replace('`', '')))
    rows = remedies(metrics)
    if rows:
        out += [r'\begin{center}\small', r'\begin{tabular}{lrrrrr}', r'\hline',
                r'6e remedy & $-$ELBO & NLL (IS) & KL & active units & minutes \\ \hline']
        for m, nll in rows:
            v = m['values']
            out.append(f'{tex_escape(m["part"])} & {value_text(v["test_elbo"], tex=True)} & '
                       f'{value_text(nll, tex=True) if nll else ""} & {value_text(v["kl"], tex=True)} & '
                       f'{v.get("active_units", {}).get("value", "")} & {m["train_seconds"] / 60:.0f} \\\\')
        out += [r'\hline', r'\end{tabular}', r'\end{center}']
    for title, para in findings(metrics):
        out.append(f'\\paragraph{{{tex_escape(title)}.}} {tex_escape(para)}')
    remedies_png = os.path.join(results_dir, '6e_kl.png')
    if os.path.exists(remedies_png):
        out.append(f'\\begin{{center}}\\includegraphics[width=0.9\\linewidth]{{{rel}/6e_kl.png}}\\\\'
                   f'\\small 6e: KL term against training iteration, all remedies\\end{{center}}')
    for m in metrics:
        figs = [(k, p) for k, p in m.get('figures', {}).items() if os.path.exists(p)]
        if not figs:
            continue
        out.append(f'\\subsection*{{{tex_escape(m["part"])}: {tex_escape(m["title"])}}}')
        for k, p in figs:
            path = os.path.join(rel, os.path.relpath(p, results_dir)).replace(os.sep, '/')
            width = '0.45' if k in ('samples', 'reconstructions') else '0.9'
            out.append(f'\\begin{{center}}\\includegraphics[width={width}\\linewidth]{{{path}}}\\\\'
                       f'\\small {tex_escape(m["part"])}: {tex_escape(k)}\\end{{center}}')
    with open(tex_path, 'w') as fh:
        fh.write('\n'.join(out) + '\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--results-dir', default=os.path.join('results', 'cpu'), help='the run directory to report')
    ap.add_argument('--readme', default='README.md')
    ap.add_argument('--tex', default=os.path.join('analysis', 'results.tex'))
    args = ap.parse_args()
    metrics = load_metrics(args.results_dir)
    remedies_kl_figure(args.results_dir)
    write_remedies(metrics, args.results_dir)
    latex(metrics, args.results_dir, args.tex)
    update_readme(args.readme, metrics, args.results_dir)
    print(f'{len(metrics)} parts -> {args.tex}, {args.readme}')


if __name__ == '__main__':
    main()
