"""The switches `all` and `run` share (--is-images, --compile-train) and `all --jobs N`: parts run
as separate processes on one device give the numbers of a serial run (smoke profile, CPU)."""
import json
import os

import pytest
import torch

from engine import config as C
import experiments as E

torch.set_num_threads(2)


def values(results, parts):
    return {p: json.loads((results / 'smoke' / p / 'metrics.json').read_text())['values'] for p in parts}


def test_jobs_give_the_numbers_of_a_serial_run_each_with_its_own_log(tmp_path):
    parts = ['6a', '6b', '5c']
    serial, jobs = tmp_path / 'serial', tmp_path / 'jobs'
    assert E.run_all('smoke', parts, 'cpu', results_dir=str(serial), progress=False)
    assert E.run_all('smoke', parts, 'cpu', results_dir=str(jobs), progress=False, jobs=3)
    assert values(serial, parts) == values(jobs, parts)
    for part in parts:
        log = (jobs / 'smoke' / part / E.JOB_LOG).read_text()
        assert f'experiments.py run {part} --profile smoke' in log and f'{part}: epoch 2/2' in log
        assert not (serial / 'smoke' / part / E.JOB_LOG).exists()
    assert all(f'| {p} |' in (jobs / 'smoke' / 'summary.md').read_text() for p in parts)


def test_a_refused_job_is_reported_as_skipped_after_the_others_end_and_they_are_summarised(tmp_path, capsys):
    locked = tmp_path / 'smoke' / '6a'
    locked.mkdir(parents=True)
    (locked / 'run.lock').write_text(str(os.getpid()))  # a live process holds 6a: its run refuses
    with pytest.raises(E.PartsFailedError, match=r'1 of 2 parts did not run \(6a\)'):
        E.run_all('smoke', ['6a', '6b'], 'cpu', results_dir=str(tmp_path), progress=False, jobs=2)
    assert 'is in use by process' in (locked / E.JOB_LOG).read_text()
    assert (tmp_path / 'smoke' / '6b' / 'metrics.json').exists()        # the other part ran to its end
    assert '| 6b |' in (tmp_path / 'smoke' / 'summary.md').read_text()  # and is summarised, 6a is not
    assert '| 6a |' not in (tmp_path / 'smoke' / 'summary.md').read_text()
    out = capsys.readouterr().out
    assert '6a: skipped: ' in out and 'is in use by process' in out.split('6a: skipped: ')[1].splitlines()[0]
    assert f'(its output: {locked / E.JOB_LOG})' in out
    assert any(line.startswith('6a') and ' skipped ' in line for line in out.splitlines())  # the end table: a refusal


def test_jobs_pass_the_settings_of_all_to_each_process():
    plan = dict(profile='full', device=torch.device('cuda'), fresh=True, results_dir='r', stop_at=None,
                extra=E.switches('all', 'true'))
    cmd = E.job_command('6b', 'fp32', plan)
    assert cmd[2:] == ['run', '6b', '--profile', 'full', '--device', 'cuda', '--precision', 'fp32', '--results-dir',
                       'r', '--no-progress', '--fresh', '--is-images', 'all', '--compile-train']
    plan.update(fresh=False, extra=E.switches(500, False), stop_at=E.time.time() + 120)
    cmd = E.job_command('6b', 'bf16', plan)
    assert cmd[cmd.index('--is-images') + 1] == '500' and '--no-compile-train' in cmd and '--fresh' not in cmd
    assert 1.9 < float(cmd[cmd.index('--minutes') + 1]) <= 2.0
    with pytest.raises(ValueError, match='jobs must be an integer >= 1'):
        E.run_all('smoke', ['6a'], 'cpu', jobs=0)


def test_switches_keep_the_profiles_setting_unless_given():
    assert E.switches() == {} and E.switches(None, None) == {}
    assert E.switches('ALL') == {'is_images': None} and E.switches(12) == {'is_images': 12}
    assert E.switches(compile_train='false') == {'compile_train': False}
    with pytest.raises(ValueError, match='compile_train must be true or false'):
        E.switches(compile_train='graphs')
    assert C.config('6b', 'smoke', **E.switches('3', 'yes'))['is_images'] == 3
    assert C.config('6b', 'smoke', compile_train='1')['compile_train'] is True
    with pytest.raises(ValueError, match='compile_train must be true or false'):
        C.config('6b', 'smoke', compile_train='sometimes')


def test_command_line_switches_reach_run_and_all(monkeypatch):
    seen = {}
    monkeypatch.setattr(E, 'run_part', lambda part, *a, **k: seen.update(run=(part, a, k)))
    monkeypatch.setattr(E, 'run_all', lambda *a, **k: seen.update(all=a))
    E.main(['run', '6b', '--is-images', 'all', '--compile-train', '--minutes', '2'])
    part, _, kw = seen['run']
    assert (part, kw['is_images'], kw['compile_train']) == ('6b', 'all', True)
    assert 110 < kw['stop_at'] - E.time.time() <= 120
    E.main(['run', '6b', '--no-compile-train'])
    assert seen['run'][2]['compile_train'] is False and seen['run'][2]['stop_at'] is None
    E.main(['run', '6b'])
    assert seen['run'][2]['compile_train'] is None and seen['run'][2]['is_images'] is None
    E.main(['all', '--jobs', '3', '--is-images', '1000', '--compile-train'])
    assert seen['all'][-3:] == ('1000', True, 3)
    with pytest.raises(SystemExit, match='--minutes must be a positive number'):
        E.main(['run', '6b', '--minutes', '0'])


def test_compile_train_may_change_between_sittings_and_a_finished_run_ignores_it(tmp_path):
    assert C.settings_differ(dict(compile_train=False), dict(compile_train=True)) == []  # a checkpoint resumes
    done = E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    again = E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1,
                       compile_train=True)
    assert again == done  # found, not trained again and not refused
