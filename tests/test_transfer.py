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


# ---------------------------------------------------------------------------------------------
# carry: one in-progress checkpoint as pieces git can hold, restored before a run resumes

def fake_checkpoint(path, step, size=5000, seed=0):
    """A small stand-in for checkpoint.pt: what carry reads of one (epoch, batch, step) and weights."""
    import torch
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(epoch=step // 10, batch=step % 10, step=step,
                    w=torch.randn(size // 4, generator=torch.Generator().manual_seed(seed))), path)
    with open(path, 'rb') as fh:
        return fh.read()


def test_a_carried_checkpoint_is_pieces_under_the_limit_and_comes_back_byte_for_byte(tmp_path):
    part = tmp_path / 'full' / '6d'
    original = fake_checkpoint(str(part / 'checkpoint.pt'), step=37)
    manifest = transfer.carry(str(part), piece_bytes=2000)
    pieces = sorted(n for n in os.listdir(part / 'checkpoint.pack') if n != 'manifest.json')
    assert len(pieces) == -(-len(original) // 2000) >= 3
    assert all(os.path.getsize(part / 'checkpoint.pack' / n) <= 2000 for n in pieces)
    assert (manifest['epoch'], manifest['batch'], manifest['step']) == (3, 7, 37)
    os.remove(part / 'checkpoint.pt')  # as in a fresh clone: only the committed pack is there
    logged = []
    assert transfer.restore_carried(str(part), log=logged.append) == str(part / 'checkpoint.pt')
    assert (part / 'checkpoint.pt').read_bytes() == original
    assert 'restored' in logged[-1] and 'step 37' in logged[-1]
    transfer.carry(str(part), piece_bytes=10 ** 6)  # carried again: the earlier pieces are replaced
    assert sorted(os.listdir(part / 'checkpoint.pack')) == ['checkpoint.pt.00', 'manifest.json']


def test_the_checkpoint_that_has_trained_further_is_the_one_resumed_and_none_is_lost(tmp_path):
    part = tmp_path / 'full' / '6d'
    carried = fake_checkpoint(str(part / 'checkpoint.pt'), step=50, seed=1)
    transfer.carry(str(part))
    older = fake_checkpoint(str(part / 'checkpoint.pt'), step=20, seed=2)  # a machine that holds an older one
    transfer.restore_carried(str(part), log=lambda m: None)
    assert (part / 'checkpoint.pt').read_bytes() == carried
    assert (part / 'checkpoint-step20.pt').read_bytes() == older  # kept aside, not lost
    newer = fake_checkpoint(str(part / 'checkpoint.pt'), step=80, seed=3)  # trained on past the carried one
    logged = []
    assert transfer.restore_carried(str(part), log=logged.append) is None
    assert (part / 'checkpoint.pt').read_bytes() == newer and 'as far on' in logged[-1]


@pytest.mark.parametrize('damage', ['drop piece', 'flip byte'])
def test_a_damaged_carried_checkpoint_is_refused_and_nothing_is_lost(tmp_path, damage):
    part = tmp_path / 'full' / '6d'
    fake_checkpoint(str(part / 'checkpoint.pt'), step=50)
    transfer.carry(str(part), piece_bytes=2000)
    older = fake_checkpoint(str(part / 'checkpoint.pt'), step=20, seed=2)
    piece = part / 'checkpoint.pack' / 'checkpoint.pt.01'
    if damage == 'drop piece':
        os.remove(piece)
    else:
        data = bytearray(piece.read_bytes())
        data[5] ^= 1
        piece.write_bytes(bytes(data))
    before = tree(str(part / 'checkpoint.pack'))
    with pytest.raises(ValueError, match='checkpoint.pt.01 is (missing|damaged)'):
        transfer.restore_carried(str(part), log=lambda m: None)
    assert (part / 'checkpoint.pt').read_bytes() == older and not (part / 'checkpoint-step20.pt').exists()
    assert tree(str(part / 'checkpoint.pack')) == before


def test_carry_refuses_a_finished_run_and_a_missing_checkpoint(tmp_path):
    part = tmp_path / 'full' / '6d'
    part.mkdir(parents=True)
    with pytest.raises(ValueError, match='does not exist: nothing to carry'):
        transfer.carry(str(part))
    fake_checkpoint(str(part / 'checkpoint.pt'), step=5)
    (part / 'metrics.json').write_text('{}')
    with pytest.raises(ValueError, match='has finished'):
        transfer.carry(str(part))
    assert not (part / 'checkpoint.pack').exists()
    run = subprocess.run([sys.executable, 'experiments.py', 'carry', '--profile', 'full', '--results-dir',
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and 'nothing to carry' in run.stderr, run.stderr[-2000:]


def test_a_run_resumes_from_a_carried_checkpoint_and_drops_it_when_it_finishes(tmp_path):
    import time
    import experiments as E
    a, b = tmp_path / 'a', tmp_path / 'b'
    assert E.run_part('6a', profile='smoke', results_dir=str(a), progress=False, stop_at=time.time()) is None
    run = subprocess.run([sys.executable, 'experiments.py', 'carry', '--profile', 'smoke', '--parts', '6a',
                          '--results-dir', str(a), '--piece-mib', '0.05'], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and 'git add' in run.stdout, run.stderr[-2000:]
    manifest = transfer.carried(str(a / 'smoke' / '6a'))
    assert len(manifest['pieces']) > 1
    shutil.copytree(a / 'smoke' / '6a' / 'checkpoint.pack', b / 'smoke' / '6a' / 'checkpoint.pack')  # a clone of it
    E.run_part('6a', profile='smoke', results_dir=str(b), progress=False)
    log = (b / 'smoke' / '6a' / 'run.log').read_text()
    assert f'resuming from {b / "smoke" / "6a" / "checkpoint.pt"} at epoch 0, batch 1, step 1' in log
    assert 'restored' in log and not (b / 'smoke' / '6a' / 'checkpoint.pack').exists()
    # a damaged pack is refused, unless the run starts afresh, which discards it
    shutil.copytree(a / 'smoke' / '6a' / 'checkpoint.pack', tmp_path / 'c' / 'smoke' / '6a' / 'checkpoint.pack')
    os.remove(tmp_path / 'c' / 'smoke' / '6a' / 'checkpoint.pack' / 'checkpoint.pt.00')
    with pytest.raises(ValueError, match='checkpoint.pt.00 is missing'):
        E.run_part('6a', profile='smoke', results_dir=str(tmp_path / 'c'), progress=False)
    E.run_part('6a', profile='smoke', results_dir=str(tmp_path / 'c'), progress=False, fresh=True, epochs=1)
    assert 'restored' not in (tmp_path / 'c' / 'smoke' / '6a' / 'run.log').read_text()
