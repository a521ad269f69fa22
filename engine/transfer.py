"""Moving a profile's results between machines: a GPU lent for a few hours, a Colab session that
ends, a cluster that gives a new machine each time. `pack` writes what a profile has produced
(finished parts, and the checkpoint of the one in progress; or only the parts asked) as packs of at
most 8 files of at most 16 MiB each; `unpack` checks and restores them on the next machine, where
`python experiments.py all --profile full --minutes N` resumes exactly where the last slice stopped.

A pack is a directory: pieces of one gzip'd tar and manifest.json (its pieces with their sha256,
its number among the packs, the digest of the whole). What fits in one pack is written into DIR
itself; more goes to DIR/pack-1, DIR/pack-2, ..., each movable on its own (8 files of 16 MiB is
what one transfer may carry, our limit); `unpack` takes them in any order and from several
directories, and refuses, before writing anything, while a piece is missing or damaged.

`carry` does the same for one checkpoint of a run in progress, so that git can hold it between
sittings although it is over the size a committed file may have: <part>/checkpoint.pack/ holds its
pieces and a manifest with the epoch and step it has reached; `restore_carried` puts it back
before a run resumes, unless the checkpoint already there is as far on.
"""
import hashlib
import io
import os
import tarfile

import torch

from engine.config import run_dir
from engine.files import atomic_write, read_json, write_json


PACK_FILES, PACK_BYTES = 8, 16 * 2 ** 20  # what a transfer may carry: 8 files of at most 16 MiB
MANIFEST = 'manifest.json'


def digest(data):
    return hashlib.sha256(data).hexdigest()


def tar_blob(source, parts=None, leave_out=()):
    """A gzip'd tar of the run directory `source` (only the directories of `parts`, if given),
    without temporary files, run locks and files named in leave_out."""
    buffer = io.BytesIO()
    name, drop = os.path.basename(source), ('.tmp', 'run.lock') + tuple('/' + n for n in leave_out)
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        keep = lambda info: None if info.name.endswith(drop) else info  # noqa: E731
        if parts is None:
            tar.add(source, arcname=name, filter=keep)
        else:
            for part in parts:
                tar.add(os.path.join(source, part), arcname=f'{name}/{part}', filter=keep)
    return buffer.getvalue()


def pack(directory, profile, precision='fp32', results_dir='results', parts=None, files=PACK_FILES,
         piece_bytes=PACK_BYTES, leave_out=()):
    """results_dir/<profile>[-<precision>] (or only its `parts`, without the files named in
    leave_out, e.g. model.pt) as a gzip'd tar cut into pieces of at most piece_bytes, in packs of at
    most `files` files (pieces + manifest.json): in `directory` if one pack holds it, else in
    directory/pack-1, pack-2, ... Returns the paths written."""
    source = run_dir(results_dir, profile, precision)
    if not os.path.isdir(source):
        raise ValueError(f'{source} does not exist: nothing to pack for the {profile} profile')
    if files < 2 or piece_bytes < 1:
        raise ValueError(f'a pack needs room for a piece and its manifest: files >= 2 and piece_bytes >= 1, got '
                         f'{files} and {piece_bytes}')
    held = sorted(n for n in os.listdir(source) if os.path.isdir(os.path.join(source, n)))
    missing = [p for p in parts or [] if p not in held]
    if missing:
        raise ValueError(f'{", ".join(missing)}: no such part in {source} (it holds {", ".join(held) or "none"})')
    blob = tar_blob(source, parts, leave_out)
    pieces = [blob[i:i + piece_bytes] for i in range(0, len(blob), piece_bytes)] or [b'']
    per_pack = files - 1
    groups = [pieces[i:i + per_pack] for i in range(0, len(pieces), per_pack)]
    run, written = os.path.basename(source), []
    for k, group in enumerate(groups):
        where = directory if len(groups) == 1 else os.path.join(directory, f'pack-{k + 1}')
        written += write_pack(where, run, group, k * per_pack, k + 1, len(groups), digest(blob), parts)
    print(f'packed {source}{" (" + ", ".join(parts) + ")" if parts else ""} ({len(blob) / 2 ** 20:.1f} MiB) into '
          f'{len(pieces)} piece(s) in {len(groups)} pack(s) in {directory}', flush=True)
    return written


def write_pack(where, run, pieces, first, number, packs, whole, parts):
    """One pack: its pieces (numbered from `first` across all packs) and its manifest."""
    names = write_pieces(where, f'{run}.tar.gz', pieces, first)
    manifest = dict(run=run, parts=parts, pack=number, packs=packs, first=first, sha256=whole,
                    pieces=[dict(name=n, sha256=digest(p), bytes=len(p)) for n, p in zip(names, pieces)])
    write_json(os.path.join(where, MANIFEST), manifest, indent=1)
    return [os.path.join(where, n) for n in names + [MANIFEST]]


def write_pieces(where, stem, pieces, first=0):
    """The pieces as where/<stem>.00, .01, ... (numbered from `first`); returns their names."""
    os.makedirs(where, exist_ok=True)
    names = [f'{stem}.{first + i:02d}' for i in range(len(pieces))]
    for name, piece in zip(names, pieces):
        with open(os.path.join(where, name), 'wb') as fh:
            fh.write(piece)
    return names


def find_packs(directories):
    """[(directory, manifest)] of every pack in the directories and their pack-* subdirectories."""
    found = []
    for d in directories:
        candidates = [d] + sorted(os.path.join(d, n) for n in (os.listdir(d) if os.path.isdir(d) else [])
                                  if n.startswith('pack-'))
        found += [(c, read_json(os.path.join(c, MANIFEST))) for c in candidates
                  if os.path.exists(os.path.join(c, MANIFEST))]
    if not found:
        raise ValueError(f'no {MANIFEST} in {", ".join(directories)} or a pack-* directory there: not a pack '
                         f'written by `experiments.py pack`')
    return found


def read_pieces(where, manifest):
    """The bytes of one pack's pieces, each checked against its digest (manifests written before
    per-piece digests: the whole is checked later)."""
    data = []
    for piece in manifest['pieces']:
        name = piece if isinstance(piece, str) else piece['name']
        path = os.path.join(where, name)
        if not os.path.exists(path):
            raise ValueError(f'the pieces in {where} do not match their manifest: {name} is missing; copy it again '
                             f'(nothing was unpacked)')
        with open(path, 'rb') as fh:
            data.append(fh.read())
        if not isinstance(piece, str) and digest(data[-1]) != piece['sha256']:
            raise ValueError(f'the pieces in {where} do not match their manifest: {name} is damaged (its sha256 '
                             f'differs); copy it again (nothing was unpacked)')
    return data


def assemble(packs):
    """The tar of one pack run from its packs, in any order: every pack present, every digest right."""
    run, total, whole = packs[0][1]['run'], packs[0][1].get('packs', 1), packs[0][1]['sha256']
    numbers = {m.get('pack', 1): (where, m) for where, m in packs}
    missing = sorted(set(range(1, total + 1)) - set(numbers))
    if missing:
        held = ', '.join(f'{n} ({numbers[n][0]})' for n in sorted(numbers))
        raise ValueError(f'pack(s) {", ".join(map(str, missing))} of {total} of {run} are missing (found {held}); '
                         f'unpack all of them together (nothing was unpacked)')
    blob = b''.join(b''.join(read_pieces(*numbers[n])) for n in range(1, total + 1))
    if digest(blob) != whole:
        raise ValueError(f'the pieces in {", ".join(w for w, _ in packs)} do not match their manifest (a piece is '
                         f'missing, truncated or from another pack); copy them again (nothing was unpacked)')
    return run, blob


def unpack(directories, results_dir='results'):
    """Restore what `pack` wrote: the packs in `directories` (one path or several, each a pack or
    holding pack-* directories, in any order) into results_dir/<run>, once every piece of every
    pack run is there and checked; the files of the packs replace those of the same name there.
    Returns the run directories restored."""
    directories = [directories] if isinstance(directories, str) else list(directories)
    runs = {}
    for where, manifest in find_packs(directories):
        runs.setdefault(manifest['sha256'], []).append((where, manifest))
    blobs = [assemble(packs) for packs in runs.values()]  # all checked before anything is written
    archives = [(run, tarfile.open(fileobj=io.BytesIO(blob), mode='r:gz')) for run, blob in blobs]
    for run, tar in archives:
        members = tar.getmembers()
        if any(os.path.isabs(m.name) or '..' in m.name.split('/') or not (m.isfile() or m.isdir())
               or m.name.split('/')[0] != run for m in members):
            raise ValueError(f'the pack of {run} holds a path outside its run directory; nothing was unpacked')
    os.makedirs(results_dir, exist_ok=True)
    targets = []
    safe = dict(filter='data') if hasattr(tarfile, 'data_filter') else {}  # Python >= 3.11.4, 3.10.12
    for run, tar in archives:
        with tar:
            members = tar.getmembers()
            tar.extractall(results_dir, members=members, **safe)
        targets.append(os.path.join(results_dir, run))
        print(f'unpacked {len(members)} entries into {targets[-1]}', flush=True)
    return targets[0] if len(targets) == 1 else targets


# ---------------------------------------------------------------------------------------------
# One checkpoint of a run in progress, carried by git between sittings

CARRIED = 'checkpoint.pack'  # <part>/checkpoint.pack/: pieces of checkpoint.pt and a manifest
CHECKPOINT = 'checkpoint.pt'


def reached(ck):
    """(epoch, batch, step) that a checkpoint has trained to."""
    return tuple(int(ck.get(k, 0)) for k in ('epoch', 'batch', 'step'))


def describe_reached(at):
    return f'epoch {at[0]}, batch {at[1]}, step {at[2]}'


def carry(part_dir, piece_bytes=PACK_BYTES):
    """part_dir/checkpoint.pt as part_dir/checkpoint.pack/: pieces of at most piece_bytes and a
    manifest (their sha256, that of the whole, and the epoch, batch and step the checkpoint has
    reached), replacing an earlier pack. Returns the manifest."""
    path = os.path.join(part_dir, CHECKPOINT)
    if not os.path.exists(path):
        raise ValueError(f'{path} does not exist: nothing to carry (a finished run keeps its model file, not a checkpoint)')
    if os.path.exists(os.path.join(part_dir, 'metrics.json')):
        raise ValueError(f'{part_dir} has finished (metrics.json): its model file is what is committed, not its checkpoint')
    if piece_bytes < 1:
        raise ValueError(f'piece_bytes must be at least 1, got {piece_bytes}')
    with open(path, 'rb') as fh:
        blob = fh.read()
    at = reached(torch.load(io.BytesIO(blob), map_location='cpu', weights_only=True))
    where = os.path.join(part_dir, CARRIED)
    drop_carried(part_dir)
    pieces = [blob[i:i + piece_bytes] for i in range(0, len(blob), piece_bytes)]
    names = write_pieces(where, CHECKPOINT, pieces)
    manifest = dict(file=CHECKPOINT, epoch=at[0], batch=at[1], step=at[2], sha256=digest(blob), bytes=len(blob),
                    pieces=[dict(name=n, sha256=digest(p), bytes=len(p)) for n, p in zip(names, pieces)])
    write_json(os.path.join(where, MANIFEST), manifest, indent=1)
    print(f'carried {path} ({describe_reached(at)}, {len(blob) / 2 ** 20:.1f} MiB) into {where} '
          f'({len(pieces)} piece(s) of at most {piece_bytes / 2 ** 20:.0f} MiB); commit it with: git add {where}',
          flush=True)
    return manifest


def carried(part_dir):
    """The manifest of part_dir/checkpoint.pack (None if there is none)."""
    path = os.path.join(part_dir, CARRIED, MANIFEST)
    return read_json(path) if os.path.exists(path) else None


def restore_carried(part_dir, log=print):
    """Before a run resumes: the carried checkpoint back into part_dir/checkpoint.pt, every piece
    checked first, if there is no checkpoint there or the one there has trained less (it is then kept
    as checkpoint-step<N>.pt). Returns the path restored, or None."""
    manifest = carried(part_dir)
    if manifest is None:
        return None
    path, where = os.path.join(part_dir, CHECKPOINT), os.path.join(part_dir, CARRIED)
    at = (manifest['epoch'], manifest['batch'], manifest['step'])
    local = None
    if os.path.exists(path):
        try:
            local = reached(torch.load(path, map_location='cpu', weights_only=True))
        except Exception:  # noqa: BLE001 (unreadable: the carried one replaces it, and it is kept aside)
            local = (-1, -1, -1)
        if local[2] >= at[2]:
            log(f'{path} ({describe_reached(local)}) is as far on as the one carried in {where} '
                f'({describe_reached(at)}): resuming from it')
            return None
    blob = b''.join(read_pieces(where, manifest))
    if digest(blob) != manifest['sha256']:
        raise ValueError(f'the pieces in {where} do not make the checkpoint their manifest names (a piece is missing, '
                         f'truncated or from another pack); copy them again (nothing was restored)')
    if local is not None:
        aside = os.path.join(part_dir, f'checkpoint-step{max(local[2], 0)}.pt')
        os.replace(path, aside)
        log(f'{path} ({describe_reached(local)}) has trained less than the one carried in {where}: it is kept as {aside}')
    atomic_write(path, lambda fh: fh.write(blob))
    log(f'restored {path} ({describe_reached(at)}) from {where}')
    return path


def drop_carried(part_dir):
    """Remove part_dir/checkpoint.pack (a finished run, or a fresh start, has no use for it).
    Returns whether there was one."""
    where = os.path.join(part_dir, CARRIED)
    if not os.path.isdir(where):
        return False
    for name in os.listdir(where):
        os.remove(os.path.join(where, name))
    os.rmdir(where)
    return True
