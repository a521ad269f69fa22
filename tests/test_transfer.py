"""pack and unpack with small fake run directories and small limits: one part at a time, a run
larger than one pack in several packs taken in any order, and a missing or damaged piece refused
before anything is written."""
import os
import random
import shutil
import subprocess
import sys

import pytest

from engine import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(files=3, piece_bytes=1000)  # packs of 2 pieces of 1000 bytes and a manifest


def fake_run(results, parts=('5b', '5c'), size=3000, seed=0):
    """results/smoke/<part>/ with a few files of incompressible bytes; returns {relative path: bytes}."""
    rng, files = random.Random(seed), {}
    for part in parts:
        for name, n in (('model.pt', size), ('metrics.json', 50), ('run.log', 80)):
            path = os.path.join(results, 'smoke', part, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = bytes(rng.getrandbits(8) for _ in range(n))
            with open(path, 'wb') as fh:
                fh.write(data)
            files[os.path.relpath(path, results)] = data
    with open(os.path.join(results, 'smoke', '5b', 'run.lock'), 'w') as fh:
        fh.write('1')  # a lock is never carried
    return files


def tree(results):
    out = {}
    for d, _, names in os.walk(results):
        for n in names:
            with open(os.path.join(d, n), 'rb') as fh:
                out[os.path.relpath(os.path.join(d, n), results)] = fh.read()
    return out


def test_a_run_larger_than_one_pack_goes_out_in_several_taken_in_any_order(tmp_path):
    files = fake_run(str(tmp_path / 'a'))
    written = transfer.pack(str(tmp_path / 'out'), 'smoke', results_dir=str(tmp_path / 'a'), **SMALL)
    packs = sorted(os.listdir(tmp_path / 'out'))
    assert len(packs) >= 3 and packs[:2] == ['pack-1', 'pack-2']
    for p in packs:  # each pack within the limits, on its own
        inside = os.listdir(tmp_path / 'out' / p)
        assert len(inside) <= 3 and 'manifest.json' in inside
        assert all(os.path.getsize(tmp_path / 'out' / p / n) <= 1000 for n in inside if n != 'manifest.json')
    assert len(written) == sum(len(os.listdir(tmp_path / 'out' / p)) for p in packs)
    # the packs arrive in separate directories, named in reverse order
    for p in packs:
        shutil.move(str(tmp_path / 'out' / p), str(tmp_path / f'arrived-{p}'))
    transfer.unpack([str(tmp_path / f'arrived-{p}') for p in reversed(packs)], str(tmp_path / 'b'))
    assert tree(str(tmp_path / 'b')) == files


def test_one_part_at_a_time(tmp_path):
    files = fake_run(str(tmp_path / 'a'), size=200)
    transfer.pack(str(tmp_path / 'p5b'), 'smoke', results_dir=str(tmp_path / 'a'), parts=['5b'])
    transfer.pack(str(tmp_path / 'p5c'), 'smoke', results_dir=str(tmp_path / 'a'), parts=['5c'])
    assert sorted(os.listdir(tmp_path / 'p5b')) == ['manifest.json', 'smoke.tar.gz.00']  # one pack: in DIR itself
    transfer.unpack(str(tmp_path / 'p5b'), str(tmp_path / 'b'))
    assert tree(str(tmp_path / 'b')) == {k: v for k, v in files.items() if '/5b/' in k}
    transfer.unpack([str(tmp_path / 'p5c'), str(tmp_path / 'p5b')], str(tmp_path / 'c'))
    assert tree(str(tmp_path / 'c')) == files
    with pytest.raises(ValueError, match=r'6a: no such part in .*smoke \(it holds 5b, 5c\)'):
        transfer.pack(str(tmp_path / 'p6a'), 'smoke', results_dir=str(tmp_path / 'a'), parts=['6a'])


@pytest.mark.parametrize('damage,match', [
    ('drop pack', r'pack\(s\) 2 of \d+ of smoke are missing \(found 1 \(.*pack-1\), 3'),
    ('drop piece', r'do not match their manifest: smoke.tar.gz.02 is missing'),
    ('flip byte', r'do not match their manifest: smoke.tar.gz.03 is damaged'),
])
def test_a_missing_or_damaged_piece_is_refused_and_nothing_is_lost(tmp_path, damage, match):
    fake_run(str(tmp_path / 'a'))
    transfer.pack(str(tmp_path / 'out'), 'smoke', results_dir=str(tmp_path / 'a'), **SMALL)
    target = tmp_path / 'b'
    (target / 'smoke' / '5b').mkdir(parents=True)
    (target / 'smoke' / '5b' / 'model.pt').write_bytes(b'the model already here')
    if damage == 'drop pack':
        shutil.rmtree(tmp_path / 'out' / 'pack-2')
    elif damage == 'drop piece':
        os.remove(tmp_path / 'out' / 'pack-2' / 'smoke.tar.gz.02')
    else:
        path = tmp_path / 'out' / 'pack-2' / 'smoke.tar.gz.03'
        data = bytearray(path.read_bytes())
        data[10] ^= 1
        path.write_bytes(bytes(data))
    before = tree(str(tmp_path / 'out'))
    with pytest.raises(ValueError, match=match):
        transfer.unpack(str(tmp_path / 'out'), str(target))
    assert tree(str(target)) == {os.path.join('smoke', '5b', 'model.pt'): b'the model already here'}
    assert tree(str(tmp_path / 'out')) == before  # the pieces stay as they came


def test_limits_and_the_command_line(tmp_path):
    fake_run(str(tmp_path / 'a'), size=100)
    with pytest.raises(ValueError, match='files >= 2'):
        transfer.pack(str(tmp_path / 'x'), 'smoke', results_dir=str(tmp_path / 'a'), files=1)
    run = subprocess.run([sys.executable, 'experiments.py', 'pack', str(tmp_path / 'p'), '--profile', 'smoke',
                          '--parts', '5c', '--results-dir', str(tmp_path / 'a')], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run([sys.executable, 'experiments.py', 'unpack', str(tmp_path / 'p'), '--results-dir',
                          str(tmp_path / 'b')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / 'b' / 'smoke')) == ['5c']
