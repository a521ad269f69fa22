"""The one reader of results/ for CSE 599i Homework 2: a run's metrics, per-image values and
history; the summaries results/<profile>[-<precision>]/summary.{md,json} with each number's
reproduce command; and the tables and figures the notebooks display. answers.py turns these into
the answers to the handout, and writeup.py into the README sections and analysis/results.tex
(`python report.py` writes both); and the speed tables of docs/speed.md from the files bench.py
writes (their schema: bench.BENCH_ROWS, bench.BESIDE, bench.GOALS).
"""
import hashlib
import json
import os
import shlex

from bench import BENCH_ROWS, BESIDE, FLOPS_NOTE, GOALS
from config import (PARTS, PRECISIONS, PROFILES, gpu_precision, pick_device, pick_profile, precisions_started, quantities,
                    run_dir)
from files import write_json
import student

# What a figure shows, as seen by eye, keyed by the first 16 hex digits of the file's SHA-256: it
# applies to that file only, so a rerun's figures are described once somebody has looked at them.
SEEN = {'4168688abb451e3b': 'strokes and squiggles, not digits', 'f40cf9fc9c20e756': 'the test digits above them',
        '39dff568c5a83884': 'strokes and squiggles, not digits', '35ab3a552961661e': 'the test digits above them',
        '97e2ee1b0e589328': 'connected pen strokes, a few of them recognisable digits',
        '0ea1ddfca15d8135': 'blurred, mostly recognisable digits',
        'cc63255cb878d9dc': 'the first four are their test digits; several of the last six are another shape',
        '13bbf445b965ec30': 'connected pen strokes, more than half of them recognisable digits',
        '7135efd42b444d09': 'connected pen strokes, about half of them recognisable digits',
        'f2944feb2b7e3ae8': 'four of the ten are their test digits (the 7, the 0, the second 1, the last 9); the '
                            'other six are other shapes or fragments'}


def read_json(path):
    """A JSON file of the results (metrics.json, summary.json), with an error that names it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} cannot be read ({type(err).__name__}: {err}); restore it with git '
                         f'(`git checkout -- {path}`) or delete the part\'s directory and rerun it') from err


def training_time(m):
    """[(hardware, seconds)] of a run's training, in the order first used, summed over its sittings
    on each (metrics.json's sittings); a sitting whose hardware was not recorded is named by its
    device type. A run finished before sittings were recorded trained on its recorded hardware."""
    sittings = m.get('sittings') or [dict(device=m['device'], hardware=m.get('hardware'), seconds=m['train_seconds'])]
    spent = {}
    for s in sittings:
        label = s.get('hardware') or (str(s['device']).split(':')[0].upper() if s.get('device') else 'an unrecorded '
                                                                                                   'device')
        spent[label] = spent.get(label, 0.0) + s['seconds']
    return list(spent.items())


def trained_on(m):
    """The hardware a run trained on, in words: one name, or several joined by ' + '."""
    return ' + '.join(label for label, _ in training_time(m))


def training_minutes(m, digits=1):
    """A run's training time in minutes; where it trained on several kinds of hardware, the time on
    each, named: '85.0 min CPU (x86_64), 2 cores + 10.0 min NVIDIA H100' (never all credited to one)."""
    spent = training_time(m)
    if len(spent) == 1:
        return f'{spent[0][1] / 60:.{digits}f} min'
    return ' + '.join(f'{seconds / 60:.{digits}f} min {label}' for label, seconds in spent)


def load_metrics(results_dir):
    """The metrics.json of every finished part of one run directory, in handout order; each with
    'dir', the part's directory (per_image.pt, history.json and the figures lie there)."""
    return [dict(read_json(os.path.join(results_dir, p, 'metrics.json')), dir=os.path.join(results_dir, p))
            for p in PARTS if os.path.exists(os.path.join(results_dir, p, 'metrics.json'))]


def part_metrics(results_dir, profile, part, precision='fp32'):
    """The metrics of a finished part (None if it has not finished); profile 'auto' is resolved
    from the device, as run_part does, and precision 'auto' as it resumes: on a GPU its choice
    (config.gpu_precision), on a CPU the part's finished run, float32 first."""
    device = pick_device(None)
    profile = pick_profile(profile, device, quiet=True)
    if precision == 'auto':
        finished = precisions_started(results_dir, part, profile, files=('metrics.json',))
        precision = finished[0] if finished and device.type == 'cpu' else gpu_precision(device)
    path = os.path.join(run_dir(results_dir, profile, precision), part, 'metrics.json')
    return read_json(path) if os.path.exists(path) else None


def run_dirs(results_dir):
    """The run directories under results_dir that hold a finished part: [(path, profile, precision)].
    results_dir/mine (a student's runs, student.py) is none of them."""
    found = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        profile, _, precision = name.partition('-')
        if name != student.MINE and profile in PROFILES and (precision or 'fp32') in PRECISIONS and any(
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


def show(part, results_dir='results', profile='auto', precision='auto'):
    """Display a part's metrics and all its figures in a notebook."""
    show_finished([part], results_dir, profile, figures=None, precision=precision)


def compare(parts, results_dir='results', profile='auto', precision='auto'):
    """Display the metrics of several finished parts as one table in a notebook."""
    show_finished(parts, results_dir, profile, figures=(), precision=precision)


def show_finished(parts, results_dir='results', profile='auto', figures=('samples', 'kl'), precision='auto'):
    """Display one table of every part among `parts` that has finished, then the named figures of
    each (None: all of them); a part that has not run is named, not an error."""
    from IPython.display import Image, Markdown, display
    results_dir = student.results_for(results_dir)  # a student's code: their own runs, never the reference's
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


def show_remedies(results_dir='results', profile='auto'):
    """Display the 6e table, its reading and the combined KL plot of a profile's runs in a notebook."""
    from IPython.display import Image, Markdown, display
    from answers import remedies_reading
    from figures import remedies_kl_figure
    from writeup import remedies_markdown, resolve
    results_dir = run_dir(student.results_for(results_dir), pick_profile(profile, pick_device(None), quiet=True))
    metrics = load_metrics(results_dir)
    table = remedies_markdown(metrics)
    if not table:
        display(Markdown(f'No 6e configuration has finished in `{results_dir}` yet.'))
        return
    display(Markdown(table + '\n' + resolve(remedies_reading(metrics) or '', {})))
    path = remedies_kl_figure(results_dir)
    if path:
        display(Image(filename=path))


def reproduce_command(m, quantity, results_dir):
    """The command that recomputes one reported number from the part's model.pt, on whatever device
    the machine that runs it has (evaluation is float32 everywhere, so a number trained on a GPU
    verifies on a CPU)."""
    precision = m['config'].get('precision', 'fp32')
    images = (m.get('recomputed') or {}).get(quantity, {}).get('is_images')  # set by eval --is-images N --update
    return (f'python experiments.py eval {m["part"]} --quantity {quantity} --profile {m["profile"]}'
            + (f' --precision {precision}' if precision != 'fp32' else '')
            + (f' --is-images {images}' if images is not None else '')
            + (f' --results-dir {shlex.quote(results_dir)}' if results_dir != 'results' else ''))


def summary_rows(metrics, results_dir):
    """One entry per reported number of summary.json, with its reproduce command."""
    return [dict(part=m['part'], quantity=q, value=v['value'], stderr=v['stderr'], n_images=v['n_images'], M=v.get('M'),
                 profile=m['profile'], precision=m['config'].get('precision', 'fp32'), device=m['device'],
                 hardware=m.get('hardware', m['device']), epochs=m['epochs'], train_seconds=m['train_seconds'],
                 train_seconds_by_hardware=dict(training_time(m)), model=m['model'],
                 reproduce=reproduce_command(m, q, results_dir))
            for m in metrics for q, v in ((q, m['values'][q]) for q in quantities(m['config']))]


def metrics_table(metrics, reported_only=False):
    lines = ['| part | what | quantity | value ± stderr | images | M | epochs | train time | profile, precision, '
             'hardware |', '|---|---|---|---|---|---|---|---|---|']
    from answers import value_text
    for m in metrics:
        for q, v in m['values'].items():
            if not reported_only or q in quantities(m['config']):
                lines.append(f'| {m["part"]} | {m["title"]} | {q} | {value_text(v)} | {v["n_images"]} | '
                             f'{v.get("M") or ""} | {m["epochs"]} | {training_minutes(m)} | {m["profile"]}, '
                             f'{m["config"].get("precision", "fp32")}, {trained_on(m)} |')
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
            if student.is_mine(results_dir):  # a student's own summary: beside the reference
                from versus import versus_markdown
                fh.write('\n## Yours against the reference\n\n' + versus_markdown(
                    os.path.dirname(results_dir), runs=[os.path.basename(path)]))
        write_json(os.path.join(path, 'summary.json'), summary_rows(these, results_dir), indent=1)
        metrics += these
    return metrics


# ---------------------------------------------------------------- speed tables (bench.py's files)
def goal(group, key):
    return GOALS.get(('is', key)) if group == 'is_img_per_s' else GOALS.get(key)


def read_beside(results_dir, name, suffix):
    """results_dir/<name without .json><suffix>.json, or None if there is none."""
    path = os.path.join(results_dir, name[:-5] + suffix + '.json')
    return read_json(path) if os.path.exists(path) else None


def speed_markdown(results_dir):
    """The benchmark table from results/bench_<device>.json and, beside it,
    results/bench_<device>_straightforward.json (written by bench.py); with
    results/bench_<device>_flops.json also the FLOPs per image and the share of the device's
    measured convolution ceiling that each workload reaches, and that its goal would need."""
    tables = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        if not (name.startswith('bench_') and name.endswith('.json')) or name.endswith(
                tuple(s + '.json' for s in BESIDE)):
            continue
        ours, plain = read_beside(results_dir, name, ''), read_beside(results_dir, name, '_straightforward') or {}
        title = f'`{results_dir}/{name}` ({ours.get("device", name[6:-5])}):'
        tables.append(speed_table(ours, plain, read_beside(results_dir, name, '_flops'), title))
        bf16 = read_beside(results_dir, name, '_bf16')
        if bf16 is not None:
            tables.append(bf16_markdown(bf16['train_img_per_s'], ours['train_img_per_s'],
                                        plain.get('train_img_per_s', {}), f'{results_dir}/{name[:-5]}_bf16.json'))
    return '\n'.join(t for t in tables if t) if tables else 'No benchmark has been run yet.\n'


def speed_table(ours, plain, flops, title):
    """One benchmark's table: this implementation against the straightforward solution, the goals,
    with `flops` the FLOP columns, and which goals are met."""
    head = '| workload | this implementation | straightforward solution | speed-up | goal |'
    rule = '|---|---|---|---|---|'
    if flops:
        head += ' goal needs | GFLOP per image | GFLOP/s reached | main layer, GFLOP/s | bound |'
        rule += '---|---|---|---|---|'
    lines, met, unmet = [title, '', head, rule], [], []
    for group, key, label in BENCH_ROWS:
        a, b, g = ours[group][key], plain.get(group, {}).get(key), goal(group, key)
        ratio = '' if b is None else f'{(b / a if group == "sample_s" else a / b):.1f}x'
        line = (f'| {label}: {key} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | {ratio} | '
                f'{"" if g is None else f"{g:g}x"} |')
        fkey = {'train_img_per_s': 'train_', 'is_img_per_s': 'is_'}.get(group, '') + key
        if b is not None and g is not None:
            speedup = b / a if group == 'sample_s' else a / b
            (met if speedup >= g else unmet).append((label, key, speedup, g, fkey, b))
        if flops and fkey in flops['gflop_per_image']:
            per_image, rate = flops['gflop_per_image'][fkey], flops['layer_gflop_per_s'][fkey]
            need = '' if b is None or g is None else f'{g * b:.2f}'
            line += f' {need} | {per_image:.3g} | {a * per_image:.0f} | {rate:.0f} | {rate / per_image:.2f} |'
        elif flops:
            line += ' | | | | |'
        lines.append(line)
    if flops:
        lines += ['', FLOPS_NOTE.format(flops['ceiling_gflop_per_s'])]
    if met or unmet:
        lines += ['', goals_reading(met, unmet, flops)]
    return '\n'.join(lines) + '\n'


def goals_reading(met, unmet, flops):
    """The goals met and not met, and those that need at least the bound of their main layer."""
    def listed(rows):
        return ', '.join(f'{k} ({label.split(",")[0]}, {x:.1f}x of {g:g}x)' for label, k, x, g, _, _ in rows)
    text = f'Goals met: {listed(met) or "none"}. Not met: {listed(unmet) or "none"}'
    beyond = [f'{k} ({label.split(",")[0]})' for label, k, _, g, fkey, b in unmet if flops and fkey in
              flops['gflop_per_image'] and g * b >= flops['layer_gflop_per_s'][fkey] / flops['gflop_per_image'][fkey]]
    if beyond:
        text += (f'. For {", ".join(beyond)} the goal needs at least the bound, the images/s of an '
                 f'implementation that did nothing but run its main layer at the rate measured here')
    return text + '.'


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


def bf16_parity(results_dir):
    """[(part, quantity, bf16 metrics, fp32 metrics, contrast)] for each likelihood bound or estimate
    (test NLL, test ELBO, importance-sampled NLL) of each part trained in both precisions in the cpu profile (results_dir/cpu-bf16 and results_dir/cpu): bfloat16 minus
    float32, paired over the same test images where both saved per-image values."""
    from answers import contrast  # here, not at the top: answers imports this module
    low_dir, full_dir = os.path.join(results_dir, 'cpu-bf16'), os.path.join(results_dir, 'cpu')
    found = []
    for part in PARTS:
        paths = [os.path.join(d, part, 'metrics.json') for d in (low_dir, full_dir)]
        if all(os.path.exists(p) for p in paths):
            low, full = (dict(read_json(p), dir=os.path.dirname(p)) for p in paths)
            for q in (q for q in low['values'] if q in full['values'] and (q in ('test_nll', 'test_elbo')
                                                                            or q.startswith('test_nll_is'))):
                found.append((part, q, low, full, contrast([(1, low, q), (-1, full, q)])))
    return found


def bf16_runs_markdown(results_dir):
    """Parts trained again with --precision bf16 into results_dir/cpu-bf16/<part> (same settings and
    seed), set against the float32 run of results_dir/cpu/<part>; both evaluated in float32."""
    from answers import value_text  # here, not at the top: answers imports this module
    lines, readings = [], []
    for part, q, low, full, d in bf16_parity(results_dir):
        readings.append(f'{part} {q}: ' + (f'bfloat16 is {abs(d["value"]):.2f} ± {d["se"]:.2f} nats '
                                       f'{"lower" if d["value"] < 0 else "higher"}, a measurable difference'
                                       if abs(d['value']) >= 2 * d['se'] else 'no measurable difference') + '.')
        shared = (set(low['config']) & set(full['config'])) - {'precision'}  # settings added later: at defaults
        same = all(low['config'][k] == full['config'][k] for k in shared)
        parity = 'yes' if d['value'] < 2 * d['se'] else 'no'  # lower is better: not measurably worse
        lines.append(f'| {part} | {q} | {value_text(low["values"][q])} | {value_text(full["values"][q])} | '
                     f'{d["value"]:+.2f} ± {d["se"]:.2f} ({"paired" if d["paired"] else "unpaired"}) | {parity} | '
                     f'{"/".join(map(str, d["n"]))} | {low["epochs"]} | {"yes" if same else "no"} |')
    if not lines:
        return ''
    root = os.path.join(results_dir, 'cpu-bf16')
    return ('Parts trained again in bfloat16 (`python experiments.py run PART --profile cpu --precision bf16`, '
            f'results in `{root}`) against their float32 run, both evaluated in float32; nats per image, lower is '
            'better. The difference is bfloat16 minus float32 over the same test images, with the standard error '
            'of the paired difference, which counts the spread over test images, not that between two training runs. '
            'Parity: bfloat16 is not measurably worse (its difference is below two standard errors). Each bfloat16 '
            'number is recomputed by `python experiments.py eval PART --quantity QUANTITY --profile cpu --precision '
            'bf16`; training speeds in bfloat16 and float32, measured side by side: '
            '[`docs/speed.md`](docs/speed.md).\n\n'
            '| part | quantity | bfloat16 | float32 | difference | parity | images | epochs | same settings and seed |\n'
            '|---|---|---|---|---|---|---|---|---|\n'
            + '\n'.join(lines) + '\n\n' + ' '.join(readings) + '\n')


def mutation_markdown(results_dir):
    """The mutation-testing table from results/mutation/summary.json (mutation.py), or a line
    saying that it has not been run."""
    path = os.path.join(results_dir, 'mutation', 'summary.json')
    if not os.path.exists(path):
        return 'Mutation testing has not been run here yet (`python mutation.py`).\n'
    s = read_json(path)
    lines = ['| module | mutants | killed or timed out | equivalent | survived or no test | score | wall time |',
             '|---|---|---|---|---|---|---|']
    for module, m in s['modules'].items():
        c = m['counts']
        caught = c.get('killed', 0) + c.get('timeout', 0)
        runs = m.get('runs') or []
        minutes = (f"{m['seconds'] / 60:.0f} min" + (f' in {len(runs)} runs' if len(runs) > 1 else '')
                   if m.get('seconds') else '')
        lines.append(f"| `{module}.py` | {m['mutants']} | {caught} | {m['equivalent']} | {len(m['survivors'])} | "
                     f"{m['score']}% | {minutes}{'' if m['complete'] else ' (not complete)'} |")
    return ('\n'.join(lines) + f"\n\nmutmut {s['mutmut']}, torch {s['torch']}, {s['cores']} cores, one test worker "
            f"per core; each survivor and equivalent mutant is listed in `results/mutation/summary.md`.\n")


def main():
    import writeup
    writeup.main()


if __name__ == '__main__':
    main()
