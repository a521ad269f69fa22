"""What the notebooks display: a part's metrics and figures, several parts as one table, the 6e
remedies with their reading and KL plot.
"""
import os

from engine import student
from engine.config import pick_device, pick_profile, run_dir
from engine.figures import remedies_kl_figure
from reporting.answers import remedies_reading
from reporting.reader import load_metrics, part_metrics
from reporting.summary import metrics_table
from reporting.writeup import remedies_markdown, resolve


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
