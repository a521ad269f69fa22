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
part's metrics with the model file they belong to), and never replaces a finished run.

`carry` does the same for one checkpoint of a run in progress, so that git can hold it between
sittings although it is over the size a committed file may have: <part>/checkpoint.pack/ holds its
pieces and a manifest with the epoch and step it has reached; `restore_carried` puts it back
before a run resumes, unless the checkpoint already there is as far on.
"""
import datetime
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import zlib

import torch

from engine.config import run_dir
from engine.files import atomic_write, read_json, write_json


PACK_FILES, PACK_BYTES = 8, 16 * 2 ** 20  # what a transfer may carry: 8 files of at most 16 MiB
MANIFEST = 'manifest.json'
METRICS, MODEL = 'metrics.json', 'model.pt'  # a finished part: its metrics and the model they belong to
PIECE = re.compile(r'^[^/\\]+\.tar\.gz\.\d{2,}$')  # <run>.tar.gz.NN, the name pack gives a piece


def digest(data):
    return hashlib.sha256(data).hexdigest()


def file_digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for block in iter(lambda: fh.read(2 ** 20), b''):
            h.update(block)
    return h.hexdigest()


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
            models[part] = file_digest(model)
    if alone:
        raise ValueError('; '.join(f'{m} has no {MODEL} beside it' for m in alone) + f': a finished part is packed '
                         f'with its model file (or its sha256, with --leave-out {MODEL}), the one its metrics belong '
                         f'to; restore that file, or pack the other parts (--parts) (nothing was written)')
    return models


def write_pack(where, run, pieces, first, number, packs, whole, parts, created=None, left_out=None):
    """One pack: its pieces (numbered from `first` across all packs) and its manifest."""
    names = write_pieces(where, f'{run}.tar.gz', pieces, first)
    manifest = dict(run=run, parts=parts, pack=number, packs=packs, first=first, sha256=whole, created=created,
                    pieces=[dict(name=n, sha256=digest(p), bytes=len(p)) for n, p in zip(names, pieces)])
    if left_out:
        manifest['left_out_models'] = left_out
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


def remove_pack(directory, where, manifest):
    """An older pack's own files: its manifest, its pieces (those it names and stray <run>.tar.gz.NN
    left by a pack that was stopped), and its pack-* directory if that is then empty."""
    names = {piece_name(p) for p in manifest['pieces']} | {n for n in os.listdir(where) if PIECE.match(n)}
    for name in sorted(names) + [MANIFEST]:
        if os.path.isfile(os.path.join(where, name)):
            os.remove(os.path.join(where, name))
    if os.path.abspath(where) != os.path.abspath(directory) and not os.listdir(where):
        os.rmdir(where)


def plain_name(name):
    return isinstance(name, str) and name not in ('', '.', '..') and '/' not in name and '\\' not in name


def piece_name(piece):
    return piece if isinstance(piece, str) else piece.get('name')


def read_manifest(path):
    """A pack's manifest, refused (ValueError naming it) unless it is one that `pack` writes."""
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} cannot be read ({type(err).__name__}: {err}); copy it again') from err
    pieces = manifest.get('pieces') if isinstance(manifest, dict) else None
    if not (isinstance(pieces, list) and pieces and plain_name(manifest.get('run'))
            and isinstance(manifest.get('sha256'), str)
            and all(plain_name(piece_name(p)) if isinstance(p, (str, dict)) else False for p in pieces)):
        raise ValueError(f'{path} is not the manifest of a pack written by `experiments.py pack` (it names no run, '
                         f'digest or pieces); move it away or use another directory')
    return manifest


def packs_in(directory):
    """[(directory, manifest)] of the pack in `directory` itself and those in its pack-* directories."""
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    candidates = [directory] + [os.path.join(directory, n) for n in names if n.startswith('pack-')]
    return [(c, read_manifest(os.path.join(c, MANIFEST))) for c in candidates
            if os.path.isfile(os.path.join(c, MANIFEST))]


def written_at(where, manifest):
    """(seconds since the epoch, in words) when a pack was written: what its manifest records, or,
    for a manifest written before they recorded it, the manifest file's modification time."""
    created = manifest.get('created')
    if isinstance(created, str):
        try:
            when = datetime.datetime.fromisoformat(created)
            if when.tzinfo is not None:
                return when.timestamp(), created
        except ValueError:
            pass
    seconds = os.path.getmtime(os.path.join(where, MANIFEST))
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec='microseconds')
    return seconds, f"{when} (its manifest file's time: it records none)"


def describe(where, manifest):
    parts = manifest.get('parts')
    return (f'{manifest["run"]}, written {written_at(where, manifest)[1]}'
            + (f', parts {", ".join(map(str, parts))}' if isinstance(parts, list) and parts else '') + f', in {where}')


def newest(folder, runs):
    """The packs of the pack run written last among `runs` (lists of (directory, manifest)) found in
    one folder, said in one line; a tie is refused."""
    dated = sorted(((max(written_at(w, m)[0] for w, m in packs), packs) for packs in runs),
                   key=lambda t: t[0], reverse=True)
    if dated[0][0] == dated[1][0]:
        raise ValueError(f'{folder} holds {len(runs)} packs and two of them were written at the same time ('
                         + '; '.join(describe(*p[0]) for _, p in dated[:2]) + '): keep the one you want there, or '
                         'unpack each from a directory of its own (nothing was unpacked)')
    latest = lambda packs: max(packs, key=lambda p: written_at(*p)[0])  # noqa: E731
    print(f'{folder} holds {len(runs)} packs: unpacking the newest ({describe(*latest(dated[0][1]))}) and leaving '
          f'the older ({"; ".join(describe(*latest(p)) for _, p in dated[1:])})', flush=True)
    return dated[0][1]


def find_packs(directories):
    """[(directory, manifest)] of every pack in the directories and their pack-* subdirectories; of a
    directory that holds more than one pack run, only the newest."""
    found, seen = [], set()
    for d in directories:
        here = [(w, m) for w, m in packs_in(d) if os.path.realpath(w) not in seen]
        seen.update(os.path.realpath(w) for w, _ in here)
        runs = {}
        for where, manifest in here:
            runs.setdefault(manifest['sha256'], []).append((where, manifest))
        found += newest(d, list(runs.values())) if len(runs) > 1 else here
    if not found:
        raise ValueError(f'no {MANIFEST} in {", ".join(directories)} or a pack-* directory there: not a pack '
                         f'written by `experiments.py pack`')
    return found


def read_pieces(where, manifest):
    """The bytes of one pack's pieces, each checked against its digest (manifests written before
    per-piece digests: the whole is checked later)."""
    data = []
    for piece in manifest['pieces']:
        name = piece_name(piece)
        path = os.path.join(where, name)
        if not os.path.exists(path):
            raise ValueError(f'the pieces in {where} do not match their manifest: {name} is missing; copy it again '
                             f'(nothing was unpacked)')
        with open(path, 'rb') as fh:
            data.append(fh.read())
        if not isinstance(piece, str) and digest(data[-1]) != piece.get('sha256'):
            raise ValueError(f'the pieces in {where} do not match their manifest: {name} is damaged (its sha256 '
                             f'differs); copy it again (nothing was unpacked)')
    return data


def assemble(packs):
    """[(path, bytes)] of the pieces of one pack run from its packs, in any order: every pack
    present, every digest right."""
    run, total, whole = packs[0][1]['run'], packs[0][1].get('packs', 1), packs[0][1]['sha256']
    numbers = {m.get('pack', 1): (where, m) for where, m in packs}
    missing = sorted(set(range(1, total + 1)) - set(numbers))
    if missing:
        held = ', '.join(f'{n} ({numbers[n][0]})' for n in sorted(numbers))
        raise ValueError(f'pack(s) {", ".join(map(str, missing))} of {total} of {run} are missing (found {held}); '
                         f'unpack all of them together (nothing was unpacked)')
    pieces = []
    for n in range(1, total + 1):
        where, manifest = numbers[n]
        pieces += [(os.path.join(where, piece_name(p)), data)
                   for p, data in zip(manifest['pieces'], read_pieces(where, manifest))]
    if digest(b''.join(data for _, data in pieces)) != whole:
        raise ValueError(f'the pieces in {", ".join(w for w, _ in packs)} do not match their manifest (a piece is '
                         f'missing, truncated or from another pack); copy them again (nothing was unpacked)')
    return pieces


def read_tar(run, pieces):
    """The tar (an open TarFile) and its members, from the gzip'd pieces [(path, bytes)] of pack run
    `run`; a piece that does not carry on the gzip'd tar (not gzip, no tar inside, cut short, bytes
    after its end) is refused, named, and so is a member outside the run's directory."""
    def refuse(path, why):
        return ValueError(f"{path} passes its sha256 check but is not part of a gzip'd tar written by "
                          f'`experiments.py pack` ({why}); nothing was unpacked')

    inflate, raw, ends = zlib.decompressobj(16 + zlib.MAX_WBITS), io.BytesIO(), []
    for path, data in pieces:
        try:
            raw.write(inflate.decompress(data))
        except zlib.error as err:
            raise refuse(path, f'not gzip data: {err}') from err
        if inflate.unused_data:
            raise refuse(path, 'bytes after the end of the gzip stream')
        ends.append(raw.tell())
    if not inflate.eof:
        raise refuse(pieces[-1][0], 'the gzip stream stops short of its end')
    at = lambda offset: next((p for (p, _), end in zip(pieces, ends) if offset < end), pieces[-1][0])  # noqa: E731
    raw.seek(0)
    tar = None
    try:
        tar = tarfile.open(fileobj=raw, mode='r:')
        members = tar.getmembers()
    except tarfile.TarError as err:
        raise refuse(at(tar.offset if tar is not None else 0), f'no tar inside: {err}') from err
    size = ends[-1] if ends else 0
    for m in members:
        if m.isfile() and m.offset_data + m.size > size:
            raise refuse(at(size - 1), f'the tar stops short inside {m.name}')
        if (os.path.isabs(m.name) or '..' in m.name.split('/') or not (m.isfile() or m.isdir())
                or m.name.split('/')[0] != run):
            raise ValueError(f'the pack of {run} holds a path outside its run directory; nothing was unpacked')
    return tar, members


class Incoming:
    """One pack run opened for unpacking: its packs, its files {name: member} and its directories."""

    def __init__(self, packs):
        self.packs, self.run = packs, packs[0][1]['run']
        self.tar, members = read_tar(self.run, assemble(packs))
        norm = lambda m: posixpath.normpath(m.name)  # noqa: E731
        self.files = {norm(m): m for m in members if m.isfile()}
        self.dirs = {norm(m): m for m in members if m.isdir()}
        self.left_out = {}
        for _, manifest in packs:
            self.left_out.update(manifest.get('left_out_models') or {})
        self.label = ', '.join(sorted({w for w, _ in packs}))

    def read(self, name):
        return self.tar.extractfile(self.files[name]).read()


def same_file(path, data):
    """Whether path is a file holding exactly data."""
    if not os.path.isfile(path) or os.path.getsize(path) != len(data):
        return False
    with open(path, 'rb') as fh:
        return fh.read() == data


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
        atomic_write(target, lambda fh: fh.write(data))
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


def merge(opened):
    """{name: (Incoming, member)} of every file the packs carry; one carried differently by two is refused."""
    incoming, clashes = {}, []
    for run in opened:
        for name, member in run.files.items():
            if name not in incoming:
                incoming[name] = (run, member)
            elif incoming[name][0].read(name) != run.read(name):
                clashes.append((name, incoming[name][0]))
        if clashes:
            name, other = clashes[0]
            raise ValueError(f'the packs in {other.label} and in {run.label} carry {name} with different contents'
                             + (f' (and {len(clashes) - 1} more files)' if len(clashes) > 1 else '')
                             + ': unpack the one you want, or each into its own --results-dir (nothing was unpacked)')
    return incoming


def check_whole(opened, incoming, results_dir):
    """Each pack's metrics.json files with the model they belong to (unpack's docstring); returns
    {name of metrics.json: sha256 of its model} for those unpacked before their model file."""
    alone = {}
    for run in opened:
        for name in sorted(run.files):
            bits = name.split('/')
            if len(bits) != 3 or bits[2] != METRICS:
                continue
            model, want = f'{bits[0]}/{bits[1]}/{MODEL}', run.left_out.get(bits[1])
            if model in run.files:
                continue
            if want is None:
                if any(model in o.files and name in o.files and o.read(name) == run.read(name) for o in opened):
                    continue  # another of the packs carries the same metrics with their model
                raise ValueError(f'the pack in {run.label} holds {name} without the {MODEL} it belongs to (it has no '
                                 f'{MODEL} for {bits[1]} and its manifest records none): a finished run is unpacked '
                                 f'whole; pack {bits[1]} again with its model file, or unpack this pack together with '
                                 f'the one that holds it (nothing was unpacked)')
            there = os.path.join(results_dir, bits[0], bits[1], MODEL)
            if model in incoming:
                have, where = digest(incoming[model][0].read(model)), f'the {model} in {incoming[model][0].label}'
            elif os.path.isfile(there):
                have, where = file_digest(there), there
            else:
                alone[name] = want
                continue
            if have != want:
                raise ValueError(f'the {name} in {run.label} belongs to a {MODEL} with sha256 {want[:12]}..., but '
                                 f'{where} is another (sha256 {have[:12]}...): its metrics would sit beside the wrong '
                                 f'model; unpack it into another --results-dir, or with the pack that holds its model '
                                 f'(nothing was unpacked)')
    return alone


def check_finished(incoming, results_dir):
    """A finished run there is never changed (unpack's docstring)."""
    changes = {}
    for name, (run, _) in sorted(incoming.items()):
        bits = name.split('/')
        if len(bits) < 3:
            continue
        part_dir = os.path.join(results_dir, bits[0], bits[1])
        metrics, target = os.path.join(part_dir, METRICS), os.path.join(results_dir, *bits)
        if not os.path.isfile(metrics) or same_file(target, run.read(name)):
            continue
        metrics_name = f'{bits[0]}/{bits[1]}/{METRICS}'
        carried = incoming.get(metrics_name)
        if not os.path.lexists(target) and carried and same_file(metrics, carried[0].read(metrics_name)):
            continue  # a file the same finished run lacks here
        verb = 'replace' if os.path.lexists(target) else 'add'
        changes.setdefault(part_dir, []).append(f'{verb} {"/".join(bits[2:])}')
    if changes:
        said = '; '.join(f'{d} holds a finished run ({METRICS}'
                         + (f' and {MODEL}' if os.path.isfile(os.path.join(d, MODEL)) else '')
                         + f'): unpacking would {", ".join(c[:4])}' + (f' and {len(c) - 4} more' if len(c) > 4 else '')
                         for d, c in changes.items())
        raise ValueError(f'{said}. Unpacking never replaces a finished run: unpack into another directory '
                         f'(--results-dir DIR) and compare, or move {", ".join(changes)} away first (nothing was '
                         f'unpacked)')


def check_paths(opened, incoming, results_dir):
    """Every file and directory of the packs can be written where it goes: no name that is a file in
    one place and a directory in another, here or in the packs."""
    wanted = {n: True for run in opened for n in run.dirs}
    for name in incoming:
        bits = name.split('/')
        for k in range(1, len(bits) + 1):
            key, is_dir = '/'.join(bits[:k]), k < len(bits)
            if wanted.setdefault(key, is_dir) != is_dir:
                raise ValueError(f'the packs hold {key} both as a file and as a directory; unpack them one at a time, '
                                 f'each into its own --results-dir (nothing was unpacked)')
    for name, is_dir in sorted(wanted.items()):
        path = os.path.join(results_dir, *name.split('/'))
        if os.path.lexists(path) and os.path.isdir(path) != is_dir:
            raise ValueError(f'{path} is {"a file" if is_dir else "a directory"} where the pack has '
                             f'{"a directory" if is_dir else "a file"}; move it away first (nothing was unpacked)')


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
