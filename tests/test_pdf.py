"""The committed write-up analysis/hw2.pdf is built from the committed sources.

`make -C analysis` writes analysis/hw2.sources.sha256 beside the PDF: the SHA-256 of every .tex
file in analysis/ and of every figure an uncommented \\includegraphics names, paths relative to the
repository root. Here the same list is rebuilt from the sources on disk (the rules of
analysis/Makefile) and compared with the recorded one, digest by digest.
"""
import glob
import hashlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANALYSIS = os.path.join(ROOT, 'analysis')
PDF = os.path.join(ANALYSIS, 'hw2.pdf')
DIGESTS = os.path.join(ANALYSIS, 'hw2.sources.sha256')
STALE = ('analysis/hw2.pdf is older than its sources: run `make -C analysis` '
         'and commit hw2.pdf and hw2.sources.sha256')
COMMENT = re.compile(r'(^|[^\\])%.*')
INCLUDEGRAPHICS = re.compile(r'\\includegraphics\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}')
GRAPHICS_EXTENSIONS = ('', '.pdf', '.png', '.jpg', '.jpeg')  # tried in this order, as in the Makefile


def figure_names(tex):
    """The names in the uncommented \\includegraphics commands of one .tex file, line by line."""
    with open(tex, encoding='utf-8') as f:
        return [name for line in f for name in INCLUDEGRAPHICS.findall(COMMENT.sub(r'\1', line))]


def sources():
    """The PDF's sources, as paths relative to the repository root, sorted; a figure that no
    candidate file matches is listed under its name, so that it reads as changed."""
    texs = sorted(glob.glob(os.path.join(ANALYSIS, '*.tex')))
    paths = set(texs)
    for tex in texs:
        for name in figure_names(tex):
            candidates = [os.path.join(ANALYSIS, name + ext) for ext in GRAPHICS_EXTENSIONS]
            paths.add(next((c for c in candidates if os.path.isfile(c)), candidates[0]))
    return sorted(os.path.relpath(os.path.normpath(p), ROOT).replace(os.sep, '/') for p in paths)


def sha256(relpath):
    path = os.path.join(ROOT, relpath)
    if not os.path.isfile(path):
        return 'missing'
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def recorded():
    """{path: digest} from hw2.sources.sha256 (sha256sum's `digest  path` lines)."""
    with open(DIGESTS, encoding='utf-8') as f:
        return dict(reversed(line.rstrip('\n').split('  ', 1)) for line in f if line.strip())


def test_pdf_is_built_from_the_current_sources():
    if not os.path.isfile(PDF) or not os.path.isfile(DIGESTS):
        missing = [os.path.relpath(p, ROOT) for p in (PDF, DIGESTS) if not os.path.isfile(p)]
        pytest.fail(f'{STALE} (missing: {", ".join(missing)})')
    current = {path: sha256(path) for path in sources()}
    before = recorded()
    changed = sorted(p for p in current if p in before and before[p] != current[p])
    added, removed = sorted(current.keys() - before.keys()), sorted(before.keys() - current.keys())
    details = [f'{what}: {", ".join(paths)}' for what, paths in
               (('changed', changed), ('new sources', added), ('no longer sources', removed)) if paths]
    assert not details, f'{STALE} ({"; ".join(details)})'


def test_figure_names_are_read_like_latex():
    """Comments are skipped (an escaped \\% is not one); options and spaces are allowed."""
    assert COMMENT.sub(r'\1', r'a \% b % \includegraphics{x}') == r'a \% b '
    assert INCLUDEGRAPHICS.findall(r'\includegraphics[width=0.5\linewidth]{../results/a.png} '
                                   r'\includegraphics {b}') == ['../results/a.png', 'b']
