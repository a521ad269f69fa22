"""Each run directory's summary: results/<profile>[-<precision>]/summary.{md,json}, one entry per
reported number with the command that recomputes it.
"""
import os
import shlex

from engine import student
from engine.config import PARTS, quantities, run_dir, run_dirs
from engine.files import read_json, write_json
from reporting.answers import value_text
from reporting.reader import trained_on, training_minutes, training_time
from reporting.versus import versus_markdown


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


def devices_of(m):
    """The device types a run trained on, over all its sittings, in the order first used: 'cpu', 'cpu + cuda'."""
    seen = [str(s.get('device') or m['device']) for s in m.get('sittings') or [dict(device=m['device'])]]
    return ' + '.join(dict.fromkeys(seen))


def summary_rows(metrics, results_dir):
    """One entry per reported number of summary.json, with its reproduce command."""
    return [dict(part=m['part'], quantity=q, value=v['value'], stderr=v['stderr'], n_images=v['n_images'], M=v.get('M'),
                 profile=m['profile'], precision=m['config'].get('precision', 'fp32'), device=devices_of(m),
                 hardware=trained_on(m), epochs=m['epochs'], train_seconds=m['train_seconds'],
                 train_seconds_by_hardware=dict(training_time(m)), model=m['model'],
                 reproduce=reproduce_command(m, q, results_dir))
            for m in metrics for q, v in ((q, m['values'][q]) for q in quantities(m['config']))]


def metrics_table(metrics, reported_only=False):
    lines = ['| part | what | quantity | value ± stderr | images | M | epochs | train time | profile, precision, '
             'hardware |', '|---|---|---|---|---|---|---|---|---|']
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
    dirs = (run_dirs(results_dir) if profile is None
            else [(run_dir(results_dir, profile, precision), profile, precision)])
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
                fh.write('\n## Yours against the reference\n\n' + versus_markdown(
                    os.path.dirname(results_dir), runs=[os.path.basename(path)]))
        write_json(os.path.join(path, 'summary.json'), summary_rows(these, results_dir), indent=1)
        metrics += these
    return metrics
