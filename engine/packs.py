"""A pack read back, and what `unpack` checks before it writes anything (engine/transfer.py writes
packs and unpacks them): a pack's manifest, the packs in a directory (of several pack runs there,
the newest), each piece against its digest, the gzip'd tar the pieces of a pack run make, and the
checks of the files the packs carry against each other and against the results directory: one file
carried differently by two packs, a finished part's metrics without the model they belong to, a
change to a finished run, a name that is a file in one place and a directory in another.
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

from engine.files import file_sha256

MANIFEST = 'manifest.json'
METRICS, MODEL = 'metrics.json', 'model.pt'  # a finished part: its metrics and the model they belong to
PIECE = re.compile(r'^[^/\\]+\.tar\.gz\.\d{2,}$')  # <run>.tar.gz.NN, the name pack gives a piece


def digest(data):
    return hashlib.sha256(data).hexdigest()


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
                   for p, data in zip(manifest['pieces'], read_pieces(where, manifest), strict=True)]
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

    def at(offset):  # the piece that holds a byte of the tar
        return next((p for (p, _), end in zip(pieces, ends, strict=True) if offset < end), pieces[-1][0])

    raw.seek(0)
    tar = None
    try:
        tar = tarfile.open(fileobj=raw, mode='r:')  # noqa: SIM115 (returned open: Incoming reads its members)
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
                have, where = file_sha256(there), there
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
