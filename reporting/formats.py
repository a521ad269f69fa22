"""How the results chapter prints a number: thousands separated, a true minus sign, a standard
error to the digits it needs, and tables whose cells name the test images they cover. Used by
reporting/numbers.py and reporting/seeds.py, which decide what the numbers are."""
from reporting.answers import images_words, subset_of


def num(x, digits=2):
    """A number as the chapter prints it: thousands separated, a true minus sign."""
    return f'{x:,.{digits}f}'.replace('-', '−')


def signed(x, digits=2):
    return f'{x:+,.{digits}f}'.replace('-', '−')


class Number:
    """One named number: its text (Markdown, Unicode), and what the claims and tests read from it."""
    def __init__(self, text, value=None, se=None, n=None):
        self.text, self.value, self.se, self.n = text, value, se, n

    def __repr__(self):
        return f'Number({self.text!r})'


def error(se):
    """A standard error to two decimals, or to three where two would read 0.00."""
    return num(se, 2 if se >= 0.005 else 3)


class Table:
    """One table of the chapter: a header, rows of cells (Markdown, Unicode) and LaTeX column types.
    A value's cell is (text, images) and a difference's (text, images, 'paired' or 'unpaired'): a
    column whose cells all cover the same images names them once, in its header, and its differences
    say only how they pair; otherwise each cell names its own images."""
    def __init__(self, header, rows, align):
        self.align = align
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(header)
        self.header, out = [], []
        for head, cells in zip(header, columns, strict=True):
            images = {c[1] for c in cells if isinstance(c, tuple)}
            one = len(images) == 1
            self.header.append(f'{head} ({images.pop()})' if one else head)
            out.append([self.text(c, one) for c in cells])
        self.rows = [list(r) for r in zip(*out, strict=True)]

    @staticmethod
    def text(c, images_in_header):
        if not isinstance(c, tuple):
            return c
        tags = list(c[2:]) if images_in_header else list(c[2:]) + [c[1]]
        return c[0] + (f' ({", ".join(tags)})' if tags else '')


def cell(v):
    """A value of metrics.json in a table: ('85.14 ± 0.69', 'first 1,000')."""
    if v['stderr'] is None:
        return f'{v["value"]} of 49'
    words = images_words(subset_of(v), v['n_images']).removeprefix('the ').removesuffix(' test images')
    return f'{num(v["value"])} ± {error(v["stderr"])}', words


def diff_cell(c):
    """A contrast in a table: ('−3.05 ± 0.10', 'first 1,000', 'paired')."""
    images = c['images'].removeprefix('the ').removesuffix(' test images')
    return f'{signed(c["value"])} ± {error(c["se"])}', images, 'paired' if c['paired'] else 'unpaired'
