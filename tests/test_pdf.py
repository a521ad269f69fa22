"""The committed write-up analysis/hw2.pdf is built from the committed sources, and is a PDF that
says what the answers say.

`make -C analysis` writes analysis/hw2.sources.sha256 beside the PDF: the SHA-256 of every .tex
file in analysis/ and of every figure an uncommented \\includegraphics names, paths relative to the
repository root. Here the same list is rebuilt from the sources on disk (the rules of
analysis/Makefile) and compared with the recorded one, digest by digest. The PDF itself is read
(pypdf, else poppler's pdftotext) and must hold each answer's main number, and every number of
each macro the results chapter uses (analysis/numbers.tex), as results/ gives them today.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess

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


def pdf_text(path):
    """The text of a PDF, by pypdf or else by pdftotext; ValueError naming the file if neither reads it."""
    try:
        import pypdf
    except ImportError:
        pypdf = None
    if pypdf is not None:
        try:
            return '\n'.join(page.extract_text() or '' for page in pypdf.PdfReader(path).pages)
        except Exception as err:  # pypdf raises its own errors, and others, on a damaged file
            raise ValueError(f'{path} cannot be read as a PDF ({type(err).__name__}: {err})') from err
    if shutil.which('pdftotext') is None:
        raise ValueError(f'cannot read {path}: install pypdf (requirements.txt) or poppler-utils (pdftotext)')
    out = subprocess.run(['pdftotext', '-q', path, '-'], capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f'{path} cannot be read as a PDF (pdftotext exit {out.returncode})')
    return out.stdout


def key_numbers(results_dir):
    """{part: its main number as the chapter prints it (2 decimals, thousands separated)}: the
    importance-sampled NLL, the exact NLL or the −ELBO of each part's preferred run (course settings
    first)."""
    from reporting.answers import View, nll_q
    from reporting.reader import load_runs
    view = View(load_runs(results_dir))
    return {part: f'{m["values"][q]["value"]:,.2f}' for part, m in view.items()
            for q in [nll_q(m) or 'test_elbo']}


def pdf_problems(path, numbers):
    """What is wrong with the PDF at path: not a PDF, unreadable, or lacking one of numbers
    ({part: number}); [] if nothing."""
    with open(path, 'rb') as f:
        if f.read(5) != b'%PDF-':
            return [f'{path} is not a PDF (no %PDF- header)']
    try:
        text = re.sub(r'\s+', ' ', pdf_text(path))
    except ValueError as err:
        return [str(err)]
    missing = [f'{part} {n}' for part, n in numbers.items() if n not in text]
    return [f'{path} lacks the number of {", ".join(missing)}'] if missing else []


def test_pdf_holds_each_answers_number():
    numbers = key_numbers(os.path.join(ROOT, 'results'))
    assert numbers, 'no finished part in results/'
    problems = pdf_problems(PDF, numbers)
    assert not problems, f'{STALE} ({"; ".join(problems)})'


def chapter_macros(results_dir):
    """{name: text} of each number macro that analysis/results.tex uses, as report.py computes it
    from results_dir today (reporting/numbers.py)."""
    from reporting.numbers import Runs, chapter_numbers
    numbers = chapter_numbers(Runs(results_dir))
    with open(os.path.join(ANALYSIS, 'results.tex'), encoding='utf-8') as f:
        used = set(re.findall(r'\\([A-Za-z]+)', COMMENT.sub(r'\1', f.read())))
    return {name: numbers[name].text for name in sorted(used & set(numbers))}


def numerals(text):
    """The numbers written in a text, without their signs: '−3.05 ± 0.10 (first 1,000)' -> 3.05, 0.10, 1,000."""
    return re.findall(r'\d[\d,]*(?:\.\d+)?', text)


def test_pdf_holds_every_number_of_the_chapter():
    macros = chapter_macros(os.path.join(ROOT, 'results'))
    assert len(macros) > 50
    text = re.sub(r'\s+', ' ', pdf_text(PDF))
    missing = [f'\\{name} {n}' for name, said in macros.items() for n in numerals(said) if n not in text]
    assert not missing, f'{STALE} (not in the PDF: {", ".join(missing[:10])})'


def test_the_pdf_results_chapter_is_at_most_about_2500_words_with_its_tables():
    text = pdf_text(PDF)
    chapter = text[text.index('Implementation results'):text.index('Side remarks to the proofs')]
    assert len(chapter.split()) <= 2600, len(chapter.split())


def test_a_garbage_or_foreign_pdf_is_refused(tmp_path):
    garbage = tmp_path / 'hw2.pdf'
    garbage.write_bytes(b'not a pdf at all')
    assert 'not a PDF' in pdf_problems(str(garbage), {'6a': '82.39'})[0]
    broken = tmp_path / 'broken.pdf'
    broken.write_bytes(b'%PDF-1.5\n' + os.urandom(200))          # a header and nothing readable after it
    assert pdf_problems(str(broken), {'6a': '82.39'})
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(2, 1))
    fig.text(0.1, 0.5, 'NLL 12.34 nats')
    other = tmp_path / 'other.pdf'
    fig.savefig(other)
    plt.close(fig)
    assert pdf_problems(str(other), {'6a': '12.34'}) == []
    assert pdf_problems(str(other), {'6a': '12.34', '6c': '56.78'}) == [f'{other} lacks the number of 6c 56.78']
