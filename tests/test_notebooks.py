"""The three notebooks: thin drivers with a papermill `parameters` cell, runnable top to bottom
headless at the smoke profile."""
import json
import os
import pathlib

import nbformat
import papermill
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = {'gaussian_vae.ipynb': ['5b', '5c'], 'pixelcnn.ipynb': ['6a'], 'binaryvae.ipynb': ['6b']}


@pytest.mark.parametrize('name', list(NOTEBOOKS))
def test_notebook_structure(name):
    nb = nbformat.read(os.path.join(ROOT, name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert nb.cells[0].cell_type == 'markdown'
    assert 'parameters' in code[0].metadata.get('tags', [])
    assert 'profile = "auto"' in code[0].source and 'results_dir = "results"' in code[0].source
    assert 'is_images = None' in code[0].source and 'compile_train = False' in code[0].source  # as `all` has
    assert ('jobs = 1' in code[0].source) == (name == 'gaussian_vae.ipynb')  # the notebook of two parts
    if name == 'binaryvae.ipynb':
        for line in ('autoregress = False', 'flows = 0', 'remedy = None'):
            assert line in code[0].source
    # no injected override: "Run all" resolves the profile from the device (full on CUDA)
    assert not [c for c in code if 'injected-parameters' in c.metadata.get('tags', [])]
    if any(c.outputs for c in code):  # committed with outputs: those of a real run, without errors
        assert not any(o.get('output_type') == 'error' for c in code for o in c.outputs)
        assert any('image/png' in o.get('data', {}) for c in code for o in c.outputs)
    lines = [line.strip() for c in code for line in c.source.splitlines()]
    assert not any(line.startswith(('for ', 'while ')) or '.backward(' in line for line in lines)  # no loops


@pytest.mark.parametrize('name,parameters,parts', [
    ('gaussian_vae.ipynb', {}, NOTEBOOKS['gaussian_vae.ipynb']),
    ('pixelcnn.ipynb', {}, NOTEBOOKS['pixelcnn.ipynb']),
    ('binaryvae.ipynb', {}, ['6b']),
    ('binaryvae.ipynb', dict(autoregress=True, flows=8, remedy='freebits'), ['6e-freebits']),
    ('gaussian_vae.ipynb', dict(jobs=2, is_images='all', compile_train='false'), NOTEBOOKS['gaussian_vae.ipynb']),
])
def test_notebook_runs_at_smoke_profile(tmp_path, name, parameters, parts):
    out = tmp_path / name
    papermill.execute_notebook(os.path.join(ROOT, name), str(out), cwd=ROOT, kernel_name='python3', progress_bar=False,
                               parameters=dict(profile='smoke', results_dir=str(tmp_path / 'results'), **parameters))
    nb = nbformat.read(str(out), as_version=4)
    shown = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert any('image/png' in o.get('data', {}) for o in shown)      # the figures are displayed inline
    assert any('text/markdown' in o.get('data', {}) for o in shown)  # and the metrics table
    for part in parts:
        with open(tmp_path / 'results' / 'smoke' / part / 'metrics.json') as fh:
            assert json.load(fh)['profile'] == 'smoke'
        # with jobs, each part ran in a process of its own, its output in job.log
        assert os.path.exists(tmp_path / 'results' / 'smoke' / part / 'job.log') == ('jobs' in parameters)


def test_papermill_string_parameters_and_other_profiles_keep_finished_results(tmp_path):
    """`-p fresh false -p autoregress false -p flows 0` arrive as strings; a run at another profile
    writes to its own directory and leaves a finished cpu run as it was."""
    import shutil
    results = tmp_path / 'results'
    shutil.copytree(os.path.join(ROOT, 'results', 'cpu', '6a'), results / 'cpu' / '6a')
    before = {p.name: p.read_bytes() for p in (results / 'cpu' / '6a').iterdir()}
    papermill.execute_notebook(os.path.join(ROOT, 'pixelcnn.ipynb'), str(tmp_path / 'p.ipynb'), cwd=ROOT,
                               kernel_name='python3', progress_bar=False,
                               parameters=dict(profile='smoke', results_dir=str(results), fresh='false'))
    assert {p.name: p.read_bytes() for p in (results / 'cpu' / '6a').iterdir()} == before
    smoke = results / 'smoke' / '6a' / 'model.pt'
    stamp = smoke.stat().st_mtime_ns
    papermill.execute_notebook(os.path.join(ROOT, 'binaryvae.ipynb'), str(tmp_path / 'b.ipynb'), cwd=ROOT,
                               kernel_name='python3', progress_bar=False,
                               parameters=dict(profile='smoke', results_dir=str(results), fresh='false',
                                               autoregress='false', flows='0'))
    assert os.path.exists(results / 'smoke' / '6b' / 'metrics.json')  # 6b, not 6c
    assert not os.path.exists(results / 'smoke' / '6c')
    papermill.execute_notebook(os.path.join(ROOT, 'pixelcnn.ipynb'), str(tmp_path / 'p2.ipynb'), cwd=ROOT,
                               kernel_name='python3', progress_bar=False,
                               parameters=dict(profile='smoke', results_dir=str(results), fresh='false'))
    assert smoke.stat().st_mtime_ns == stamp  # 'false' did not delete and retrain it
    with pytest.raises(papermill.PapermillExecutionError, match='flows must be one of 0, 8'):
        papermill.execute_notebook(os.path.join(ROOT, 'binaryvae.ipynb'), str(tmp_path / 'c.ipynb'), cwd=ROOT,
                                   kernel_name='python3', progress_bar=False,
                                   parameters=dict(profile='smoke', results_dir=str(results), flows=2))


def test_executing_the_notebooks_leaves_the_committed_ones_as_they_are(tmp_path):
    """`experiments.py notebooks` writes executed copies beside the results, never into the notebooks
    that the repository holds."""
    from engine.notebooks import run_notebooks
    path = os.path.join(ROOT, 'pixelcnn.ipynb')
    before = pathlib.Path(path).read_bytes()
    written = run_notebooks('smoke', str(tmp_path / 'results'), notebooks=('pixelcnn.ipynb',))
    assert written == [str(tmp_path / 'results' / 'notebooks' / 'smoke' / 'pixelcnn.ipynb')]
    assert pathlib.Path(path).read_bytes() == before
    nb = nbformat.read(written[0], as_version=4)
    assert any(o for c in nb.cells if c.cell_type == 'code' for o in c.outputs)  # executed, with outputs
