"""unpack never replaces a finished run and unpacks a run whole (a part's metrics with the model
file they belong to); pack and unpack with a folder that holds an older pack; a piece whose digest
is right but which is not part of a gzip'd tar. Small fake runs in tmp_path, no training."""
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile

import pytest

from engine import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(files=3, piece_bytes=1000)  # packs of 2 pieces of 1000 bytes and a manifest


def fake_run(results, parts=('5b', '5c'), seed=0, value=540.54):
    """results/smoke/<part>/: model.pt (random bytes), metrics.json (its number), run.log."""
    rng = random.Random(seed)
    for part in parts:
        d = os.path.join(results, 'smoke', part)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'model.pt'), 'wb') as fh:
            fh.write(bytes(rng.getrandbits(8) for _ in range(3000)))
        with open(os.path.join(d, 'metrics.json'), 'w') as fh:
            json.dump(dict(part=part, values=dict(test_nll=dict(value=value)), model=os.path.join(d, 'model.pt')), fh)
        with open(os.path.join(d, 'run.log'), 'w') as fh:
            fh.write(f'{part}: seed {seed}\n')


def tree(results):
    out = {}
    for d, _, names in os.walk(results):
        for n in names:
            with open(os.path.join(d, n), 'rb') as fh:
                out[os.path.relpath(os.path.join(d, n), results)] = fh.read()
    return out


def value(results, part='5b'):
    with open(os.path.join(results, 'smoke', part, 'metrics.json')) as fh:
        return json.load(fh)['values']['test_nll']['value']


def hand_pack(where, pieces, run='smoke', parts=None, created=None):
    """A pack written by hand (as by an earlier `pack`, or by another tool): the pieces as given and a
    manifest whose digests match them."""
    os.makedirs(where, exist_ok=True)
    names = [f'{run}.tar.gz.{i:02d}' for i in range(len(pieces))]
    for name, data in zip(names, pieces, strict=True):
        with open(os.path.join(where, name), 'wb') as fh:
            fh.write(data)
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    manifest = dict(run=run, parts=parts, pack=1, packs=1, first=0, sha256=sha(b''.join(pieces)),
                    pieces=[dict(name=n, sha256=sha(p), bytes=len(p)) for n, p in zip(names, pieces, strict=True)])
    if created is not None:
        manifest['created'] = created
    with open(os.path.join(where, 'manifest.json'), 'w') as fh:
        json.dump(manifest, fh)


def tar_of(files):
    """A gzip'd tar of {archive name: bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# 4. unpack never replaces a finished run; a pack is checked as a whole run

def test_unpack_never_replaces_a_finished_run_and_writes_nothing(tmp_path):
    fake_run(str(tmp_path / 'here'), value=542.06)  # the finished runs already in results/
    fake_run(str(tmp_path / 'there'), seed=1, value=540.54)  # another machine's runs of the same parts
    transfer.pack(str(tmp_path / 'p'), 'smoke', results_dir=str(tmp_path / 'there'))
    before = tree(str(tmp_path / 'here'))
    with pytest.raises(ValueError, match=r'(?s)smoke/5b holds a finished run.*smoke/5c holds a finished run'
                                         r'.*--results-dir.*nothing was unpacked'):
        transfer.unpack(str(tmp_path / 'p'), str(tmp_path / 'here'))
    assert tree(str(tmp_path / 'here')) == before
    transfer.unpack(str(tmp_path / 'p'), str(tmp_path / 'elsewhere'))  # what the message says to do
    assert value(str(tmp_path / 'elsewhere')) == 540.54


def test_a_pack_holding_only_metrics_is_refused_wherever_it_goes(tmp_path):
    """The pack of the issue: its digests match it, it holds smoke/5b/metrics.json alone and records no
    model file; neither beside a finished run's model nor beside a lone model.pt nor alone."""
    fake_run(str(tmp_path / 'other'), parts=('5b',), seed=1, value=540.54)
    metrics = (tmp_path / 'other' / 'smoke' / '5b' / 'metrics.json').read_bytes()
    hand_pack(str(tmp_path / 'p'), [tar_of({'smoke/5b/metrics.json': metrics})], parts=['5b'])
    fake_run(str(tmp_path / 'finished'), parts=('5b',), value=542.06)
    (tmp_path / 'model-only' / 'smoke' / '5b').mkdir(parents=True)
    shutil.copy(tmp_path / 'finished' / 'smoke' / '5b' / 'model.pt', tmp_path / 'model-only' / 'smoke' / '5b')
    for target, match in (('finished', r'smoke/5b holds a finished run'),
                          ('model-only', r'smoke/5b/metrics.json without the model.pt it belongs to'),
                          ('empty', r'smoke/5b/metrics.json without the model.pt it belongs to')):
        before = tree(str(tmp_path / target))
        with pytest.raises(ValueError, match=match + r'.*nothing was unpacked'):
            transfer.unpack(str(tmp_path / 'p'), str(tmp_path / target))
        assert tree(str(tmp_path / target)) == before, target


def test_metrics_packed_without_their_model_join_only_that_model(tmp_path, capsys):
    """--leave-out model.pt records the digest of the model left out: the metrics are unpacked beside
    that model file, or where there is none yet (its own pack brings it later), never beside another."""
    fake_run(str(tmp_path / 'a'), parts=('5b',), value=542.06)
    model = (tmp_path / 'a' / 'smoke' / '5b' / 'model.pt').read_bytes()
    transfer.pack(str(tmp_path / 'light'), 'smoke', results_dir=str(tmp_path / 'a'), leave_out=('model.pt',))
    transfer.pack(str(tmp_path / 'models'), 'smoke', results_dir=str(tmp_path / 'a'))
    # beside the model it belongs to (a run stopped while it evaluated)
    (tmp_path / 'same' / 'smoke' / '5b').mkdir(parents=True)
    (tmp_path / 'same' / 'smoke' / '5b' / 'model.pt').write_bytes(model)
    transfer.unpack(str(tmp_path / 'light'), str(tmp_path / 'same'))
    assert tree(str(tmp_path / 'same')) == tree(str(tmp_path / 'a'))
    # beside another model: refused
    (tmp_path / 'other' / 'smoke' / '5b').mkdir(parents=True)
    (tmp_path / 'other' / 'smoke' / '5b' / 'model.pt').write_bytes(b'another model')
    with pytest.raises(ValueError, match=r'belongs to a model.pt with sha256 .*other/smoke/5b/model.pt is another'):
        transfer.unpack(str(tmp_path / 'light'), str(tmp_path / 'other'))
    assert tree(str(tmp_path / 'other')) == {os.path.join('smoke', '5b', 'model.pt'): b'another model'}
    # where there is no model yet: the metrics alone, said so; then the whole run completes it
    capsys.readouterr()
    transfer.unpack(str(tmp_path / 'light'), str(tmp_path / 'new'))
    assert 'without its model.pt' in capsys.readouterr().out
    assert not (tmp_path / 'new' / 'smoke' / '5b' / 'model.pt').exists()
    transfer.unpack(str(tmp_path / 'models'), str(tmp_path / 'new'))
    assert tree(str(tmp_path / 'new')) == tree(str(tmp_path / 'a'))
    # both together, in either order
    transfer.unpack([str(tmp_path / 'light'), str(tmp_path / 'models')], str(tmp_path / 'both'))
    assert tree(str(tmp_path / 'both')) == tree(str(tmp_path / 'a'))


def test_a_model_file_alone_never_joins_finished_metrics(tmp_path):
    fake_run(str(tmp_path / 'a'), parts=('5b',))
    transfer.pack(str(tmp_path / 'light'), 'smoke', results_dir=str(tmp_path / 'a'), leave_out=('model.pt',))
    transfer.unpack(str(tmp_path / 'light'), str(tmp_path / 'b'))  # finished there, its model still to come
    fake_run(str(tmp_path / 'c'), parts=('5b',), seed=1)
    transfer.pack(str(tmp_path / 'model'), 'smoke', results_dir=str(tmp_path / 'c'),
                  leave_out=('metrics.json', 'run.log'))  # another run's model file, alone
    before = tree(str(tmp_path / 'b'))
    with pytest.raises(ValueError, match=r'smoke/5b holds a finished run.*model.pt'):
        transfer.unpack(str(tmp_path / 'model'), str(tmp_path / 'b'))
    assert tree(str(tmp_path / 'b')) == before


def test_the_same_run_unpacked_again_is_a_no_op(tmp_path, capsys):
    fake_run(str(tmp_path / 'a'))
    transfer.pack(str(tmp_path / 'p'), 'smoke', results_dir=str(tmp_path / 'a'), **SMALL)
    transfer.unpack(str(tmp_path / 'p'), str(tmp_path / 'b'))
    capsys.readouterr()
    transfer.unpack(str(tmp_path / 'p'), str(tmp_path / 'b'))
    assert '0 files' in capsys.readouterr().out and tree(str(tmp_path / 'b')) == tree(str(tmp_path / 'a'))


def test_pack_refuses_a_finished_part_without_its_model_file(tmp_path):
    fake_run(str(tmp_path / 'a'))
    os.remove(tmp_path / 'a' / 'smoke' / '5c' / 'model.pt')
    with pytest.raises(ValueError, match=r'smoke/5c/metrics.json has no model.pt beside it'):
        transfer.pack(str(tmp_path / 'p'), 'smoke', results_dir=str(tmp_path / 'a'))
    assert not (tmp_path / 'p').exists()
    transfer.pack(str(tmp_path / 'p'), 'smoke', results_dir=str(tmp_path / 'a'), parts=['5b'])


def test_the_command_line_says_why_and_loses_nothing(tmp_path):
    fake_run(str(tmp_path / 'here'), value=542.06)
    fake_run(str(tmp_path / 'there'), seed=1)
    transfer.pack(str(tmp_path / 'p'), 'smoke', results_dir=str(tmp_path / 'there'), parts=['5b'])
    before = tree(str(tmp_path / 'here'))
    run = subprocess.run([sys.executable, 'experiments.py', 'unpack', str(tmp_path / 'p'), '--results-dir',
                          str(tmp_path / 'here')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and 'error: ' in run.stderr and 'holds a finished run' in run.stderr, run.stderr
    assert 'Traceback' not in run.stderr and tree(str(tmp_path / 'here')) == before


# ---------------------------------------------------------------------------------------------
# 5. a folder holds one pack: pack refuses (or replaces) an older one; unpack takes the newest

def test_pack_into_a_folder_holding_an_older_pack_refuses_or_replaces_it(tmp_path):
    fake_run(str(tmp_path / 'old'), value=540.54)
    fake_run(str(tmp_path / 'new'), seed=1, value=542.06)
    transfer.pack(str(tmp_path / 'out'), 'smoke', results_dir=str(tmp_path / 'old'), **SMALL)  # pack-1, pack-2, ...
    (tmp_path / 'out' / 'notes.txt').write_text('mine')
    before = tree(str(tmp_path / 'out'))
    with pytest.raises(ValueError, match=r'already holds a pack \(smoke, written .*\).*nothing was written'):
        transfer.pack(str(tmp_path / 'out'), 'smoke', results_dir=str(tmp_path / 'new'))
    assert tree(str(tmp_path / 'out')) == before
    transfer.pack(str(tmp_path / 'out'), 'smoke', results_dir=str(tmp_path / 'new'), replace=True)
    assert sorted(os.listdir(tmp_path / 'out')) == ['manifest.json', 'notes.txt', 'smoke.tar.gz.00']
    transfer.unpack(str(tmp_path / 'out'), str(tmp_path / 'b'))
    assert value(str(tmp_path / 'b')) == 542.06


@pytest.mark.parametrize('newer', ['in the folder', 'in pack-*'])
def test_unpack_takes_the_newest_pack_of_a_folder_and_says_so(tmp_path, capsys, newer):
    """The issue's folder: an older run's pack-* pieces beside a newer pack (or the other way round)."""
    fake_run(str(tmp_path / 'run1'), value=540.54)
    fake_run(str(tmp_path / 'run2'), seed=1, value=542.06)
    single, multi = (tmp_path / 'single', tmp_path / 'multi')
    if newer == 'in the folder':
        transfer.pack(str(multi), 'smoke', results_dir=str(tmp_path / 'run1'), **SMALL)  # pack-1, pack-2, ...
        transfer.pack(str(single), 'smoke', results_dir=str(tmp_path / 'run2'))
        newest = [multi / 'manifest.json']
    else:
        transfer.pack(str(single), 'smoke', results_dir=str(tmp_path / 'run1'))
        transfer.pack(str(multi), 'smoke', results_dir=str(tmp_path / 'run2'), **SMALL)
        newest = [multi / p / 'manifest.json' for p in os.listdir(multi)]
    for name in os.listdir(single):
        shutil.copy(single / name, multi / name)
    for path in newest:  # the manifests' own record decides, not the files' times
        os.utime(path, (0, 0))
    capsys.readouterr()
    transfer.unpack(str(tmp_path / 'multi'), str(tmp_path / 'b'))
    said = [line for line in capsys.readouterr().out.splitlines() if 'unpacking the newest' in line]
    assert len(said) == 1 and 'holds 2 packs' in said[0], said
    assert value(str(tmp_path / 'b')) == 542.06 and value(str(tmp_path / 'b'), '5c') == 542.06


def test_packs_that_record_no_time_are_told_apart_by_their_manifest_files(tmp_path, capsys):
    for k, v in ((1, 540.54), (2, 542.06)):
        fake_run(str(tmp_path / f'run{k}'), parts=('5b',), seed=k, value=v)
        files = {f'smoke/5b/{n}': (tmp_path / f'run{k}' / 'smoke' / '5b' / n).read_bytes()
                 for n in ('model.pt', 'metrics.json')}
        hand_pack(str(tmp_path / 'out' / (f'pack-{k}' if k == 1 else '')), [tar_of(files)])
    os.utime(tmp_path / 'out' / 'pack-1' / 'manifest.json', (1000, 1000))
    transfer.unpack(str(tmp_path / 'out'), str(tmp_path / 'b'))
    assert value(str(tmp_path / 'b')) == 542.06
    assert "its manifest file's time" in capsys.readouterr().out


def test_two_folders_that_carry_one_file_differently_are_refused(tmp_path):
    fake_run(str(tmp_path / 'run1'), parts=('5b',), value=540.54)
    fake_run(str(tmp_path / 'run2'), parts=('5b',), seed=1, value=542.06)
    transfer.pack(str(tmp_path / 'p1'), 'smoke', results_dir=str(tmp_path / 'run1'))
    transfer.pack(str(tmp_path / 'p2'), 'smoke', results_dir=str(tmp_path / 'run2'))
    with pytest.raises(ValueError, match=r'carry smoke/5b/\S+ with different contents.*nothing was unpacked'):
        transfer.unpack([str(tmp_path / 'p1'), str(tmp_path / 'p2')], str(tmp_path / 'b'))
    assert not (tmp_path / 'b').exists()


# ---------------------------------------------------------------------------------------------
# 9. a piece whose digest is right but which is not part of a gzip'd tar

@pytest.mark.parametrize('kind', ['random bytes', 'gzip, not a tar', 'second piece'])
def test_a_piece_that_is_not_a_tar_is_refused_naming_it(tmp_path, kind):
    rng = random.Random(3)
    junk = bytes(rng.getrandbits(8) for _ in range(600))
    if kind == 'random bytes':
        pieces, bad = [junk], 'smoke.tar.gz.00'
    elif kind == 'gzip, not a tar':
        pieces, bad = [gzip.compress(b'these bytes are no tar archive, ' * 40)], 'smoke.tar.gz.00'
    else:
        good = tar_of({'smoke/5b/run.log': bytes(rng.getrandbits(8) for _ in range(3000))})
        pieces, bad = [good[:1000], junk + good[1600:]], 'smoke.tar.gz.01'
    hand_pack(str(tmp_path / 'p'), pieces)
    (tmp_path / 'b').mkdir()
    with pytest.raises(ValueError, match=rf'{tmp_path / "p" / bad} passes its sha256 check but is not .*gzip\'d tar'
                                         r'.*nothing was unpacked'):
        transfer.unpack(str(tmp_path / 'p'), str(tmp_path / 'b'))
    assert os.listdir(tmp_path / 'b') == []
