"""The results chapter of CSE 599i Homework 2, built once as a list of blocks, ('h', title),
('p', text), ('table', label, caption, header, rows, LaTeX columns) and ('fig', label, paths,
caption), and written twice: as Markdown into docs/results.md and as LaTeX into
analysis/results.tex (`make -C analysis`). The README gets the homework map, the results tables
and the GPU times; docs/ the bf16 parity, mutation and speed tables. Texts mark references as
[[fig:x]], [[tab:x]] and [[cite:key]] (keys of analysis/hw2.tex's bibliography).

    python report.py     # README.md's and docs/'s generated sections, analysis/results.tex
    python report.py --results-dir results --readme README.md --docs docs --tex analysis/results.tex
"""
import argparse
import os
import re

from reporting.answers import (ANSWERS, CITES, DATA_NOTE, HANDOUT, LITERATURE, REMEDIES, View, departures, is_q,
                               run_name, shown, with_n)
from engine import ROOT
from engine.config import DEFAULTS, PARTS, PROFILES, REASONS, TITLES, config, quantity_label, with_defaults
from engine.figures import remedies_kl_figure
from reporting.tables import bf16_runs_markdown, cpu_hours_markdown, mutation_markdown, speed_markdown, \
    unfinished_markdown
from reporting.reader import load_runs, per_image, trained_on, training_minutes, training_time
from engine.files import read_json


BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'


TABLES_BEGIN, TABLES_END = '<!-- tables:begin -->', '<!-- tables:end -->'


MAP_BEGIN, MAP_END = '<!-- map:begin -->', '<!-- map:end -->'


GPU_BEGIN, GPU_END = '<!-- gpu:begin -->', '<!-- gpu:end -->'


CPU_BEGIN, CPU_END = '<!-- cpu:begin -->', '<!-- cpu:end -->'


SPEED_BEGIN, SPEED_END = '<!-- speed:begin -->', '<!-- speed:end -->'


MUTATION_BEGIN, MUTATION_END = '<!-- mutation:begin -->', '<!-- mutation:end -->'


PRECISION_BEGIN, PRECISION_END = '<!-- precision:begin -->', '<!-- precision:end -->'


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
     '`engine.train.kl_weight`, `engine.train.free_bits_kl`, `engine.config.PARTS`, `reporting.display.show_remedies`'),
    ('Problem 1', 'KL between Gaussians', (), (), None, None, '`analysis/p1_kl.tex`; used in `losses.gaussian_elbo`'),
    ('Problem 2', 'importance sampling is biased, consistent', (), (), None, None,
     '`analysis/p2_importance_sampling.tex`; used in `engine.evaluate.importance_sampled_nll`'),
    ('Problem 3', 'density of a normalizing flow', (), (), None, None,
     '`analysis/p3_flows.tex`; used in `models.VAEEncoder.reparameterize`'),
    ('Problem 4', 'entropy gradient estimator', (), (), None, None,
     '`analysis/p4_entropy_gradient.tex`; checked numerically in `tests/test_analysis.py`'),
]


def except_parts(profile, key, value):
    """', except 6d, 6e-baseline, ...': the parts of a profile that set a shared setting otherwise."""
    others = [p for p in PARTS if config(p, profile)[key] != value]
    return f', except {", ".join(others)}' if others else ''


def handout_settings():
    """The settings the handout itself sets (answers.HANDOUT), in words: '6b: is_samples = 1000, ...'."""
    parts = dict.fromkeys(p for p, _ in HANDOUT)
    return '; '.join(f'{p}: ' + ', '.join(f'{k} = {shown(k, v)}' for (q, k), v in HANDOUT.items() if q == p)
                     for p in parts)


def settings_blocks():
    """Each profile against the full profile's settings (the course settings), generated from engine/config.py."""
    blocks = [('p', f'The course settings are the full profile (`engine.config.PARTS` over `engine.config.DEFAULTS`: batch '
                    f'{DEFAULTS["batch_size"]}, Adam, the course framework\'s networks; `python experiments.py list '
                    f'--profile PROFILE` prints every setting). The handout itself sets only a few of them: '
                    f'{handout_settings()}. The full profile\'s other values are the course framework\'s, and those of '
                    f'6e, which has no course setting, are our own. The smoke profile, seconds per part, serves the '
                    f'tests. The other profiles depart from the full profile as [[tab:settings]] lists; in brackets '
                    f'the full profile\'s value, marked "handout" where the handout sets it.')]
    for profile in (p for p in PROFILES if p not in ('full', 'smoke')):
        shared = PROFILES[profile].get('*', {})
        rows = []
        for part in PARTS:
            cfg = config(part, profile)
            same = [k for k in shared if cfg[k] == shared[k]]  # said once, below the table
            rows.append((part, TITLES[part], ', '.join(departures(cfg, config(part, 'full'), same, part=part))
                         or "the full profile's settings"))
        blocks += [('table', 'settings', f'The {profile} profile: the settings of each part that differ from the '
                    f'full profile\'s (in brackets; "handout" where the handout sets the value).',
                    ('part', 'what', f'{profile} profile (full profile)'), rows,
                    r'lp{0.27\linewidth}p{0.57\linewidth}'),
                   ('p', f'The parts of the {profile} profile also have ' + '; '.join(
                       f'{k} = {shown(k, v)} (full profile {shown(k, DEFAULTS[k])}{except_parts(profile, k, v)})'
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


def glance_blocks(runs, brief=False):
    """The tables of every reported number, after a paragraph on where the numbers come from (brief:
    the runs and the verification only, for the README)."""
    hardware = {r['name']: ', '.join(sorted({label for m in r['parts'].values() for label, _ in training_time(m)}))
                for r in runs}
    paired = [f'{r["name"]}/{p}' for r in runs for p, m in r['parts'].items() if per_image(m)]
    checked = verification(runs) or ''
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
            + f'. Set beside them, {DATA_NOTE}: each pixel of each test image is drawn once, with probability its '
              f'grey level, from the seeded stream of `engine.data.BINARIZE_SEED`, so our numbers and theirs are not '
              f'measured on the same images. ' + checked)
    if brief:
        text = ('Nats per image: mean ± standard error (number of test images), read from '
                '`results/<profile>[-<precision>]/<part>/metrics.json`. Runs: '
                + '; '.join(f'{r["name"]} ({run_name(r)}) on {hardware[r["name"]]}' for r in runs) + '. '
                + f'Our binarized test set is a seeded sample, not the fixed one of the papers. {checked}')
    return [('h', 'Results at a glance'), ('p', text)] + \
        glance_table(runs, ['5b', '5c'], 'p5', 'Problem 5, Gaussian VAEs on MNIST.') + \
        glance_table(runs, ['6a', '6b', '6c', '6d'], 'p6', 'Problem 6a–d, binarized MNIST.') + \
        glance_table(runs, REMEDIES, '6e', 'Problem 6e: PixelVAE with an IAF encoder, without and with a remedy for '
                                           'posterior collapse; the true ELBO and the NLL, whatever each trained.')


def chapter(runs):
    """The blocks of the results chapter: settings, tables, then one answer per handout item. Each
    part is quoted from its first run directory (runs: course settings first, float32 before bf16),
    and an answer says which of its parts have no course-settings run yet."""
    blocks = [('h', 'Settings')] + settings_blocks() + glance_blocks(runs)
    view = View(runs)
    for heading, needs, write in ANSWERS:
        missing = [p for p in needs if p not in view]
        blocks.append(('h', heading))
        blocks += [('p', f'Not run yet: {", ".join(missing)}.')] if missing else write(view)
    return blocks


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


def verification(runs):
    """One sentence on results/verify.json (written by `experiments.py verify`) for every run
    together: how many of the reported numbers were recomputed by their `reproduce` command and
    agreed, counting a check only if it was made against the value reported now; the numbers that
    disagreed or are unchecked, by run. None when nothing has been checked."""
    path = os.path.join(os.path.dirname(os.path.normpath(runs[0]['path'])), 'verify.json') if runs else ''
    if not os.path.exists(path):
        return None
    checks = {(c.get('profile', 'cpu'), c.get('precision', 'fp32'), c['part'], c['quantity']): c for c in read_json(path)}
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


def homework_map(runs, base):
    """The handout's items: the number that answers each (from the first run that has it, course
    settings first; an item whose parts come from different runs names the run of each), its
    figure, notebook cell and implementation."""
    lines = ['| item | the handout asks | number: nats per image ± standard error (test images); run | figure | '
             'notebook | implementation |', '|---|---|---|---|---|---|']
    for item, asks, parts, qs, fig, nb, code in HOMEWORK:
        numbers, figs, names = [], [], []
        for part in parts:
            run = next((r for r in runs if part in r['parts']), None)
            m = run and run['parts'][part]
            numbers.append((run and run_name(run), [f'{part}: not run yet'] if m is None else [
                (f'{part} ' if len(parts) > 1 else '') + f'{quantity_label(q)}: {with_n(m["values"][q], table=True)}'
                for q in (is_q(m) if q == 'test_nll_is' else q for q in qs) if q in m['values']]))
            names += [run_name(run)] if run and run_name(run) not in names else []
            path = m and os.path.join(m['dir'] if fig != '6e_kl' else run['path'], f'{fig}.png')
            figs += [path] if path and os.path.exists(path) and path not in figs else []
        if len(names) > 1:
            number = '; '.join('; '.join(texts) + (f' ({name})' if name else '') for name, texts in numbers)
        else:
            number = '; '.join(t for _, texts in numbers for t in texts) + (f'; {names[0]}' if names else '')
        lines.append(f'| {item} | {asks} | {number or ("proof" if item.startswith("Problem") else "code")} | '
                     + ', '.join(f'[{os.path.basename(p)}]({os.path.relpath(p, base)})' for p in figs)
                     + f' | {notebook_cell(*nb[:2]) + nb[2] if nb else ""} | {code} |')
    return '\n'.join(lines) + '\n'


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
        f'| {m["part"]} | {run_name(r)} | {trained_on(m)} | {training_minutes(m, digits=0)} | '
        f'{m.get("eval_seconds", 0) / 60:.0f} min'
        + (f' {m["hardware"]}' if m.get('hardware') and trained_on(m) != m['hardware'] else '') + ' |\n' for r, m in rows)


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


def update_readme(readme, runs, results_dir='results'):
    """README.md's homework map, results tables, GPU times and course-settings times on a CPU, from
    runs (load_runs) and the benchmark's files in results_dir."""
    base = os.path.dirname(os.path.abspath(readme))
    tables = to_markdown(glance_blocks(runs, brief=True), base) if runs else 'No run has finished yet.\n'
    fill_file(readme, [(MAP_BEGIN, MAP_END, homework_map(runs, base)), (TABLES_BEGIN, TABLES_END, tables),
                       (GPU_BEGIN, GPU_END, gpu_time(runs)),
                       (CPU_BEGIN, CPU_END, cpu_hours_markdown(runs, results_dir) + '\n' + unfinished_markdown(runs, results_dir))])


def update_docs(docs, runs, results_dir):
    """The generated sections of docs/: the results chapter (results.md), the bf16 parity table
    (running.md), the mutation scores (mutation.md) and the speed tables (speed.md)."""
    path = os.path.join(docs, 'results.md')
    fill_file(path, [(BEGIN, END, to_markdown(chapter(runs), os.path.dirname(os.path.abspath(path))) if runs
                      else 'No run has finished yet.\n')])
    fill_file(os.path.join(docs, 'running.md'), [(PRECISION_BEGIN, PRECISION_END, bf16_runs_markdown(results_dir) or
                                                  'No part has been trained in both precisions yet.\n')])
    fill_file(os.path.join(docs, 'mutation.md'), [(MUTATION_BEGIN, MUTATION_END, mutation_markdown(results_dir))])
    fill_file(os.path.join(docs, 'speed.md'), [(SPEED_BEGIN, SPEED_END, speed_markdown(results_dir))])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--results-dir', default='results', help='the folder of the run directories <profile>[-<precision>]')
    ap.add_argument('--readme', default='README.md')
    ap.add_argument('--docs', default='docs', help='the folder of results.md, running.md, mutation.md and speed.md')
    ap.add_argument('--tex', default=os.path.join('analysis', 'results.tex'))
    args = ap.parse_args()
    runs = load_runs(args.results_dir)
    for r in runs:
        remedies_kl_figure(r['path'])
    latex(runs, args.tex)
    update_readme(args.readme, runs, args.results_dir)
    update_docs(args.docs, runs, args.results_dir)
    print(f'{sum(len(r["parts"]) for r in runs)} parts in {len(runs)} run directories -> {args.tex}, {args.readme}, '
          f'{args.docs}/')


def remedies_markdown(metrics):
    """The 6e table of one run directory's metrics (true ELBO and IS NLL, whatever each remedy trained)."""
    run = dict(name='', profile=metrics[0]['profile'] if metrics else '', parts={m['part']: m for m in metrics},
               precision=with_defaults(metrics[0].get('config') or {})['precision'] if metrics else 'fp32')
    blocks = glance_table([run], REMEDIES, '6e', 'PixelVAE with an IAF encoder, remedies for posterior collapse.')
    return to_markdown(blocks, '.') if blocks else ''


if __name__ == '__main__':
    main()
