"""The results chapter: words written by hand in analysis/results.tex, numbers generated from the
runs. Here: how a number is quoted and paired (reporting/answers.py, reporting/numbers.py), that
the chapter's every number is a macro, that numbers.tex and the Markdown twin docs/results.md say
what results/ says today, and that each handout item opens with its answer."""
import json
import os
import re

import pytest
import torch

from reporting import answers, formats, markdown, numbers, writeup
from test_report import summary, v, write_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANALYSIS = os.path.join(ROOT, 'analysis')
CHAPTER = os.path.join(ANALYSIS, 'results.tex')
HANDOUT_ITEMS = ['5b', '5c', '6a', '6b', '6c', '6d', '6e']


def spread(n, seed, centre, scale):
    g = torch.Generator().manual_seed(seed)
    return centre + scale * torch.randn(n, generator=g, dtype=torch.float64)


def chapter_source():
    with open(CHAPTER) as fh:
        return fh.read()


@pytest.fixture(scope='module')
def today():
    """The chapter's numbers and tables from the committed runs, as report.py computes them."""
    r = numbers.Runs(os.path.join(ROOT, 'results'))
    return numbers.chapter_numbers(r), numbers.chapter_tables(r)


# How a number is quoted ------------------------------------------------------------------------


def test_a_value_names_the_test_images_it_covers():
    assert answers.with_n(v(85.1, 0.7, 1000, M=1000)) == '85.10 ± 0.70 (the first 1,000 test images, M = 1000)'
    assert answers.with_n(v(93.5, 0.2, 10000), table=True) == '93.50 ± 0.20 (all 10,000)'
    uniform = v(86.0, 0.3, 2000, subset='uniform:599')
    assert answers.with_n(uniform, table=True) == '86.00 ± 0.30 (a uniform sample of 2,000 test images (seed 599))'
    assert answers.subset_of(v(1.0, 0.1, 10000, subset='all')) == 'all'
    assert numbers.estimate(v(85.1, 0.7, 1000)).text == '85.10 ± 0.70 nats (first 1,000 test images)'
    assert numbers.estimate(v(1546.6, 7.74, 10000)).text == '1,546.60 ± 7.74 nats (all 10,000 test images)'
    c = dict(value=-3.05, se=0.1, n=[1000], paired=True, images='the first 1,000 test images')
    assert numbers.difference(c).text == '−3.05 ± 0.10 nats (paired, first 1,000 test images)'
    assert formats.error(0.0012) == '0.001' and formats.error(0.012) == '0.01'


def test_paired_over_the_first_images_of_a_part_and_all_images_of_another(tmp_path):
    n = 3000
    a = spread(n, 1, 90.0, 20.0)
    b = a[:1000] + 1.0 + spread(1000, 2, 0.0, 0.3)
    run = str(tmp_path / 'full')
    write_part(run, '6a', {'test_nll': summary(a)}, {'test_nll': a})
    write_part(run, '6b', {'test_nll_is1000': dict(summary(b), M=1000)}, {'test_nll_is1000': b})
    ms = {p: m for p, m in numbers.Runs(str(tmp_path)).view.items()}
    c = answers.contrast([(1, ms['6b'], 'test_nll_is1000'), (-1, ms['6a'], 'test_nll')])
    d = b - a[:1000]
    assert c['paired'] and c['n'] == [1000] and c['images'] == 'the first 1,000 test images'
    assert c['value'] == pytest.approx(d.mean().item()) and c['se'] == pytest.approx(d.std().item() / 1000 ** 0.5)


def test_a_uniform_subset_is_paired_image_by_image_not_by_position(tmp_path):
    """A value over a uniform sample of the test images (its indices saved beside it) pairs with the
    same images of a value over all of them, wherever they lie."""
    n = 10000
    a = spread(n, 3, 90.0, 20.0)
    index = torch.tensor([9000, 17, 4242, 5, 777] * 1 + list(range(100, 195)))
    b = a[index] - 2.0 + spread(len(index), 4, 0.0, 0.1)
    run = str(tmp_path / 'full')
    write_part(run, '6a', {'test_nll': summary(a)}, {'test_nll': a})
    write_part(run, '6d', {'test_nll_is1000': dict(summary(b), M=1000, subset='uniform:599')},
               {'test_nll_is1000': b, 'test_nll_is1000_index': index.double()})
    ms = numbers.Runs(str(tmp_path)).view
    c = answers.contrast([(1, ms['6d'], 'test_nll_is1000'), (-1, ms['6a'], 'test_nll')])
    assert c['paired'] and c['n'] == [len(index)] and c['value'] == pytest.approx((b - a[index]).mean().item())
    assert c['images'] == f'{len(index)} test images'         # neither all of them nor a prefix


def test_without_per_image_values_a_difference_is_unpaired_and_names_both_sets_of_images(tmp_path):
    run = str(tmp_path / 'full')
    write_part(run, '6b', {'test_nll_is1000': v(85.0, 0.7, 1000, M=1000)})
    write_part(run, '6d', {'test_nll_is1000': v(82.0, 0.3, 10000, M=1000)})
    ms = numbers.Runs(str(tmp_path)).view
    c = answers.contrast([(1, ms['6d'], 'test_nll_is1000'), (-1, ms['6b'], 'test_nll_is1000')])
    assert not c['paired'] and c['se'] == pytest.approx((0.7 ** 2 + 0.3 ** 2) ** 0.5)
    assert c['images'] == 'all 10,000 test images and the first 1,000 test images'


def test_a_trend_is_a_least_squares_slope_with_its_error():
    b, se = numbers.slope([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert b == pytest.approx(-1.0) and se == pytest.approx(0.0)
    b, se = numbers.slope([11.20, 10.78, 10.28, 10.31, 10.12, 10.42])
    assert b == pytest.approx(-0.168, abs=1e-3) and se == pytest.approx(0.067, abs=1e-3)


def test_the_training_attempts_of_a_log_are_told_apart_with_their_compile_setting(tmp_path):
    def header(compile_train):
        return f'2026-12-06 00:00:00  6d: binary VAE, full profile on cpu (CPU), torch 2, commit a; settings ' \
               f'{json.dumps(dict(epochs=60, compile_train=compile_train))}\n'

    def epoch(e, kl):
        return f'2026-12-06 00:00:00  6d: epoch {e}/60, step {600 * e}: train 1 (mean of the epoch), test 2 (10000 ' \
               f'images), KL {kl:.2f}, beta 1.00, lr 0.001, {e} s of training\n'
    (tmp_path / 'run.log').write_text(header(False) + epoch(1, 0.04) + epoch(2, 17.0) + header(False) + epoch(1, 0.03)
                                      + epoch(2, 0.01) + header(True) + '6d: resuming\n' + epoch(3, 25.0))
    attempts = numbers.log_attempts(dict(dir=str(tmp_path)))
    assert attempts == [[(1, 0.04, False), (2, 17.0, False)], [(1, 0.03, False), (2, 0.01, False), (3, 25.0, True)]]


# The Markdown twin -----------------------------------------------------------------------------


def test_the_converter_reads_the_chapter_s_latex_and_refuses_the_rest(tmp_path):
    tex = (r'\subsection*{6e. Remedies}\label{sec:x}' '\n\n'
           r'The NLL is \SixBNLL, see Table~\ref{tab:t} and Figure~\ref{fig:f} \cite{chen2017,kingma2016}.'
           r'\pinned{k} With $\lambda$~=~0.5 and $2\pi\sigma^2$ --- \emph{once}, \texttt{compile\_train}.' '\n\n'
           r'\begin{figure}[htbp]\centering' '\n' r'\includegraphics[width=0.5\linewidth]{../results/full/6e_kl.png}'
           '\n' r'\caption{6e, $-$ELBO.}\label{fig:f}' '\n' r'\end{figure}' '\n'
           r'\begin{table}[htbp]\caption{T \SixBNLL.}\label{tab:t}' '\n' r'\TableX' '\n' r'\end{table}' '\n')
    md = markdown.to_markdown(tex, {'SixBNLL': '85.14 ± 0.69 nats'}, {'TableX': '| a |\n|---|\n| 1 |\n'},
                              str(tmp_path / 'analysis'), str(tmp_path / 'docs'))
    assert md.startswith('### 6e. Remedies\n\nThe NLL is 85.14 ± 0.69 nats, see Table 1 and Figure 1 (Chen et al. '
                         '2017; Kingma et al. 2016). With λ = 0.5 and 2πσ² — *once*, `compile_train`.')
    assert '![Figure 1](../results/full/6e_kl.png)\n\n**Figure 1.** 6e, −ELBO.' in md
    assert '**Table 1.** T 85.14 ± 0.69 nats.\n\n| a |' in md and '\\' not in md
    for bad in (r'\unknown{x}', r'$\int x$', r'see \ref{fig:none}'):
        with pytest.raises(markdown.Unknown):
            markdown.to_markdown(bad, {}, {}, str(tmp_path), str(tmp_path))


def test_every_number_of_the_chapter_is_a_macro():
    """No digit is typed into the chapter's words: only macros of numbers.tex, labels, citations,
    part names (5b, 6e-freebits) and problem numbers."""
    text = markdown.strip_comments(chapter_source())
    text = re.sub(r'\$(\\log )?2\\(pi\\)?sigma\^2\$', '', text)  # the handout's formulas: 2σ², log 2πσ²
    text = re.sub(r'\\(label|ref|cite|pinned|includegraphics)(\[[^\]]*\])?\{[^}]*\}', '', text)
    text = re.sub(r'\\[A-Za-z]+|\[[^\]]*\]', '', text)     # macros, float placements, graphics options
    text = re.sub(r'\b[56][a-e]\b|\b6e-[a-z]+|Problem~\d|bfloat16|float32', '', text)
    assert not re.findall(r'.{0,30}\d.{0,30}', text)


def test_numbers_tex_defines_every_macro_the_chapter_uses(today):
    with open(os.path.join(ANALYSIS, 'numbers.tex')) as fh:
        defined = set(re.findall(r'\\newcommand\{\\([A-Za-z]+)\}', fh.read()))
    used = set(re.findall(r'\\([A-Za-z]+)', markdown.strip_comments(chapter_source())))
    latex = {'section', 'subsection', 'label', 'ref', 'cite', 'pinned', 'texttt', 'emph', 'begin', 'end', 'centering',
             'small', 'caption', 'includegraphics', 'linewidth', 'quad', 'sigma', 'lambda', 'log', 'pi'}
    assert used - latex <= defined and used - latex <= set(today[0]) | set(today[1])


def test_numbers_tex_and_the_markdown_twin_say_what_results_says_today(today):
    """`python report.py` has been run since the runs last changed (numbers.tex feeds the PDF)."""
    nums, tables = today
    with open(os.path.join(ANALYSIS, 'numbers.tex')) as fh:
        assert fh.read() == writeup.numbers_tex(nums, tables), 'analysis/numbers.tex is stale: run `python report.py`'
    with open(os.path.join(ROOT, 'docs', 'results.md')) as fh:
        doc = fh.read()
    twin = writeup.chapter_markdown(CHAPTER, nums, tables, os.path.join(ROOT, 'docs'))
    assert f'{writeup.BEGIN}\n{twin}{writeup.END}' in doc, 'docs/results.md is stale: run `python report.py`'


def test_the_chapter_is_short_and_each_handout_item_opens_with_its_answer(today):
    nums, tables = today
    md = writeup.chapter_markdown(CHAPTER, nums, tables, os.path.join(ROOT, 'docs'))
    blocks = md.split('\n\n')
    prose = [b for b in blocks if not b.startswith(('|', '![', '**Table', '**Figure'))]
    assert sum(len(b.split()) for b in prose) <= 2500
    assert '(likewise)' not in md
    headings = [b for b in blocks if b.startswith('### ')]
    assert [h[4:6] for h in headings if h[4:6] in HANDOUT_ITEMS] == HANDOUT_ITEMS
    six_e = blocks[blocks.index(next(h for h in headings if h.startswith('### 6e'))) + 1:]
    assert re.match(r'Can you prevent posterior collapse\? (Yes|No|Partly)[:.]', six_e[0])
    assert 'course settings' not in ' '.join(six_e)      # 6e has none: the handout sets no 6e settings
    rows = [r for r in tables['TableRuns'].rows if r[0].startswith('6e')]
    assert rows and all(r[1] == 'full profile, our design' for r in rows)


def test_remedies_reading_for_the_notebooks_follows_the_numbers(tmp_path):
    run = str(tmp_path / 'cpu')
    n = 500
    base = spread(n, 5, 85.0, 20.0)
    for seed, (part, shift, kl) in enumerate((('6e-baseline', 0.0, 8.0), ('6e-freebits', -0.5, 16.0),
                                              ('6e-weak', 0.01, 0.5))):
        nll = base + shift + spread(n, 6 + seed, 0.0, 0.3)
        write_part(run, part, {'kl': v(kl, 0.03, 10000), 'test_nll_is1000': dict(summary(nll), M=1000)},
                   {'test_nll_is1000': nll})
    text = answers.remedies_reading(numbers.Runs(str(tmp_path)).view.values())
    assert "6e-freebits: KL term 16.00 ± 0.03 nats, 2.00 times the baseline's; NLL − baseline's: -0.50" in text
    assert "6e-weak: KL term 0.50 ± 0.03 nats, 0.06 times the baseline's; NLL − baseline's: no measurable" in text
    assert 'KL term of at least 1 nat (the latent in use): 6e-baseline, 6e-freebits.' in text
    assert 'not between seeds' in text
