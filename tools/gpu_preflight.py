"""What tools/gpu_check.sh and tools/gpu_train.sh make sure of before their first step, on a bare
machine (its own Python and torch, no network): the packages each step imports, and MNIST. Only
the standard library is used here, so that it runs wherever a Python does.

    python tools/gpu_preflight.py packages smoke=experiments.py bench=tools/bench.py --blocked FILE
    python tools/gpu_preflight.py pack-data            # here: data/MNIST/gz, the four IDX files gzipped (11 MiB)
    python tools/gpu_preflight.py data                 # there: gunzip them into data/MNIST/raw, each checked

`packages` reads, without importing them, the modules a step's entry file imports when it starts
(the imports at module level, followed through the repository's own modules), and imports each
outside package they name. For a package that fails it prints which files import it and which
steps cannot start without it; FILE gets one line per such step, `STEP PACKAGE,PACKAGE`. Exit
status 0, or 4 if a step cannot start.

MNIST travels as the four gzipped IDX files (11 MiB, where the unpacked ones are 53 MiB):
`pack-data` writes them into <data>/MNIST/gz, to be carried to the machine (the data directory is
git-ignored); `data` gunzips them there into <data>/MNIST/raw, where engine/data.py reads the
unpacked files only. Each file is checked against the SHA-256 that engine/data.py pins
(RAW_SHA256). <data> is --root, else $HW2_DATA, else data. Exit status 0, or 3 if MNIST is not there.
"""
import argparse
import ast
import gzip
import hashlib
import importlib
import os
import shutil
import sys

ROOT = os.getcwd()  # the repository root: both scripts run from it
RAW = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
OPTIONAL = ('ImportError', 'ModuleNotFoundError', 'Exception', 'BaseException')


# ---------------------------------------------------------------------------------------------
# Packages


def local_file(module):
    """The file of the repository's module `module` (dotted), or None if it is not one of its own."""
    base = os.path.join(ROOT, *module.split('.'))
    for path in (base + '.py', os.path.join(base, '__init__.py')):
        if os.path.isfile(path):
            return path
    return None


def is_local(module):
    """Whether the module's top-level package is one of the repository's (a file or a package with
    __init__.py at its root; a bare directory never hides an installed package)."""
    return local_file(module.split('.')[0]) is not None


def executed(module):
    """The modules an `import module` runs, outermost first: a.b.c -> a, a.b, a.b.c."""
    names = module.split('.')
    return ['.'.join(names[:i]) for i in range(1, len(names) + 1)]


def optional(handlers):
    """Whether a try statement's handlers catch a failed import."""
    for h in handlers:
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if h.type is None or any(isinstance(t, ast.Name) and t.id in OPTIONAL for t in types):
            return True
    return False


def type_checking(test):
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def module_level_imports(tree, package):
    """[(module, line, optional)] of the imports a module runs when it is imported: its top-level
    statements, into if/try/with/class bodies, not into functions. `package` resolves relative ones."""
    found = []

    def visit(statements, guarded):
        for node in statements:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno, guarded) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parent = package.split('.')[:len(package.split('.')) - node.level + 1] if package else []
                    base = '.'.join([p for p in parent if p] + ([base] if base else []))
                if base:
                    found.append((base, node.lineno, guarded))
                # `from a import b` runs a/b.py where b is a module of the repository
                found.extend((f'{base}.{alias.name}' if base else alias.name, node.lineno, guarded)
                             for alias in node.names if alias.name != '*'
                             and local_file(f'{base}.{alias.name}' if base else alias.name))
            elif isinstance(node, ast.If):
                if not type_checking(node.test):
                    visit(node.body, guarded)
                visit(node.orelse, guarded)
            elif isinstance(node, ast.Try) or type(node).__name__ == 'TryStar':
                visit(node.body, guarded or optional(node.handlers))
                for h in node.handlers:
                    visit(h.body, guarded)
                visit(node.orelse, guarded)
                visit(node.finalbody, guarded)
            elif isinstance(node, (ast.With, ast.AsyncWith, ast.ClassDef, ast.For, ast.While)):
                visit(node.body, guarded)
                visit(getattr(node, 'orelse', []), guarded)
    visit(tree.body, False)
    return found


def rel(path):
    return os.path.relpath(path, ROOT)


def outside_imports(entry):
    """{package: [(file, line, chain)]}: the packages from outside the repository that the entry
    file imports when it starts, with every place that imports one and, for each, the chain of
    imports from the entry file to it."""
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    entry_path = os.path.join(ROOT, entry)
    queue, seen, needs = [(entry_path, [rel(entry_path)])], {entry_path}, {}
    if entry.replace(os.sep, '/').startswith('tools/'):  # run as -m tools.NAME: the package runs first
        queue.append((os.path.join(ROOT, 'tools', '__init__.py'), ['tools/__init__.py']))
    while queue:
        path, chain = queue.pop(0)
        if not os.path.isfile(path):
            continue
        with open(path, encoding='utf-8') as fh:
            tree = ast.parse(fh.read(), path)
        name = rel(path)[:-3].replace(os.sep, '.')
        package = name[:-len('.__init__')] if name.endswith('.__init__') else name.rpartition('.')[0]
        for module, line, guarded in module_level_imports(tree, package):
            top = module.split('.')[0]
            if is_local(module):
                for m in executed(module):
                    f = local_file(m)
                    if f and f not in seen:
                        seen.add(f)
                        queue.append((f, chain[:-1] + [f'{chain[-1]}:{line}', rel(f)]))
            elif top not in stdlib and not guarded:
                needs.setdefault(top, []).append((rel(path), line, ' > '.join(chain[:-1] + [f'{chain[-1]}:{line}'])))
    return needs


def importable(package):
    """None if the package imports, else why not (one line)."""
    try:
        importlib.import_module(package)
    except Exception as err:  # a broken install counts as missing too
        return f'{type(err).__name__}: {" ".join(str(err).split())}'[:200]
    return None


def packages(steps, blocked_file=None, out=sys.stdout):
    """Check the packages of each STEP=ENTRY; returns {step: [missing package]}."""
    entries = dict(s.split('=', 1) for s in steps)
    needs = {entry: outside_imports(entry) for entry in set(entries.values())}
    status = {p: importable(p) for p in sorted({p for n in needs.values() for p in n})}
    blocked = {}
    for step, entry in entries.items():
        missing = [p for p in needs[entry] if status[p]]
        if missing:
            blocked[step] = missing
    print(f'python {sys.executable} ({sys.version.split()[0]}); packages imported at start: '
          + ', '.join(f'{p} {"MISSING" if why else "ok"}' for p, why in status.items()), file=out)
    for p, why in status.items():
        if why:
            places = sorted({(f, line) for n in needs.values() for f, line, _ in n.get(p, ())})
            print(f'missing {p} ({why}): imported at module level by '
                  + ', '.join(f'{f}:{line}' for f, line in places), file=out)
            for entry, n in sorted(needs.items()):
                if p in n:
                    print(f'  from {entry}: {n[p][0][2]}', file=out)
    for step, missing in blocked.items():
        print(f'step {step} ({entries[step]}) cannot start without {", ".join(missing)}', file=out)
    if blocked_file:
        with open(blocked_file, 'w') as fh:
            fh.writelines(f'{step} {",".join(missing)}\n' for step, missing in blocked.items())
    return blocked


# ---------------------------------------------------------------------------------------------
# MNIST


def data_root(root):
    return os.path.abspath(root or os.environ.get('HW2_DATA') or os.path.join(ROOT, 'data'))


def pinned_sha256():
    """engine/data.py's RAW_SHA256, read without importing it (it imports torch)."""
    path = os.path.join(ROOT, 'engine', 'data.py')
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as fh:
            for node in ast.parse(fh.read()).body:
                if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'RAW_SHA256' for t in node.targets):
                    return ast.literal_eval(node.value)
    return {}


def sha256(path, opener=open):
    h = hashlib.sha256()
    with opener(path, 'rb') as fh:
        for block in iter(lambda: fh.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def check(name, digest, pinned, where):
    if pinned.get(name) and digest != pinned[name]:
        raise SystemExit(f'gpu data: {where} has SHA-256 {digest}, not that of the MNIST file {name} '
                         f'({pinned[name]}); make it again with `python tools/gpu_preflight.py pack-data`')


def pack_data(root, out=None):
    """The four IDX files of <root>/MNIST/raw gzipped into <root>/MNIST/gz (or out), each checked."""
    raw, gz = os.path.join(root, 'MNIST', 'raw'), out or os.path.join(root, 'MNIST', 'gz')
    pinned = pinned_sha256()
    absent = [n for n in RAW if not os.path.isfile(os.path.join(raw, n))]
    if absent:
        raise SystemExit(f'gpu data: {raw} lacks {", ".join(absent)}; run any part once here (it fetches MNIST) '
                         f'and try again')
    os.makedirs(gz, exist_ok=True)
    for name in RAW:
        src, dst = os.path.join(raw, name), os.path.join(gz, name + '.gz')
        check(name, sha256(src), pinned, src)
        if os.path.isfile(dst) and sha256(dst, gzip.open) == sha256(src):
            continue
        # the same bytes every time; level 6, as gzip's default (level 9 takes 15 times as long here for 2% less)
        with open(src, 'rb') as fin, open(dst + '.tmp', 'wb') as raw_out, \
                gzip.GzipFile(filename='', mode='wb', fileobj=raw_out, mtime=0, compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(dst + '.tmp', dst)
    size = sum(os.path.getsize(os.path.join(gz, n + '.gz')) for n in RAW)
    print(f'{gz}: the four MNIST IDX files gzipped, {size / 2 ** 20:.1f} MiB. Carry it to the machine '
          f'(the device tool: carry {os.path.relpath(gz, ROOT)}); tools/gpu_check.sh and tools/gpu_train.sh '
          f'unpack it there.')


def unpack_data(root, gz=None):
    """<root>/MNIST/raw complete: the files there, else gunzipped from <root>/MNIST/gz (or gz)."""
    raw, gz = os.path.join(root, 'MNIST', 'raw'), gz or os.path.join(root, 'MNIST', 'gz')
    pinned, unpacked = pinned_sha256(), []
    if all(os.path.isfile(os.path.join(root, 'processed', f)) for f in ('training.pt', 'test.pt')):
        print(f'gpu data: MNIST in the course layout, {os.path.join(root, "processed")}')
        return
    for name in RAW:
        dst, src = os.path.join(raw, name), os.path.join(gz, name + '.gz')
        if os.path.isfile(dst):
            continue
        if not os.path.isfile(src):
            raise SystemExit(f'gpu data: MNIST is not on this machine ({dst} and {src} are both missing); '
                             f'here, `python tools/gpu_preflight.py pack-data` writes data/MNIST/gz (11 MiB): carry '
                             f'it (the device tool: carry data/MNIST/gz)')
        os.makedirs(raw, exist_ok=True)
        with gzip.open(src, 'rb') as fin, open(dst + '.tmp', 'wb') as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        check(name, sha256(dst + '.tmp'), pinned, src)
        os.replace(dst + '.tmp', dst)
        unpacked.append(name)
    print(f'gpu data: MNIST in {raw}' + (f' ({len(unpacked)} unpacked from {gz})' if unpacked else ''))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '))
    sub = ap.add_subparsers(dest='command', required=True)
    p = sub.add_parser('packages', help='the packages each STEP=ENTRY imports when it starts')
    p.add_argument('steps', nargs='+', metavar='STEP=ENTRY')
    p.add_argument('--blocked', help='write `STEP PACKAGE,...` here for each step that cannot start')
    for name in ('data', 'pack-data'):
        d = sub.add_parser(name)
        d.add_argument('--root', default=None, help='the data directory (default: $HW2_DATA, else data)')
        d.add_argument('--gz', default=None, help='the gzipped files (default: <root>/MNIST/gz)')
    args = ap.parse_args(argv)
    if args.command == 'packages':
        bad = [s for s in args.steps if '=' not in s or not os.path.isfile(os.path.join(ROOT, s.split('=', 1)[1]))]
        if bad:
            ap.error(f'not STEP=ENTRY with ENTRY a file of {ROOT}: {", ".join(bad)}')
        return 4 if packages(args.steps, args.blocked) else 0
    if args.command == 'pack-data':
        pack_data(data_root(args.root), args.gz)
    else:
        try:
            unpack_data(data_root(args.root), args.gz)
        except SystemExit as stop:
            print(stop, file=sys.stderr)
            return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
