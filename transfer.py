"""Moving a profile's results between machines: a GPU lent for a few hours, a Colab session that
ends, a cluster that gives a new machine each time. `pack` writes everything a profile has produced
(finished parts, and the checkpoint of the one in progress) as at most 8 files of at most 16 MiB;
`unpack` restores them on the next machine, where `python experiments.py all --profile full
--minutes N` resumes exactly where the last slice stopped.
"""
import hashlib
import io
import os
import tarfile

from config import run_dir
from files import write_json
from report import read_json


PACK_FILES, PACK_BYTES = 8, 16 * 2 ** 20  # what a transfer may carry: 8 files of at most 16 MiB


def pack(directory, profile, precision='fp32', results_dir='results'):
    """Everything results_dir/<profile>[-<precision>] holds (finished parts, the checkpoint of an
    unfinished one) as a gzip'd tar cut into pieces of at most 16 MiB, plus manifest.json: at most
    8 files in `directory`. Returns the paths written."""
    source = run_dir(results_dir, profile, precision)
    if not os.path.isdir(source):
        raise ValueError(f'{source} does not exist: nothing to pack for the {profile} profile')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        tar.add(source, arcname=os.path.basename(source),
                filter=lambda info: None if info.name.endswith(('.tmp', 'run.lock')) else info)
    blob = buffer.getvalue()
    pieces = [blob[i:i + PACK_BYTES] for i in range(0, len(blob), PACK_BYTES)] or [b'']
    if len(pieces) + 1 > PACK_FILES:
        raise ValueError(f'{source} packs to {len(blob) / 2 ** 20:.0f} MiB, more than the {PACK_FILES - 1} pieces '
                         f'of 16 MiB that fit beside the manifest; pack the parts in two runs of --results-dir')
    os.makedirs(directory, exist_ok=True)
    names = [f'{os.path.basename(source)}.tar.gz.{i:02d}' for i in range(len(pieces))]
    for name, piece in zip(names, pieces):
        with open(os.path.join(directory, name), 'wb') as fh:
            fh.write(piece)
    manifest = dict(run=os.path.basename(source), pieces=names, sha256=hashlib.sha256(blob).hexdigest())
    write_json(os.path.join(directory, 'manifest.json'), manifest, indent=1)
    print(f'packed {source} ({len(blob) / 2 ** 20:.1f} MiB) into {len(names)} piece(s) and manifest.json in '
          f'{directory}', flush=True)
    return [os.path.join(directory, n) for n in names + ['manifest.json']]


def unpack(directory, results_dir='results'):
    """Restore what `pack` wrote into results_dir/<run>, after checking its digest; the files of
    the pack replace those of the same name there."""
    manifest = read_json(os.path.join(directory, 'manifest.json'))
    blob = b''.join(open(os.path.join(directory, name), 'rb').read() for name in manifest['pieces'])
    if hashlib.sha256(blob).hexdigest() != manifest['sha256']:
        raise ValueError(f'the pieces in {directory} do not match their manifest (a piece is missing, truncated or '
                         f'from another pack); copy them again')
    os.makedirs(results_dir, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode='r:gz') as tar:
        members = tar.getmembers()
        if any(os.path.isabs(m.name) or '..' in m.name.split('/') or not (m.isfile() or m.isdir()) for m in members):
            raise ValueError(f'{directory} holds a path outside its run directory; not unpacked')
        tar.extractall(results_dir, members=members)
    target = os.path.join(results_dir, manifest['run'])
    print(f'unpacked {len(members)} entries into {target}', flush=True)
    return target
