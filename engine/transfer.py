"""Moving a profile's results between machines: a GPU lent for a few hours, a Colab session that
ends, a cluster that gives a new machine each time. `pack` writes what a profile has produced
(finished parts, and the checkpoint of the one in progress; or only the parts asked) as packs of at
most 8 files of at most 16 MiB each; `unpack` checks and restores them on the next machine, where
`python experiments.py all --profile full --minutes N` resumes exactly where the last slice stopped.

A pack is a directory: pieces of one gzip'd tar and manifest.json (its pieces with their sha256,
its number among the packs, the digest of the whole, when it was written). What fits in one pack is
written into DIR itself; more goes to DIR/pack-1, DIR/pack-2, ..., each movable on its own (8 files
of 16 MiB is what one transfer may carry, our limit); a directory holds one pack. `unpack` takes
them in any order and from several directories, and checks everything before it writes anything:
it refuses while a piece is missing, damaged or no part of a gzip'd tar, takes a run whole (a
part's metrics with the model file they belong to), and never replaces a finished run (reading a
pack back and those checks: engine/packs.py).

`carry` does the same for one checkpoint of a run in progress, so that git can hold it between
sittings although it is over the size a committed file may have: <part>/checkpoint.pack/ holds its
pieces and a manifest with the epoch and step it has reached; `restore_carried` puts it back
before a run resumes, unless the checkpoint already there is as far on.
"""
import datetime
import io
import os
import tarfile

import torch

from engine.config import run_dir
from engine.files import atomic_write, file_sha256, read_json, write_json
from engine.packs import (MANIFEST, METRICS, MODEL, PIECE, Incoming, check_finished, check_paths, check_whole,
                          describe, digest, find_packs, merge, packs_in, piece_name, read_pieces, same_file)

PACK_FILES, PACK_BYTES = 8, 16 * 2 ** 20  # what a transfer may carry: 8 files of at most 16 MiB


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
         piece_bytes=PACK_BYTES, leave_out=(), replace=False):
    """results_dir/<profile>[-<precision>] (or only its `parts`, without the files named in
    leave_out, e.g. model.pt) as a gzip'd tar cut into pieces of at most piece_bytes, in packs of at
    most `files` files (pieces + manifest.json): in `directory` if one pack holds it, else in
    directory/pack-1, pack-2, ... Returns the paths written.

    A finished part (metrics.json) goes with its model file: one whose model.pt is missing is
    refused; one packed with model.pt left out has that file's sha256 recorded in the manifest
    (left_out_models), against which `unpack` checks the model its metrics join. The manifest also
    records when it was written (created, UTC). A directory already holding a pack is refused, so
    that it never holds two; with replace=True that pack's own files (manifest.json, the
    <run>.tar.gz.NN pieces, pack-* directories left empty) are removed first, and nothing else.
    Nothing is written or removed until every check has passed."""
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
    models = left_out_models(source, parts or held, leave_out)
    older = packs_in(directory)
    if older and not replace:
        where, manifest = older[0]
        raise ValueError(f'{directory} already holds a pack ({describe(where, manifest)}): a directory holds one pack, '
                         f'so that `unpack` never takes an older one with it; pack into an empty directory, or remove '
                         f'that pack first (nothing was written)')
    blob = tar_blob(source, parts, leave_out)
    pieces = [blob[i:i + piece_bytes] for i in range(0, len(blob), piece_bytes)] or [b'']
    per_pack = files - 1
    groups = [pieces[i:i + per_pack] for i in range(0, len(pieces), per_pack)]
    replaced = describe(*older[0]) if older else None
    for where, manifest in older:
        remove_pack(directory, where, manifest)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='microseconds')
    run, written = os.path.basename(source), []
    for k, group in enumerate(groups):
        where = directory if len(groups) == 1 else os.path.join(directory, f'pack-{k + 1}')
        written += write_pack(where, run, group, k * per_pack, k + 1, len(groups), digest(blob), parts,
                              created=created, left_out=models)
    print(f'packed {source}{" (" + ", ".join(parts) + ")" if parts else ""} ({len(blob) / 2 ** 20:.1f} MiB) into '
          f'{len(pieces)} piece(s) in {len(groups)} pack(s) in {directory}'
          + (f', replacing the pack that was there ({replaced})' if older else ''), flush=True)
    return written


def left_out_models(source, parts, leave_out):
    """{part: sha256 of its model.pt} for the finished parts packed without their model file; a
    finished part without a model file to pack or record is refused."""
    if METRICS in leave_out:
        return {}
    models, alone = {}, []
    for part in parts:
        model = os.path.join(source, part, MODEL)
        if not os.path.isfile(os.path.join(source, part, METRICS)):
            continue
        if not os.path.isfile(model):
            alone.append(os.path.join(source, part, METRICS))
        elif MODEL in leave_out:
            models[part] = file_sha256(model)
    if alone:
        raise ValueError('; '.join(f'{m} has no {MODEL} beside it' for m in alone) + f': a finished part is packed '
                         f'with its model file (or its sha256, with --leave-out {MODEL}), the one its metrics belong '
                         f'to; restore that file, or pack the other parts (--parts) (nothing was written)')
    return models


def write_pack(where, run, pieces, first, number, packs, whole, parts, created=None, left_out=None):
    """One pack: its pieces (numbered from `first` across all packs) and its manifest."""
    names = write_pieces(where, f'{run}.tar.gz', pieces, first)
    manifest = dict(run=run, parts=parts, pack=number, packs=packs, first=first, sha256=whole, created=created,
                    pieces=[dict(name=n, sha256=digest(p), bytes=len(p)) for n, p in zip(names, pieces, strict=True)])
    if left_out:
        manifest['left_out_models'] = left_out
    write_json(os.path.join(where, MANIFEST), manifest, indent=1)
    return [os.path.join(where, n) for n in names + [MANIFEST]]


def write_pieces(where, stem, pieces, first=0):
    """The pieces as where/<stem>.00, .01, ... (numbered from `first`); returns their names."""
    os.makedirs(where, exist_ok=True)
    names = [f'{stem}.{first + i:02d}' for i in range(len(pieces))]
    for name, piece in zip(names, pieces, strict=True):
        with open(os.path.join(where, name), 'wb') as fh:
            fh.write(piece)
    return names


def remove_pack(directory, where, manifest):
    """An older pack's own files: its manifest, its pieces (those it names and stray <run>.tar.gz.NN
    left by a pack that was stopped), and its pack-* directory if that is then empty."""
    names = {piece_name(p) for p in manifest['pieces']} | {n for n in os.listdir(where) if PIECE.match(n)}
    for name in sorted(names) + [MANIFEST]:
        if os.path.isfile(os.path.join(where, name)):
            os.remove(os.path.join(where, name))
    if os.path.abspath(where) != os.path.abspath(directory) and not os.listdir(where):
        os.rmdir(where)


def unpack(directories, results_dir='results'):
    """Restore what `pack` wrote: the packs in `directories` (one path or several, each a pack or
    holding pack-* directories, in any order) into results_dir/<run>. Returns the run directories.

    Everything is checked before anything is written, and a refusal (ValueError) writes nothing:
    - every piece of every pack run is there, with its digest, and they make a gzip'd tar (a piece
      that does not is named);
    - of a directory holding more than one pack run, only the newest is taken (by the time its
      manifest records; for manifests that record none, their files' times), said in one line;
      packs from different directories that carry one file with different contents are refused;
    - a run is unpacked whole: a part's metrics.json comes with the model.pt of the same pack, or,
      where `pack` left that model out and recorded its sha256, is put only beside a model.pt with
      that digest (one already there or from another of the packs), or in a part with no model.pt
      yet, said so (its model follows in its own pack); metrics.json without a model file or a
      record of one is refused;
    - a finished run (a part directory holding metrics.json) is never changed: files already there
      with the same bytes are left as they are, missing ones are added only with the same
      metrics.json, and any other change is refused, naming the part directory.
    Other files of the packs replace those of the same name (each written whole, or not at all)."""
    directories = [directories] if isinstance(directories, str) else list(directories)
    runs = {}
    for where, manifest in find_packs(directories):
        runs.setdefault(manifest['sha256'], []).append((where, manifest))
    opened = [Incoming(packs) for packs in runs.values()]
    incoming = merge(opened)
    check_finished(incoming, results_dir)
    alone = check_whole(opened, incoming, results_dir)
    check_paths(opened, incoming, results_dir)
    os.makedirs(results_dir, exist_ok=True)
    for run in opened:
        for name in run.dirs:
            os.makedirs(os.path.join(results_dir, *name.split('/')), exist_ok=True)
    counts = {id(run): [0, 0] for run in opened}
    for name, (run, member) in incoming.items():
        target, data = os.path.join(results_dir, *name.split('/')), run.read(name)
        if same_file(target, data):
            counts[id(run)][1] += 1
            continue
        atomic_write(target, lambda fh, data=data: fh.write(data))
        os.utime(target, (member.mtime, member.mtime))
        counts[id(run)][0] += 1
        if name in alone:
            print(f'{target}: unpacked without its {MODEL}, which the pack left out (sha256 {alone[name][:12]}...); '
                  f'unpack the pack that holds it into {results_dir} too', flush=True)
    targets = []
    for run in opened:
        targets.append(os.path.join(results_dir, run.run))
        done, kept = counts[id(run)]
        print(f'unpacked {done} files into {targets[-1]}' + (f' ({kept} already there, the same)' if kept else ''),
              flush=True)
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
        raise ValueError(f'{path} does not exist: nothing to carry (a finished run keeps its model file, not a '
                         f'checkpoint)')
    if os.path.exists(os.path.join(part_dir, 'metrics.json')):
        raise ValueError(f'{part_dir} has finished (metrics.json): its model file is what is committed, not its '
                         f'checkpoint')
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
                    pieces=[dict(name=n, sha256=digest(p), bytes=len(p)) for n, p in zip(names, pieces, strict=True)])
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
        log(f'{path} ({describe_reached(local)}) has trained less than the one carried in {where}: it is kept as '
            f'{aside}')
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
