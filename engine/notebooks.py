"""Executing the three notebooks (papermill) with a profile's runs: executed copies go beside the
results, in <results>/notebooks/<profile>/, so that the notebooks in the repository stay as they
are; in_place=True (the reference code only) saves the outputs into the repository's notebooks.
"""
import os

from engine import ROOT, student
from engine.config import pick_device, pick_profile

NOTEBOOKS = ('gaussian_vae.ipynb', 'pixelcnn.ipynb', 'binaryvae.ipynb')


def run_notebooks(profile='auto', results_dir='results', notebooks=NOTEBOOKS, in_place=False):
    """Execute the notebooks with the given profile and results (a part not yet run is trained
    first); returns the paths of the executed notebooks."""
    import papermill
    if in_place and student.changed_files():
        raise ValueError('--in-place saves outputs into the repository\'s notebooks, which show the reference '
                         'runs; with your models.py or losses.py the executed copies go beside your results')
    chosen = pick_profile(profile, pick_device(None), quiet=True)
    where = ROOT if in_place else os.path.join(student.results_for(results_dir), 'notebooks', chosen)
    os.makedirs(where, exist_ok=True)
    written = []
    for name in notebooks:
        source, target = os.path.join(ROOT, name), os.path.join(where, name)
        print(f'executing {name} ({profile} profile, {results_dir}) into {target}', flush=True)
        # the defaults of the parameters cell are not injected, so the saved notebook keeps profile = "auto"
        parameters = {k: v for k, v in (('profile', profile), ('results_dir', results_dir))
                      if v != {'profile': 'auto', 'results_dir': 'results'}[k]}
        papermill.execute_notebook(source, target, parameters=parameters or None, cwd=ROOT,
                                   kernel_name='python3', progress_bar=False)
        strip_volatile(target)
        written.append(target)
    return written


def strip_volatile(path):
    """Remove what changes at every execution without changing an output (papermill's timings,
    execution timestamps), so that rerunning a notebook leaves it unmodified in git."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop('papermill', None)
    for cell in nb.cells:
        for key in ('papermill', 'execution'):
            cell.metadata.pop(key, None)
    nbformat.write(nb, path)
