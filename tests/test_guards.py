"""Nothing a student's code or a stray file does reaches the committed results: `eval`, `verify` and
`figures` under other code than the run's write nothing into it (the SHA-256 of every committed file
under results/ is the same after), the run lock removes only its own dead writers' files and sees
through a recycled pid, and bad devices, time limits and part lists are refused before any work."""
import glob
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import experiments as E
from engine import files, locks, runs, student

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'results')


def committed_digests():
    """{path: sha256} of every file under the repository's results/, results/mine left out."""
    found = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, '**', '*'), recursive=True)):
        rel = os.path.relpath(path, RESULTS)
        if os.path.isfile(path) and rel.split(os.sep)[0] != student.MINE:
            with open(path, 'rb') as fh:
                found[rel] = hashlib.sha256(fh.read()).hexdigest()
    return found


@pytest.fixture
def students_code(tmp_path, monkeypatch):
    """The code here becomes a student's: losses.py with its closed-form KL changed (as the issue's
    student who moved 5b's number by 5 nats)."""
    code = tmp_path / 'code'
    code.mkdir()
    shutil.copy(os.path.join(ROOT, 'models.py'), code / 'models.py')
    (code / 'losses.py').write_text(pathlib.Path(ROOT, 'losses.py').read_text() + '\n# my edit\n')
    monkeypatch.setattr(student, 'CODE_DIR', str(code))
    assert student.changed_files() == ['losses.py']
    return code


def cli_refusal(argv, capsys):
    """E.main(argv), which must end with an `error:` message; returns it."""
    with pytest.raises(SystemExit) as stop:
        E.main(argv)
    message = str(stop.value.code)
    assert message.startswith('error: '), message
    return message


@pytest.mark.parametrize('argv', [
    ['eval', '5b', '--quantity', 'test_elbo', '--profile', 'cpu', '--update', '--keep'],
    ['eval', '6a', '--quantity', 'test_nll', '--profile', 'cpu', '--keep'],
    ['eval', '6b', '--quantity', 'test_nll_is1000', '--profile', 'cpu', '--minutes', '5'],
    ['figures', '5b', '--profile', 'cpu'],
])
def test_a_students_code_never_writes_into_a_committed_run(students_code, capsys, argv):
    before = committed_digests()
    message = cli_refusal(argv, capsys)
    assert 'losses.py differs from the code that made' in message and 'nothing was written' in message
    assert committed_digests() == before


def test_a_students_code_writes_nothing_into_its_own_earlier_run_made_by_other_code(tmp_path, monkeypatch):
    """The rule is the run's own code, not only the committed results': a run in any directory is
    written only by the code that made it."""
    out = tmp_path / 'smoke' / '5b'
    out.mkdir(parents=True)
    (out / 'metrics.json').write_text(json.dumps(dict(code=dict(student.code_digest(), **{'models.py': '0' * 64}))))
    with pytest.raises(runs.ForeignCodeError, match=r'models\.py differs from the code that made'):
        runs.guard_run(str(out), 'eval --update')
    (out / 'metrics.json').write_text(json.dumps(dict(code=student.code_digest())))
    runs.guard_run(str(out), 'eval --update')  # the same code: allowed


def test_verify_under_a_students_code_says_it_is_no_reproduction_and_keeps_verify_json(students_code, capsys):
    mine = os.path.join(RESULTS, student.MINE, 'verify.json')
    existed = os.path.exists(mine)
    before = committed_digests()
    try:
        E.main(['verify', '--parts', '5b', '--runs', 'cpu', '--quantities', 'kl'])
        out = capsys.readouterr().out
        assert 'which is not a reproduction' in out and os.path.join(student.MINE, 'verify.json') in out
        assert committed_digests() == before  # results/verify.json among them
        assert os.path.exists(mine)
    finally:
        if not existed and os.path.exists(mine):
            os.remove(mine)


def test_a_students_code_may_not_name_a_folder_inside_the_committed_results(students_code, tmp_path):
    before = committed_digests()
    with pytest.raises(runs.ForeignCodeError, match='inside the committed results'):
        E.run_part('6a', profile='smoke', device='cpu', results_dir=os.path.join(RESULTS, 'full'), progress=False)
    assert not os.path.exists(os.path.join(RESULTS, 'full', 'smoke'))
    assert committed_digests() == before
    runs.guard_results_dir(str(tmp_path))  # outside results/: taken as given


# ---------------------------------------------------------------------------------------------
# The run lock

def test_the_run_lock_removes_only_the_engines_files_whose_writer_is_gone(tmp_path):
    out = tmp_path / 'part'
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        live = files._tmp_path(str(out / 'checkpoint.pt')).replace(f'.{os.getpid()}.', f'.{sleeper.pid}.')
        (out / 'notes.tmp').write_text('my notes')
        pathlib.Path(live).write_bytes(b'being written')
        done = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
        dead = files._tmp_path(str(out / 'model.pt')).replace(f'.{os.getpid()}.', f'.{done.stdout.strip()}.')
        pathlib.Path(dead).write_bytes(b'half a model')
        with locks.part_lock(str(out)):
            assert (out / 'notes.tmp').exists() and os.path.exists(live)  # a user's file, a live writer's file
            assert not os.path.exists(dead)  # the engine's file of a writer that is gone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_recycled_pid_in_the_lock_does_not_refuse_for_ever(tmp_path):
    """The lock records its process's start time: a live process that got the same id later is not it."""
    out = tmp_path / 'part'
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        started = locks.process_started(sleeper.pid)
        (out / 'run.lock').write_text(json.dumps(dict(pid=sleeper.pid, started=started)))
        with pytest.raises(locks.RunLockedError, match=f'in use by process {sleeper.pid}'), locks.part_lock(str(out)):
            pass
        (out / 'run.lock').write_text(json.dumps(dict(pid=sleeper.pid, started=started - 3600)))  # another process
        with locks.part_lock(str(out)):
            assert json.loads((out / 'run.lock').read_text())['pid'] == os.getpid()
        assert not (out / 'run.lock').exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------------------------------------
# Refused before any work

@pytest.mark.parametrize('device,words', [('cuda', 'no CUDA GPU is available here'), ('foo', "'foo' is not a device"),
                                          ('cuda:7', 'no CUDA GPU is available here')])
def test_a_device_this_machine_lacks_is_refused_naming_those_it_has(tmp_path, capsys, device, words):
    if device.startswith('cuda') and __import__('torch').cuda.is_available():
        pytest.skip('this machine has a CUDA GPU')
    message = cli_refusal(['run', '6a', '--profile', 'smoke', '--device', device, '--results-dir', str(tmp_path)],
                          capsys)
    assert words in message and 'this machine has: cpu' in message
    assert not any(tmp_path.iterdir())


def test_all_refuses_an_infinite_time_limit_and_a_part_named_twice(tmp_path, capsys):
    for argv, words in ((['--minutes', 'inf'], '--minutes must be a positive number'),
                        (['--minutes', 'nan'], '--minutes must be a positive number'),
                        (['--parts', '6a,6a'], 'names 6a more than once')):
        message = cli_refusal(['all', '--profile', 'smoke', '--results-dir', str(tmp_path), *argv], capsys)
        assert words in message
    assert not any(tmp_path.iterdir())


def test_a_run_whose_every_step_was_skipped_is_not_written_as_finished():
    """float16 with a loss scaler may skip every step (each overflowed): the untrained model is refused."""
    with pytest.raises(ValueError, match='every one of the 4 training steps was skipped'):
        runs.check_trained(dict(step=4, history=dict(skipped=[0, 1, 2, 3])))
    runs.check_trained(dict(step=4, history=dict(skipped=[0, 1])))  # some steps trained: finished
    runs.check_trained(dict(step=4, history=dict()))


def test_the_message_about_fewer_images_is_said_only_where_there_is_importance_sampling(tmp_path, capsys):
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False)
    capsys.readouterr()
    E.run_part('6a', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, is_images=3)
    out = capsys.readouterr().out
    assert 'already done' in out and 'test_nll_is' not in out and 'the the' not in out


def test_auto_on_a_gpu_keeps_the_precision_of_a_run_already_started(tmp_path, monkeypatch):
    """A run begun in float32 on a CPU and continued on a T4 resumes in float32, not from scratch in
    fp16; one begun in bf16, which a T4 cannot train in, says why it is not resumed."""
    import torch
    from engine import config as C
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    out = C.part_dir(str(tmp_path), '6b', 'full', 'fp32')
    os.makedirs(out)
    open(os.path.join(out, 'checkpoint.pt'), 'wb').close()
    assert runs.pick_precision('auto', '6b', 'full', 'cuda', str(tmp_path)) == ('fp32', f'its run in {out}')
    os.remove(os.path.join(out, 'checkpoint.pt'))
    bf16 = C.part_dir(str(tmp_path), '6b', 'full', 'bf16')
    os.makedirs(bf16)
    open(os.path.join(bf16, 'checkpoint.pt'), 'wb').close()
    chosen, why = runs.pick_precision('auto', '6b', 'full', 'cuda', str(tmp_path))
    assert chosen == 'fp16' and f'its run in {bf16} is in bf16, which cuda cannot train in' in why


def test_a_nan_loss_at_the_first_step_points_at_the_code_not_the_learning_rate(tmp_path, monkeypatch):
    from engine import train as T
    from engine import objectives as O
    objective = O.objective
    monkeypatch.setattr(T, 'objective', lambda *a, **k: tuple(v * float('nan') for v in objective(*a, **k)))
    with pytest.raises(T.NonFiniteLossError, match=r'step 0;.*This was the first step') as err:
        E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    assert 'models.py' in str(err.value) and 'lower the learning rate' not in str(err.value)
