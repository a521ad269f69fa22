"""The storage policy (docs/engine.md, "What is committed"): no committed file over the limit, no
checkpoint (plain or carried) beside a finished run, a carried one committed whole, a model file too
large for git kept out of it by the run itself, and `verify` naming why it cannot recompute a number
whose model file is not here."""
import json
import os
import pathlib
import subprocess

import pytest

import experiments as E
from engine import files
from reporting import summary
from engine import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def committed_files():
    """(path, size) of every file git tracks in this checkout; skips outside a git checkout."""
    try:
        run = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    paths = [p for p in run.stdout.decode().split('\0') if p]
    return [(p, os.path.getsize(os.path.join(ROOT, p))) for p in paths if os.path.isfile(os.path.join(ROOT, p))]


def test_no_committed_file_is_over_the_limit():
    over = [(p, size) for p, size in committed_files() if size > files.MAX_COMMITTED_BYTES]
    assert not over, f'committed files over {files.MAX_COMMITTED_BYTES} bytes: {over}'


def test_a_finished_run_has_no_committed_checkpoint():
    tracked = {p for p, _ in committed_files()}
    finished = {os.path.dirname(p) for p in tracked if p.endswith('/metrics.json')}
    stale = sorted(p for p in tracked if p.endswith('/checkpoint.pt') and os.path.dirname(p) in finished)
    assert not stale, f'finished runs that still commit their checkpoint: {stale}'
    carried = sorted(p for p in tracked if os.path.basename(os.path.dirname(p)) == 'checkpoint.pack'
                     and os.path.dirname(os.path.dirname(p)) in finished)
    assert not carried, f'finished runs that still commit a carried checkpoint (checkpoint.pack): {carried}'


def test_an_in_progress_checkpoint_is_committed_only_as_pieces_with_their_manifest():
    tracked = {p for p, _ in committed_files()}
    packs = {os.path.dirname(p) for p in tracked if os.path.basename(os.path.dirname(p)) == 'checkpoint.pack'}
    for where in sorted(packs):
        manifest = json.loads(pathlib.Path(ROOT, where, 'manifest.json').read_text())
        assert {f'{where}/{piece["name"]}' for piece in manifest['pieces']} | {f'{where}/manifest.json'} == \
            {p for p in tracked if os.path.dirname(p) == where}, f'{where}: committed pieces differ from its manifest'


def test_a_file_over_the_limit_is_listed_for_git_to_ignore(tmp_path):
    (tmp_path / 'small.pt').write_bytes(b'x' * 10)
    (tmp_path / 'model.pt').write_bytes(b'x' * 100)
    assert files.keep_out_of_git(str(tmp_path), 'small.pt', limit=50) is None
    why = files.keep_out_of_git(str(tmp_path), 'model.pt', limit=50)
    assert 'model.pt' in why and 'not committed' in why
    files.keep_out_of_git(str(tmp_path), 'model.pt', limit=50)  # listed once, however often asked
    assert (tmp_path / '.gitignore').read_text().split() == ['model.pt']
    subprocess.run(['git', 'init', '-q', str(tmp_path)], check=True)
    ignored = subprocess.run(['git', 'check-ignore', 'model.pt', 'small.pt'], cwd=tmp_path, capture_output=True,
                             text=True).stdout.split()
    assert ignored == ['model.pt']


def test_a_run_whose_model_is_too_large_says_so_and_verify_skips_it(tmp_path, monkeypatch):
    monkeypatch.setattr(files, 'MAX_COMMITTED_BYTES', 1000)  # every model file of the smoke profile is larger
    metrics = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    out = tmp_path / 'smoke' / '6a'
    assert 'not committed' in metrics['model_uncommitted']
    assert (out / '.gitignore').read_text().split() == ['model.pt']
    summary.write_summary(str(tmp_path), 'smoke')
    os.remove(out / 'model.pt')  # as in a clone: the file was never committed
    checked = reproduce.verify(str(tmp_path))
    assert checked and all(c['ok'] is None and 'not committed' in c['skipped'] for c in checked)
    saved = json.loads((tmp_path / 'verify.json').read_text())
    assert {c['quantity'] for c in saved} == set(metrics['values'])
