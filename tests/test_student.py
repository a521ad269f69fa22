"""A student's own models.py: their runs go to results/mine, committed results are never trained
over, resumed from or shown as theirs, `all` goes on past a part that cannot run, and `compare`
sets their numbers beside the reference's (engine/student.py, reporting/versus.py). Smoke profile, tiny."""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import experiments as E
from engine import jobs
from engine import student
from engine import modelfiles as MF
from reporting import versus
from engine.config import run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARMLESS = '\n\ndef my_helper():\n    """A function of my own."""\n    return 1\n'


def read_bytes(path):
    with open(path, 'rb') as fh:
        return fh.read()


def changed_code(tmp_path, extra=HARMLESS):
    """A directory holding the repository's losses.py and its models.py with `extra` appended."""
    code = tmp_path / 'code'
    code.mkdir()
    shutil.copy(os.path.join(ROOT, 'losses.py'), code / 'losses.py')
    (code / 'models.py').write_text(read_bytes(os.path.join(ROOT, 'models.py')).decode() + extra)
    return code


def digests(directory, skip=student.MINE):
    """{path: sha256} of every file under directory, results/mine left out."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, '**', '*'), recursive=True)):
        if os.path.isfile(path) and os.path.relpath(path, directory).split(os.sep)[0] != skip:
            found[os.path.relpath(path, directory)] = hashlib.sha256(read_bytes(path)).hexdigest()
    return found


def test_code_digest_reads_crlf_as_lf_and_keeps_the_digest_of_lf_files(tmp_path, monkeypatch):
    now = student.code_digest()
    assert now['models.py'] == hashlib.sha256(read_bytes(os.path.join(ROOT, 'models.py'))).hexdigest()
    for name in student.CODE_FILES:
        with open(os.path.join(ROOT, name), 'rb') as fh:
            (tmp_path / name).write_bytes(fh.read().replace(b'\n', b'\r\n'))
    monkeypatch.setattr(student, 'CODE_DIR', str(tmp_path))
    assert student.code_digest() == now
    (tmp_path / 'models.py').write_bytes((tmp_path / 'models.py').read_bytes() + b'\r\n# mine\r\n')
    assert student.code_digest()['models.py'] != now['models.py'] and student.changed_files() == ['models.py']


def test_the_committed_results_are_the_reference_and_mine_is_no_run_directory(tmp_path, monkeypatch):
    assert student.is_reference()  # the code here trained every committed result
    assert student.results_for('results') == 'results' and student.results_for(str(tmp_path)) == str(tmp_path)
    results = tmp_path / 'results'
    (results / 'mine' / 'smoke' / '6a').mkdir(parents=True)
    (results / 'mine' / 'smoke' / '6a' / 'metrics.json').write_text(json.dumps({'code': {'models.py': 'x'}}))
    assert run_dirs(str(results)) == []  # summary, verify and the write-up never read results/mine
    monkeypatch.setattr(student, 'ROOT', str(tmp_path))
    assert student.reference_code() is None and student.is_reference()  # results without a finished part


def test_a_checkpoint_of_other_code_is_never_resumed(tmp_path, monkeypatch):
    """With another models.py, a checkpoint of the reference code (with its digest, or from before
    checkpoints recorded one) is refused and kept; the reference code resumes it."""
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    path = tmp_path / 'smoke' / '6a' / 'checkpoint.pt'
    ck = torch.load(path, weights_only=True)
    assert ck['code'] == student.code_digest()
    monkeypatch.setattr(student, 'CODE_DIR', str(changed_code(tmp_path)))
    before = path.read_bytes()
    with pytest.raises(MF.CheckpointError, match=r'(?s)trained by another models\.py.*not resumed.*kept as it is'):
        E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert path.read_bytes() == before
    del ck['code']  # as written before checkpoints recorded the code (results/full/6b/checkpoint.pt)
    torch.save(ck, path)
    before = path.read_bytes()
    with pytest.raises(MF.CheckpointError, match=r'(?s)records no code digest.*your models\.py differ.*not resumed'):
        E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert path.read_bytes() == before
    monkeypatch.setattr(student, 'CODE_DIR', ROOT)
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'resuming from' in (tmp_path / 'smoke' / '6a' / 'run.log').read_text()


def test_parameters_that_do_not_fit_are_named(tmp_path):
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    path = tmp_path / 'smoke' / '6a' / 'checkpoint.pt'
    ck = torch.load(path, weights_only=True)
    state = ck['models']['pixelcnn']['state_dict']
    state['embedding.weight'] = state.pop('embed.weight')  # a student's name for the layer
    torch.save(ck, path)
    before = path.read_bytes()
    names = (r'(?s)part 6a: .*checkpoint\.pt \(pixelcnn\).*models\.PixelCNN.*missing in the file: embed\.weight.*'
             r'not in PixelCNN here: embedding\.weight.*kept')
    with pytest.raises(MF.CheckpointError, match=names):
        E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert path.read_bytes() == before


def test_all_goes_on_past_a_part_that_cannot_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jobs, 'estimate_all', lambda profile, parts, *a, **k: {p: dict(seconds=0.0, precision='fp32')
                                                                           for p in parts})
    monkeypatch.setattr(E, 'write_summary', lambda *a, **k: None)

    def run_part(part, **kwargs):
        if part == '5b':
            raise E.ResultsExistError('results/smoke/5b holds a finished run with other settings')
        if part == '5c':
            raise NotImplementedError('my encoder is not written yet')
        return {'values': {'test_nll': {'value': 1.5, 'stderr': 0.1}}}
    monkeypatch.setattr(jobs, 'run_part', run_part)
    with pytest.raises(SystemExit) as stop:
        E.main(['all', '--profile', 'smoke', '--parts', '5b,5c,6a', '--device', 'cpu', '--results-dir', str(tmp_path)])
    assert stop.value.code not in (0, None) and '2 of 3 parts did not run (5b, 5c)' in str(stop.value.code)
    out = capsys.readouterr().out
    table = out[out.index('part         outcome'):].splitlines()
    assert table[1].split()[:2] == ['5b', 'skipped'] and 'finished run with other settings' in table[1]
    assert table[2].split()[:2] == ['5c', 'failed'] and 'NotImplementedError: my encoder is not written' in table[2]
    assert table[3].split()[:2] == ['6a', 'done'] and 'test_nll 1.50' in table[3]  # 6a still ran after two failures


def fake_run(directory, part, values, config=None):
    """A finished part with per-image test_nll values, as run_part leaves it (for compare's table)."""
    out = directory / 'smoke' / part
    out.mkdir(parents=True)
    v = torch.tensor(values, dtype=torch.float64)
    cfg = dict(config or {}, **E.config(part, 'smoke'))
    (out / 'metrics.json').write_text(json.dumps(dict(part=part, config=cfg, values={'test_nll': dict(
        value=v.mean().item(), stderr=(v.std() / len(v) ** 0.5).item(), n_images=len(v))})))
    torch.save({'test_nll': v}, out / 'per_image.pt')


def test_compare_pairs_over_the_same_images_and_names_suspects_where_worse(tmp_path, monkeypatch):
    monkeypatch.setattr(student, 'ROOT', str(tmp_path))
    results = tmp_path / 'results'
    g = torch.Generator().manual_seed(0)
    reference = 90 + 10 * torch.randn(200, generator=g, dtype=torch.float64)  # a spread over images far above
    fake_run(results, '6a', reference.tolist())                               # the paired difference's
    fake_run(results / 'mine', '6a', (reference + 0.5 + 0.1 * torch.randn(200, generator=g)).tolist())
    monkeypatch.setattr(versus, 'course_api_failures', lambda code_dir=None: {
        'test_pixelcnn_is_autoregressive[eval]': 'models.PixelCNN(capacity=8, depth=3)(x) in eval mode: expected '
                                                 'logit i to depend on the pixels before i only',
        'test_gaussian_elbo_matches_distributions': 'losses.gaussian_elbo(...)[0]: expected ...'})
    text = versus.versus_markdown(str(results))
    row = next(line for line in text.splitlines() if line.startswith('| smoke | 6a | test_nll |'))
    assert '+0.5' in row and '(paired, 200 test images)' in row and 'yours is measurably worse' in row
    suspects = text[text.index('Measurably worse: 6a'):]
    assert 'test_pixelcnn_is_autoregressive[eval]: models.PixelCNN' in suspects  # it concerns what 6a uses
    assert 'gaussian_elbo' not in suspects  # 6a trains no Gaussian VAE
    # within two standard errors of the paired difference: no measurable difference, and no suspects
    shutil.rmtree(results / 'mine')
    fake_run(results / 'mine', '6a', (reference + torch.tensor([0.01, -0.01]).repeat(100)).tolist())  # mean 0
    text = versus.versus_markdown(str(results))
    assert 'no measurable difference' in text and 'Measurably worse' not in text


def test_the_stub_files_fail_each_course_api_test_with_an_instruction(monkeypatch):
    """The course framework's unimplemented models.py and losses.py: every course_api test fails
    (none errors), each with a sentence naming the call, what it should do and what it did."""
    monkeypatch.setattr(student, 'CODE_DIR', os.path.join(ROOT, 'tests', 'fixtures', 'course_stub'))
    failures = versus.course_api_failures()
    assert len(failures) >= 15, failures  # every course_api test of test_models.py and test_losses.py
    for test, message in failures.items():
        assert message.startswith(('Failed: models.', 'Failed: losses.')), (test, message)
        assert any(w in message for w in ('should return', 'not implemented yet', 'has no attribute')), (test, message)
        assert 'NoneType' not in message and 'Traceback' not in message, (test, message)


def test_a_student_solution_with_another_signature_gets_an_instruction(tmp_path):
    source = read_bytes(os.path.join(ROOT, 'models.py')).decode()
    renamed = source.replace("def __init__(self, capacity=32, depth=9, layout='course'):\n        super().__init__()",
                             "def __init__(self, channels=32, depth=9, layout='course'):\n        capacity = channels\n"
                             "        super().__init__()", 1)
    assert renamed != source
    (tmp_path / 'models.py').write_text(renamed + HARMLESS)
    env = dict(os.environ, HW2_MODELS=str(tmp_path / 'models.py'))
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'course_api', '-k',
                          'pixelcnn_is_autoregressive or iaf_returns', 'tests/test_models.py'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-3000:]
    assert ("models.PixelCNN(capacity=8, depth=3) raised TypeError: PixelCNN.__init__() got an unexpected keyword "
            "argument 'capacity'") in run.stdout
    assert '2 failed, 1 passed' in run.stdout and 'Traceback' not in run.stdout  # the IAF test passes


def copy_code(repo, notebooks):
    """The repository's code (the root's modules and the folders of the engine, the reporting and the
    tools) and the given notebooks into repo."""
    repo.mkdir()
    for path in glob.glob(os.path.join(ROOT, '*.py')) + [os.path.join(ROOT, nb) for nb in notebooks]:
        shutil.copy(path, repo)
    for folder in ('engine', 'reporting', 'tools'):
        shutil.copytree(os.path.join(ROOT, folder), repo / folder, ignore=shutil.ignore_patterns('__pycache__'))


def temp_checkout(tmp_path):
    """The repository's code in tmp_path/repo, with a reference run of 6a and 6b (smoke) in its results/."""
    repo = tmp_path / 'repo'
    copy_code(repo, [os.path.basename(p) for p in glob.glob(os.path.join(ROOT, '*.ipynb'))])
    for part in ('6a', '6b'):
        E.run_part(part, profile='smoke', device='cpu', results_dir=str(repo / 'results'), progress=False)
    return repo


def cli(repo, *args):
    extra = ['--no-progress'] if args[0] in ('run', 'all') else []
    return subprocess.run([sys.executable, 'experiments.py', *args, *extra], cwd=repo, capture_output=True, text=True,
                          timeout=600)


def test_a_student_s_run_all_and_compare_leave_the_reference_alone(tmp_path):
    repo = temp_checkout(tmp_path)
    before = digests(repo / 'results')
    with open(repo / 'models.py', 'a') as fh:
        fh.write(HARMLESS)
    run = cli(repo, 'run', '6a', '--profile', 'smoke', '--device', 'cpu')
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[0].startswith('your models.py differs from the code behind the committed results')
    mine = json.loads((repo / 'results' / 'mine' / 'smoke' / '6a' / 'metrics.json').read_text())
    assert mine['code']['models.py'] != json.loads((repo / 'results' / 'smoke' / '6a' / 'metrics.json').read_text())[
        'code']['models.py']
    run = cli(repo, 'all', '--profile', 'smoke', '--parts', '6a,6b', '--device', 'cpu')
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'results/mine/' in run.stdout.splitlines()[0]
    assert 'resuming' not in (repo / 'results' / 'mine' / 'smoke' / '6b' / 'run.log').read_text()  # not the reference's
    assert 'Yours against the reference' in (repo / 'results' / 'mine' / 'smoke' / 'summary.md').read_text()
    run = cli(repo, 'compare')
    assert run.returncode == 0, run.stderr[-3000:]
    for part, q in (('6a', 'test_nll'), ('6b', 'test_elbo')):
        row = next(line for line in run.stdout.splitlines() if line.startswith(f'| smoke | {part} | {q} |'))
        assert 'paired, 100 test images' in row and 'the same numbers' in row  # a harmless change: the same run
    assert digests(repo / 'results') == before  # the committed results, file by file


def test_a_notebook_with_a_student_s_code_shows_their_own_numbers(tmp_path):
    import nbformat
    import papermill
    repo = tmp_path / 'repo'
    copy_code(repo, ['pixelcnn.ipynb'])
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(repo / 'results'), progress=False)
    before = digests(repo / 'results')
    with open(repo / 'models.py', 'a') as fh:
        fh.write(HARMLESS)
    papermill.execute_notebook(str(repo / 'pixelcnn.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(repo),
                               kernel_name='python3', progress_bar=False, parameters=dict(profile='smoke'))
    assert os.path.exists(repo / 'results' / 'mine' / 'smoke' / '6a' / 'metrics.json')
    assert digests(repo / 'results') == before
    nb = nbformat.read(str(tmp_path / 'out.ipynb'), as_version=4)
    shown = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    text = '\n'.join(o.get('text', '') for o in shown)
    assert 'your runs go to results/mine/' in text
    last = ''.join(o.get('data', {}).get('text/markdown', '') for o in nb.cells[-1].outputs)
    assert '| smoke | 6a | test_nll |' in last and 'paired, 100 test images' in last


def test_compare_checks_the_code_that_made_the_run_not_the_code_here_now(tmp_path, monkeypatch):
    """A run made with a student's code keeps a copy of it (code/); compare's checks run on that copy
    even after the reference files are back in place, and say which code they checked."""
    monkeypatch.setattr(student, 'ROOT', str(tmp_path))
    results = tmp_path / 'results'
    g = torch.Generator().manual_seed(0)
    reference = 90 + 10 * torch.randn(200, generator=g, dtype=torch.float64)
    fake_run(results, '6a', reference.tolist())
    fake_run(results / 'mine', '6a', (reference + 0.5 + 0.1 * torch.randn(200, generator=g)).tolist())
    kept = results / 'mine' / 'smoke' / '6a' / 'code'
    kept.mkdir()
    for name in student.CODE_FILES:
        (kept / name).write_text('# the student\'s file that made the run\n')
    checked = []
    monkeypatch.setattr(versus, 'course_api_failures', lambda code_dir=None: checked.append(code_dir) or {
        'test_pixelcnn_is_autoregressive[eval]': 'models.PixelCNN(capacity=8, depth=3)(x): the j = i leak'})
    text = versus.versus_markdown(str(results))
    assert checked == [str(kept)] and f'the code that made 6a (`{kept}`)' in text
    assert 'test_pixelcnn_is_autoregressive[eval]' in text


def test_a_difference_is_shown_with_the_digits_its_standard_error_needs():
    assert versus.difference_digits(0.23) == 2 and versus.difference_digits(0.0004) == 5
    assert versus.difference_digits(0.0) == 2 and versus.difference_digits(3e-12) == 8


def test_compare_builds_a_reference_run_from_the_committed_code_where_none_is_committed(tmp_path, monkeypatch,
                                                                                        capsys):
    """A student's smoke run has no committed reference: compare trains the committed code's run into
    results/reference (a process of its own, in a copy of the code) and pairs against it."""
    from engine import reference
    results = tmp_path / 'results'
    monkeypatch.setattr(student, 'ROOT', str(tmp_path))
    monkeypatch.setenv('HW2_DATA', os.path.join(ROOT, 'data'))
    mine = E.run_part('6a', profile='smoke', device='cpu', results_dir=str(results / 'mine'), progress=False)
    assert versus.missing_references(str(results)) == [('6a', 'smoke', 'fp32')]
    monkeypatch.chdir(tmp_path)
    E.main(['compare', '--results-dir', str(results)])
    built = results / reference.BUILT / 'smoke' / '6a' / 'metrics.json'
    ref = json.loads(built.read_text())
    assert ref['code'] == student.code_digest()  # the committed code, which is the code here
    assert ref['values']['test_nll'] == mine['values']['test_nll']  # the same code and settings: the same numbers
    out = capsys.readouterr().out
    assert '| smoke | 6a | test_nll |' in out and 'the same numbers' in out
    assert versus.missing_references(str(results)) == []
