"""What is written from results/, and only the numbers of it: analysis/numbers.tex (one LaTeX macro
per number and table of the results chapter, reporting/numbers.py), the chapter's Markdown twin in
docs/results.md (analysis/results.tex, whose words are written by hand, with the same numbers:
reporting/markdown.py), the 5b and 5c figures at the size and with the titles of the others
(analysis/figures/), README.md's homework map, results tables and GPU and CPU times, and docs/'s
bf16 parity, mutation and speed tables.

    python report.py     # all of the above; then `make -C analysis` builds analysis/hw2.pdf
    python report.py --results-dir results --readme README.md --docs docs --analysis analysis
"""
import argparse
import os
import re

from engine import ROOT
from engine.config import TITLES, quantity_label, with_defaults
from reporting.answers import CITES, REMEDIES, is_q, run_name, with_n
from reporting.markdown import to_markdown
from reporting.numbers import Runs, chapter_numbers, chapter_tables
from reporting.tables import bf16_runs_markdown, cpu_hours_markdown, mutation_markdown, speed_markdown, \
    unfinished_markdown
from reporting.reader import load_runs, trained_on, training_minutes, training_time
from engine.files import read_json


def markers(name):
    """The two comments between which a generated section of a Markdown file stands."""
    return f'<!-- {name}:begin -->', f'<!-- {name}:end -->'


BEGIN, END = markers('results')
TABLES_BEGIN, TABLES_END = markers('tables')
MAP_BEGIN, MAP_END = markers('map')
GPU_BEGIN, GPU_END = markers('gpu')
CPU_BEGIN, CPU_END = markers('cpu')
SPEED_BEGIN, SPEED_END = markers('speed')
MUTATION_BEGIN, MUTATION_END = markers('mutation')
PRECISION_BEGIN, PRECISION_END = markers('precision')
PROFILES_BEGIN, PROFILES_END = markers('profiles')

PROFILE_WORDS = {'full': "the course's settings", 'cpu': 'smaller networks, fewer epochs, for a laptop CPU',
                 'smoke': 'a few steps of tiny networks: checks that everything runs, learns nothing'}


# The handout's items: (item, what it asks, parts and quantities that answer it, figure, (notebook,
# text of the cell that runs it, its parameters), where the implementation or the proof is).
HOMEWORK = [
    ('5a', 'implement ConvnetBlock', (), (), None, None, '`models.ConvnetBlock`'),
    ('5b', 'Gaussian VAE, closed-form KL: samples', ('5b',), ('test_elbo', 'kl'), 'samples',
     ('gaussian_vae.ipynb', "run_parts(['5b'", ''),
     '`losses.gaussian_elbo`, `models.VAEEncoder.reparameterize`, `models.GaussianVAEDecoder`'),
    ('5c', 'Monte-Carlo KL: test ELBO, against 5b', ('5c',), ('test_elbo',), 'samples',
     ('gaussian_vae.ipynb', "compare(['5b'", ''), '`losses.mc_gaussian_elbo`'),
    ('6a', 'PixelCNN: test log-likelihood', ('6a',), ('test_nll',), 'samples', ('pixelcnn.ipynb', "run_part('6a'", ''),
     '`models.MaskedConv2d`, `models.MaskedConvnetBlock`, `models.PixelCNN`, `losses.cross_entropy`'),
    ('6b', 'binary VAE: test NLL, importance sampling', ('6b',), ('test_nll_is',), 'samples',
     ('binaryvae.ipynb', 'run_part(part', ', autoregress = False, flows = 0'),
     '`losses.discrete_output_elbo`, `engine.evaluate.importance_sampled_nll`'),
    ('6c', 'PixelVAE: test ELBO against NLL; KL against iteration', ('6c',), ('test_elbo', 'test_nll_is', 'kl'), 'kl',
     ('binaryvae.ipynb', 'run_part(part', ', autoregress = True'),
     '`models.DiscreteVAEDecoder`, `engine.train.Training.start_epoch`, `engine.figures.kl_figure`'),
    ('6d', 'IAF encoder: test NLL', ('6d',), ('test_nll_is',), 'samples',
     ('binaryvae.ipynb', 'run_part(part', ', flows = 8'), '`models.IAF`, `models.VAEEncoder.reparameterize`'),
    ('6e', 'PixelVAE + IAF: prevent posterior collapse?', tuple(REMEDIES), ('kl',), '6e_kl',
     ('binaryvae.ipynb', 'run_part(part', ', remedy = "baseline", "warmup", "freebits" or "weak"'),
     '`engine.objectives.kl_weight`, `engine.objectives.free_bits_kl`, `engine.config.PARTS`, '
     '`reporting.display.show_remedies`'),
    ('Problem 1', 'KL between Gaussians', (), (), None, None, '`analysis/p1_kl.tex`; used in `losses.gaussian_elbo`'),
    ('Problem 2', 'importance sampling is biased, consistent', (), (), None, None,
     '`analysis/p2_importance_sampling.tex`; used in `engine.evaluate.importance_sampled_nll`'),
    ('Problem 3', 'density of a normalizing flow', (), (), None, None,
     '`analysis/p3_flows.tex`; used in `models.VAEEncoder.reparameterize`'),
    ('Problem 4', 'entropy gradient estimator', (), (), None, None,
     '`analysis/p4_entropy_gradient.tex`; checked numerically in `tests/test_analysis.py`'),
]


# ------------------------------------------------------------------------------------------------
# analysis/numbers.tex and the chapter's Markdown twin

TEX = {'\\': r'\textbackslash{}', '&': r'\&', '%': r'\%', '_': r'\_', '#': r'\#', '$': r'\$', '{': r'\{',
       '}': r'\}', '^': r'\^{}', '~': r'$\sim$', '|': '$|$', '<': r'\textless{}', '>': r'\textgreater{}', '−': '$-$',
       '–': '--', '±': r'\,$\pm$\,', '‖': r'$\|$', '≥': r'$\geq$', '≤': r'$\leq$', '≈': r'$\approx$', '→': r'$\to$',
       'σ': r'$\sigma$', 'μ': r'$\mu$', 'λ': r'$\lambda$', '²': '$^2$', '×': r'$\times$', '÷': r'$\div$', 'ø': r'{\o}'}


def tex(text):
    """Plain text as LaTeX: special characters escaped, `code` in typewriter type."""
    s = ''.join(TEX.get(ch, ch) for ch in text)
    return re.sub(r'`([^`]*)`', lambda m: r'\texttt{' + m.group(1) + '}', s)


def table_tex(t):
    """A Table (reporting/numbers.py) as a tabular, scaled down to the line when wider."""
    def line(cells):
        return ' & '.join(tex(str(c)) for c in cells) + r' \\'
    return (r'\fitwidth{\begin{tabular}{' + t.align + r'}\hline ' + line(t.header) + r' \hline '
            + ' '.join(map(line, t.rows)) + r' \hline\end{tabular}}')


def table_markdown(t):
    return ('| ' + ' | '.join(t.header) + ' |\n|' + '---|' * len(t.header) + '\n'
            + ''.join('| ' + ' | '.join(map(str, r)) + ' |\n' for r in t.rows))


def numbers_tex(numbers, tables):
    """analysis/numbers.tex: \\newcommand for each number and table of the chapter."""
    lines = ['% The numbers and tables of the results chapter (analysis/results.tex), one macro each, generated',
             '% by `python report.py` from results/ (reporting/numbers.py): do not edit by hand.',
             r'\providecommand{\pinned}[1]{}  % \pinned{key}: the sentence is checked by reporting/claims.py',
             r'\providecommand{\fitwidth}[1]{\setbox0\hbox{#1}\ifdim\wd0>\linewidth'
             r'\resizebox{\linewidth}{!}{\box0}\else\box0\fi}']
    lines += [f'\\newcommand{{\\{name}}}{{{tex(n.text)}\\xspace}}' for name, n in numbers.items()]
    lines += [f'\\newcommand{{\\{name}}}{{{table_tex(t)}}}' for name, t in tables.items()]
    return '\n'.join(lines) + '\n'


def chapter_markdown(tex_path, numbers, tables, md_dir):
    """analysis/results.tex in Markdown, its macros filled in, figure paths relative to md_dir."""
    with open(tex_path) as fh:
        source = fh.read()
    return to_markdown(source, {k: n.text for k, n in numbers.items()},
                       {k: table_markdown(t) for k, t in tables.items()}, os.path.dirname(os.path.abspath(tex_path)),
                       md_dir)


def redraw_grid(src, dst, title, labels):
    """A figure of a run's raw image grid (make_grid, 28-pixel tiles, padding 2), drawn again as the
    engine draws the others (engine.figures.image_rows): one row of images per label, the title above."""
    import numpy as np
    import torch
    from PIL import Image
    from engine.figures import image_rows
    grid = torch.from_numpy(np.asarray(Image.open(src).convert('L'), dtype=np.float32) / 255)
    rows, cols = (grid.shape[0] - 2) // 30, (grid.shape[1] - 2) // 30
    tiles = [grid[2 + 30 * r:30 + 30 * r, 2 + 30 * c:30 + 30 * c] for r in range(rows) for c in range(cols)]
    images = torch.stack(tiles).unsqueeze(1)
    per_row = len(images) // len(labels)
    image_rows([(label, images[i * per_row:(i + 1) * per_row]) for i, label in enumerate(labels)], dst, title, cols)
    return dst


def gaussian_figures(runs, out_dir):
    """5b's and 5c's samples and reconstructions, drawn from their runs' grids at the others' size."""
    os.makedirs(out_dir, exist_ok=True)
    done = []
    for part in ('5b', '5c'):
        m = next((r['parts'][part] for r in runs if part in r['parts']), None)
        if m is None:
            continue
        for kind, title, labels in (
                ('samples', f'{part}: {TITLES[part]}, decoder means g(z), z ~ N(0, I)', ['']),
                ('reconstructions', f'{part}: test images and their reconstructions from z = mu(x)',
                 ['test images', 'reconstructions'])):
            src = os.path.join(m['dir'], f'{kind}.png')
            if os.path.exists(src):
                done.append(redraw_grid(src, os.path.join(out_dir, f'{part}-{kind}.png'), title, labels))
    return done


# ------------------------------------------------------------------------------------------------
# README.md's generated sections

def glance_table(runs, parts, caption):
    """One row per reported quantity of the parts, one column per run directory that has any of them,
    course settings first: value ± standard error (test images)."""
    cols = [r for r in runs if any(p in r['parts'] for p in parts)]
    rows = []
    for part in parts:
        values = [r['parts'].get(part, {}).get('values', {}) for r in cols]
        for q in dict.fromkeys(q for vs in values for q in vs if q not in ('test_recon', 'kl_mc')):
            rows.append((part, quantity_label(q), *(with_n(vs.get(q), table=True) for vs in values)))
    if not rows:
        return ''
    header = ('part', 'quantity', *(run_name(r, parts) for r in cols))
    return (f'**{caption}** Nats per image: mean ± standard error (the test images it covers); active units: '
            'latent dimensions in use.\n\n| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header) + '\n'
            + ''.join(f'| {" | ".join(map(str, r))} |\n' for r in rows))


def seeded(runs):
    """Whether any run directory holds a part trained from another seed (<part>-seed<k>, finished)."""
    return any(re.fullmatch(r'.+-seed\d+', name) and os.path.exists(os.path.join(r['path'], name, 'metrics.json'))
               for r in runs for name in os.listdir(r['path']))


def glance(runs):
    """README.md's results tables, after one paragraph on where the numbers come from."""
    seeds = ('Some configurations also trained from other seeds (`<part>-seed<k>`): the spread between seeds of '
             'each comparison is in the seed table of [`docs/results.md`](docs/results.md), and the standard errors '
             'here are over test images only.' if seeded(runs) else
             'Each configuration trained once, from one seed: the standard errors are over test images, not between '
             'seeds.')
    text = ('Read from `results/<profile>[-<precision>]/<part>/metrics.json`. ' + seeds + ' The importance-sampled '
            'NLLs cover the test images each cell names; the first 1,000 are easier than the rest, so compare them '
            'only over the same images. Which run is which, where it trained and what the handout sets: '
            '[`docs/results.md`](docs/results.md), "Runs and settings". Our binarized test set is a seeded sample, '
            'not the fixed one of the papers. ' + (verification(runs) or ''))
    tables = [glance_table(runs, ['5b', '5c'], 'Problem 5, Gaussian VAEs on MNIST.'),
              glance_table(runs, ['6a', '6b', '6c', '6d'], 'Problem 6a–d, binarized MNIST.'),
              glance_table(runs, REMEDIES, 'Problem 6e: PixelVAE with an IAF encoder, without and with a remedy for '
                                          'posterior collapse; the true ELBO and the NLL, whatever each trained.')]
    return '\n'.join([text + '\n'] + [t for t in tables if t])


def verification(runs):
    """One sentence on results/verify.json (written by `experiments.py verify`) for every run
    together: how many of the reported numbers were recomputed by their `reproduce` command and
    agreed, counting a check only if it was made against the value reported now; the numbers that
    disagreed or are unchecked, by run. None when nothing has been checked."""
    path = os.path.join(os.path.dirname(os.path.normpath(runs[0]['path'])), 'verify.json') if runs else ''
    if not os.path.exists(path):
        return None
    checks = {(c.get('profile', 'cpu'), c.get('precision', 'fp32'), c['part'], c['quantity']): c
              for c in read_json(path)}
    rows, unchecked = [], {}
    for r in runs:
        for m in r['parts'].values():
            for q, v in m['values'].items():
                if q in ('test_recon', 'kl_mc'):
                    continue
                c = checks.get((r['profile'], r['precision'], m['part'], q))
                if c is not None and c['reported'] == v['value']:
                    rows.append(c)
                else:
                    unchecked[r['name']] = unchecked.get(r['name'], 0) + 1
    total = len(rows) + sum(unchecked.values())
    ok = [c for c in rows if c['ok']]
    failed = [f'{c.get("profile", "cpu")} {c["part"]} {c["quantity"]}' for c in rows if not c['ok']]
    count = f'All {total}' if len(ok) == total else f'{len(ok)} of the {total}'
    return (f'{count} numbers of these tables were recomputed from their model files by `python experiments.py '
            f'verify` (each in a fresh process; `{path}`) and agreed within max(0.05, stderr)'
            + (f'; the longest took {max(c["seconds"] for c in ok) / 60:.0f} min' if ok else '')
            + (f'; did not agree: {", ".join(failed)}' if failed else '')
            + ('; not yet checked against their current value: ' + ', '.join(
                f'{n} of {name}' for name, n in unchecked.items()) if unchecked else '') + '.')


def notebook_cell(notebook, needle):
    """'`name` cell N': the (1-based) cell of a notebook whose source holds needle."""
    path = os.path.join(ROOT, notebook)
    cells = read_json(path)['cells'] if os.path.exists(path) else []
    found = [i for i, c in enumerate(cells) if needle in ''.join(c['source'])]
    return f'`{notebook}` cell {found[0] + 1}' if found else f'`{notebook}`'


def map_row(runs, base, item, asks, parts, qs, fig, nb, code):
    """One item of the homework map: the number that answers it (from the first run that has each
    part, course settings first; the run of each named where an item mixes runs), its figure,
    notebook cell and implementation."""
    numbers, figs, names = [], [], []
    for part in parts:
        run = next((r for r in runs if part in r['parts']), None)
        m = run and run['parts'][part]
        numbers.append((run and run_name(run, parts), [f'{part}: not run yet'] if m is None else [
            (f'{part} ' if len(parts) > 1 else '') + f'{quantity_label(q)}: {with_n(m["values"][q], table=True)}'
            for q in (is_q(m) if q == 'test_nll_is' else q for q in qs) if q in m['values']]))
        names += [run_name(run, parts)] if run and run_name(run, parts) not in names else []
        path = m and os.path.join(m['dir'] if fig != '6e_kl' else run['path'], f'{fig}.png')
        figs += [path] if path and os.path.exists(path) and path not in figs else []
    if len(names) > 1:
        number = '; '.join('; '.join(texts) + (f' ({name})' if name else '') for name, texts in numbers)
    else:
        number = '; '.join(t for _, texts in numbers for t in texts) + (f'; {names[0]}' if names else '')
    return (f'| {item} | {asks} | {number or ("proof" if item.startswith("Problem") else "code")} | '
            + ', '.join(f'[{os.path.basename(p)}]({os.path.relpath(p, base)})' for p in figs)
            + f' | {notebook_cell(*nb[:2]) + nb[2] if nb else ""} | {code} |')


def homework_map(runs, base):
    """The handout's items, one row each (map_row)."""
    lines = ['| item | the handout asks | number: nats per image ± standard error (test images); run | figure | '
             'notebook | implementation |', '|---|---|---|---|---|---|']
    return '\n'.join(lines + [map_row(runs, base, *h) for h in HOMEWORK]) + '\n'


def on_gpu(m):
    """True if any of a run's training sittings was on CUDA."""
    sittings = m.get('sittings') or [dict(device=m.get('device', ''))]
    return any(str(s.get('device')).startswith('cuda') for s in sittings)


def gpu_time(runs):
    """The measured time of each part trained on a GPU, or a sentence saying that none has been;
    a part trained partly elsewhere shows the time on each device."""
    rows = [(r, m) for r in runs for m in r['parts'].values() if on_gpu(m)]
    if not rows:
        return ('Nothing has been measured on a GPU yet: no run in `results/` was trained on one, and the GPU path '
                '(CUDA graphs, `--jobs`, fp16, the training step without host reads) is tested on the CPU with '
                'stand-ins only. `python experiments.py estimate --profile full` measures the machine it runs on and '
                'prints the expected time of each part.\n')
    return '| part | run | hardware | training | evaluation |\n|---|---|---|---|---|\n' + ''.join(
        f'| {m["part"]} | {run_name(r, [m["part"]])} | {trained_on(m)} | {training_minutes(m, digits=0)} | '
        f'{m.get("eval_seconds", 0) / 60:.0f} min'
        + (f' {m["hardware"]}' if m.get('hardware') and trained_on(m) != m['hardware'] else '') + ' |\n'
        for r, m in rows)


def fill_file(path, sections):
    """Replace each generated section [(begin marker, end marker, body)] of a file."""
    with open(path) as fh:
        text = fh.read()
    for begin, end, body in sections:
        if begin not in text or end not in text:
            raise ValueError(f'{path} has no {begin} ... {end} section to fill')
        filled = f'{begin}\n{body}{end}'
        text = re.sub(re.escape(begin) + '.*?' + re.escape(end), lambda _, filled=filled: filled, text, flags=re.S)
    with open(path, 'w') as fh:
        fh.write(text)


def profile_times(runs):
    """What each profile is, and how long a part of it took (training and evaluation, wall time over
    its sittings) on the hardware of the committed runs: the fastest and slowest part, named."""
    lines = ['| profile | what it is | a part took (training + evaluation), on | on a GPU |', '|---|---|---|---|']
    for profile, words in PROFILE_WORDS.items():
        ms = [m for r in runs if r['profile'] == profile for m in r['parts'].values()]
        cpu = [m for m in ms if all(label.startswith('CPU') for label, _ in training_time(m))]
        gpu = [m for m in ms if m not in cpu]
        lines.append(f'| {profile} | {words} | {part_span(cpu)} | {part_span(gpu)} |')
    return '\n'.join(lines) + '\n'


def part_span(ms):
    """'6d 14 min – 6c 56 min (results/cpu), CPU (x86_64), 2 cores' over the runs ms, or 'not measured yet'."""
    if not ms:
        return 'not measured yet'
    took = sorted((m['train_seconds'] + m.get('eval_seconds', 0.0), m['part'], m) for m in ms)
    (lo, lo_part, _), (hi, hi_part, _) = took[0], took[-1]
    hardware = ' and '.join(sorted({label for m in ms for label, _ in training_time(m)}))
    return f'{lo_part} {duration_words(lo)} – {hi_part} {duration_words(hi)}; {hardware}'


def duration_words(seconds):
    return f'{seconds / 60:.0f} min' if seconds < 5400 else f'{seconds / 3600:.1f} h'


def update_readme(readme, runs, results_dir='results'):
    """README.md's homework map, results tables, GPU times and course-settings times on a CPU, from
    runs (load_runs) and the benchmark's files in results_dir."""
    base = os.path.dirname(os.path.abspath(readme))
    fill_file(readme, [(MAP_BEGIN, MAP_END, homework_map(runs, base)),
                       (TABLES_BEGIN, TABLES_END, glance(runs) if runs else 'No run has finished yet.\n'),
                       (GPU_BEGIN, GPU_END, gpu_time(runs)),
                       (PROFILES_BEGIN, PROFILES_END, profile_times(runs)),
                       (CPU_BEGIN, CPU_END,
                        cpu_hours_markdown(runs, results_dir) + '\n' + unfinished_markdown(runs, results_dir))])


def update_docs(docs, results_dir, chapter=None):
    """The generated sections of docs/: the results chapter (results.md, when given), the bf16 parity
    table (running.md), the mutation scores (mutation.md) and the speed tables (speed.md)."""
    if chapter is not None:
        fill_file(os.path.join(docs, 'results.md'), [(BEGIN, END, chapter)])
    fill_file(os.path.join(docs, 'running.md'), [(PRECISION_BEGIN, PRECISION_END, bf16_runs_markdown(results_dir) or
                                                  'No part has been trained in both precisions yet.\n')])
    fill_file(os.path.join(docs, 'mutation.md'), [(MUTATION_BEGIN, MUTATION_END, mutation_markdown(results_dir))])
    fill_file(os.path.join(docs, 'speed.md'), [(SPEED_BEGIN, SPEED_END, speed_markdown(results_dir))])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--results-dir', default='results',
                    help='the folder of the run directories <profile>[-<precision>]')
    ap.add_argument('--readme', default='README.md')
    ap.add_argument('--docs', default='docs', help='the folder of results.md, running.md, mutation.md and speed.md')
    ap.add_argument('--analysis', default='analysis', help='the folder of results.tex, numbers.tex and figures/')
    args = ap.parse_args()
    runs = load_runs(args.results_dir)
    r = Runs(args.results_dir)
    numbers, tables = chapter_numbers(r), chapter_tables(r)
    with open(os.path.join(args.analysis, 'numbers.tex'), 'w') as fh:
        fh.write(numbers_tex(numbers, tables))
    figures = gaussian_figures(runs, os.path.join(args.analysis, 'figures'))
    chapter = chapter_markdown(os.path.join(args.analysis, 'results.tex'), numbers, tables,
                               os.path.abspath(args.docs))
    update_readme(args.readme, runs, args.results_dir)
    update_docs(args.docs, args.results_dir, chapter)
    print(f'{len(numbers)} numbers and {len(tables)} tables -> {args.analysis}/numbers.tex; {len(figures)} figures -> '
          f'{args.analysis}/figures/; {args.readme}, {args.docs}/')


def remedies_markdown(metrics):
    """The 6e table of one run directory's metrics (true ELBO and IS NLL, whatever each remedy trained)."""
    run = dict(name='', profile=metrics[0]['profile'] if metrics else '', parts={m['part']: m for m in metrics},
               precision=with_defaults(metrics[0].get('config') or {})['precision'] if metrics else 'fp32')
    return glance_table([run], REMEDIES, 'PixelVAE with an IAF encoder, remedies for posterior collapse.')


def resolve(text, numbers=None):
    """[[cite:key]] marks of a text in words (the notebooks' readings)."""
    return re.sub(r'\[\[cite:([^\]]+)\]\]', lambda m: f'({CITES[m[1]]})', text)


if __name__ == '__main__':
    main()
