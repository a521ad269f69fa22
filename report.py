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
            path = os.path.join(os.path.dirname(m.get('checkpoint') or ''), 'history.json')
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
        diff = c['value'] - b['value']
        se = (b['stderr'] ** 2 + c['stderr'] ** 2) ** 0.5
        out.append(('5c: closed-form vs Monte-Carlo KL',
                    f'Trained with the closed-form KL (5b) the test −ELBO is {value_text(b)} nats; trained with '
                    f'the one-sample Monte-Carlo KL (5c) it is {value_text(c)} (both evaluated with the closed-form '
                    f'KL over {b["n_images"]} test images; difference {diff:+.2f} ± {se:.2f}). '
                    + (f'Evaluating 5b with the Monte-Carlo KL instead gives {value_text(bmc)}: the estimator is '
                       f'unbiased, so the two evaluations agree up to its noise. ' if bmc else '')
                    + 'Both train the same objective in expectation; the Monte-Carlo KL only adds gradient '
                      'variance, which shows up as a '
                    + ('worse' if diff > 2 * se else 'statistically indistinguishable' if abs(diff) <= 2 * se else 'better')
                    + ' test bound at this budget.'))
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
        out.append(('6d: what IAF buys',
                    f'With 8 IAF steps in the encoder the importance-sampled NLL is {value_text(d6)} against '
                    f'{value_text(b6)} for the diagonal-Gaussian encoder of 6b (same decoder, same budget). '
                    f'A richer posterior tightens the ELBO (6d −ELBO {value_text(get(metrics, "6d", "test_elbo"))}, '
                    f'6b {value_text(get(metrics, "6b", "test_elbo"))}) and lets the decoder be trained against a '
                    f'better inference model.'))
    remedies = [m for m in metrics if m['part'].startswith('6e-')]
    if remedies:
        kept = [(m['part'], m['values']['kl']['value'], is_value(metrics, m['part'])) for m in remedies if 'kl' in m['values']]
        alive = [k for k in kept if k[1] >= 1.0]
        best = min(alive, key=lambda k: k[2]['value']) if alive else None
        text = 'Final KL per remedy: ' + ', '.join(f'{p} {k:.2f} nats' for p, k, _ in kept) + '. '
        if best:
            text += (f'Of the remedies that keep the latent in use (KL ≥ 1 nat), {best[0]} has the lowest NLL, '
                     f'{value_text(best[2])}.')
        else:
            text += 'No remedy kept the KL at or above 1 nat in this run.'
        out.append(('6e: preventing posterior collapse', text))
    return out


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


def markdown(metrics):
    lines = ['| part | model | quantity | value ± stderr (nats) | test images | profile | hardware | epochs | train time |',
             '|---|---|---|---|---|---|---|---|---|']
    for m, q, v in reported(metrics):
        lines.append(f'| {m["part"]} | {m["title"]} | {quantity_name(q)} | {value_text(v)} | {v["n_images"]} | '
                     f'{m["profile"]} | {m.get("hardware", m["device"])} | {m["epochs"]} | '
                     f'{m["train_seconds"] / 60:.0f} min |')
    text = '\n'.join(lines) + f'\n\nFor orientation, published NLLs on binarized MNIST: {literature_text()}.\n'
    for title, para in findings(metrics):
        text += f'\n**{title}.** {para}\n'
    return text


def speed_markdown(results_dir):
    """The benchmark table from results/bench_<device>.json and, beside it,
    results/bench_<device>_straightforward.json (written by bench.py)."""
    tables = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        if not (name.startswith('bench_') and name.endswith('.json')) or name.endswith('_straightforward.json'):
            continue
        with open(os.path.join(results_dir, name)) as fh:
            ours = json.load(fh)
        plain_path = os.path.join(results_dir, name[:-5] + '_straightforward.json')
        plain = json.load(open(plain_path)) if os.path.exists(plain_path) else {}
        lines = [f'`{results_dir}/{name}` ({ours.get("device", name[6:-5])}):', '',
                 '| workload | this implementation | straightforward solution | speed-up |', '|---|---|---|---|']
        for group, key, label in BENCH_ROWS:
            a, b = ours[group][key], plain.get(group, {}).get(key)
            ratio = '' if b is None else f'{(b / a if group == "sample_s" else a / b):.1f}x'
            lines.append(f'| {label}: {key} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | {ratio} |')
        tables.append('\n'.join(lines) + '\n')
    return '\n'.join(tables) if tables else 'No benchmark has been run yet.\n'


def fill(text, begin, end, body):
    if begin not in text or end not in text:
        raise ValueError(f'README has no {begin} ... {end} section to fill')
    return re.sub(re.escape(begin) + '.*?' + re.escape(end), lambda _: f'{begin}\n{body}{end}', text, flags=re.S)


def update_readme(readme, metrics, results_dir='results'):
    with open(readme) as fh:
        text = fh.read()
    text = fill(text, BEGIN, END, markdown(metrics) if metrics else 'No run has finished yet.\n')
    text = fill(text, SPEED_BEGIN, SPEED_END, speed_markdown(results_dir))
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
    for title, para in findings(metrics):
        out.append(f'\\paragraph{{{tex_escape(title)}.}} {tex_escape(para)}')
    remedies = os.path.join(results_dir, '6e_kl.png')
    if os.path.exists(remedies):
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
    ap.add_argument('--results-dir', default='results')
    ap.add_argument('--readme', default='README.md')
    ap.add_argument('--tex', default=os.path.join('analysis', 'results.tex'))
    args = ap.parse_args()
    metrics = load_metrics(args.results_dir)
    remedies_kl_figure(args.results_dir)
    latex(metrics, args.results_dir, args.tex)
    update_readme(args.readme, metrics, args.results_dir)
    print(f'{len(metrics)} parts -> {args.tex}, {args.readme}')


if __name__ == '__main__':
    main()
