"""Training seeds: a run with another seed is a run of its own beside the part (<part>-seed<k>), found
by seed_dirs and by no reader that takes the part's run, and every command reaches it with --seed."""
import json
import os

import experiments as E
from engine import runs
from reporting import reader
from reporting.summary import summary_rows


def test_another_seed_trains_a_run_of_its_own_that_the_summary_leaves_out(tmp_path):
    results = str(tmp_path)
    zero = E.run_part('6a', profile='smoke', device='cpu', results_dir=results, progress=False)
    one = E.run_part('6a', profile='smoke', device='cpu', results_dir=results, progress=False, seed=1)
    assert one['config']['seed'] == 1 and zero['config']['seed'] == 0
    assert one['values']['test_nll']['value'] != zero['values']['test_nll']['value']  # another training run
    assert runs.seed_dirs(results, '6a', 'smoke') == {0: str(tmp_path / 'smoke' / '6a'),
                                                   1: str(tmp_path / 'smoke' / '6a-seed1')}
    assert set(reader.seed_runs(results, '6a', 'smoke')) == {0, 1}
    E.write_summary(results, 'smoke')
    rows = json.loads((tmp_path / 'smoke' / 'summary.json').read_text())
    assert [r['value'] for r in rows] == [r['value'] for r in summary_rows([zero], results)]  # seed 0 only
    again = E.run_part('6a', profile='smoke', device='cpu', results_dir=results, progress=False, seed=1)
    assert again == one  # found, not trained again


def test_the_command_line_takes_a_seed_and_passes_it_to_each_job(tmp_path, capsys):
    E.main(['run', '6a', '--profile', 'smoke', '--device', 'cpu', '--results-dir', str(tmp_path), '--seed', '2',
            '--no-progress'])
    assert os.path.exists(tmp_path / 'smoke' / '6a-seed2' / 'metrics.json')
    capsys.readouterr()
    E.main(['eval', '6a', '--quantity', 'test_nll', '--profile', 'smoke', '--device', 'cpu', '--results-dir',
            str(tmp_path), '--seed', '2'])
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    recorded = json.loads((tmp_path / 'smoke' / '6a-seed2' / 'metrics.json').read_text())['values']['test_nll']
    assert printed == recorded['value']
    plan = dict(profile='smoke', device='cpu', fresh=False, results_dir='r', stop_at=None,
                extra=E.switches(None, None, 3))
    assert E.job_command('6a', 'fp32', plan)[-2:] == ['--seed', '3']
