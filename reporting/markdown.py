"""The results chapter, written by hand in LaTeX (analysis/results.tex), as Markdown: the twin in
docs/results.md says the same words with the same numbers. It reads the small part of LaTeX the
chapter uses, and refuses anything else, so that no LaTeX is ever left in the Markdown:

    \\section*{..} \\subsection*{..} \\paragraph{..}   headings
    \\Name (a number or a table of reporting/numbers.py), \\pinned{key} (silent)
    \\cite[..]{a,b} \\ref{..} \\label{..} \\emph \\textit \\textbf \\texttt \\ldots \\noindent
    $..$ with a few symbols, ~ -- --- `` '' \\% \\_ \\& \\,
    figure and table floats: \\includegraphics[..]{path}, \\caption{..}, \\label{..}, a table \\Name
    itemize: \\item
"""
import os
import re

from reporting.answers import CITES

MATH = {r'\pm': '±', r'\times': '×', r'\sigma': 'σ', r'\lambda': 'λ', r'\beta': 'β', r'\mu': 'μ', r'\pi': 'π',
        r'\log': 'log', r'\geq': '≥', r'\leq': '≤', r'\ge': '≥', r'\le': '≤', r'\approx': '≈', r'\to': '→',
        r'\mid': '|', r'\|': '‖', r'\cdot': '·', r'\,': ' ', r'\ldots': '…', r'\div': '÷', r'\infty': '∞'}
SUPERSCRIPT = str.maketrans('0123456789', '⁰¹²³⁴⁵⁶⁷⁸⁹')
ESCAPES = {'%': '%', '_': '_', '&': '&', '#': '#', ',': ' ', ' ': ' ', '$': '$', '{': '{', '}': '}'}
TEXT = [('---', '—'), ('--', '–'), ('``', '“'), ("''", '”'), ('~', ' ')]
FLOAT = re.compile(r'\\begin\{(figure|table)\}(?:\[[^\]]*\])?(.*?)\\end\{\1\}', re.S)


class Unknown(ValueError):
    """A LaTeX construct the converter does not read."""


def braced(s, i):
    """(the text inside the braces that open at s[i], the index after them)."""
    if i >= len(s) or s[i] != '{':
        raise Unknown(f'expected {{ at: {s[i:i + 40]!r}')
    depth = 0
    for j in range(i, len(s)):
        depth += {'{': 1, '}': -1}.get(s[j], 0) if s[j - 1] != '\\' or j == i else 0
        if depth == 0:
            return s[i + 1:j], j + 1
    raise Unknown(f'unbalanced braces at: {s[i:i + 40]!r}')


def optional(s, i):
    """(the text of an optional [..] argument at s[i] or None, the index after it)."""
    if i < len(s) and s[i] == '[':
        j = s.index(']', i)
        return s[i + 1:j], j + 1
    return None, i


def math(s):
    """The inside of $..$ as plain text."""
    out = re.sub(r'\\[A-Za-z]+|\\.', lambda m: MATH.get(m[0], m[0]), s)
    out = re.sub(r'\^\{?(\d+)\}?', lambda m: m[1].translate(SUPERSCRIPT), out).replace('{', '').replace('}', '')
    out = out.replace('-', '−')
    if '\\' in out or '^' in out:
        raise Unknown(f'math the converter does not read: ${s}$')
    return out


class Converter:
    """LaTeX of the chapter to Markdown, with the values of its macros (name -> Markdown) and the
    numbers of its floats (label -> number)."""
    def __init__(self, macros, labels, figure_path):
        self.macros, self.labels, self.figure_path = macros, labels, figure_path

    def command(self, s, name, i):
        """(Markdown, index after) for the command \\name whose arguments start at s[i]."""
        if name in self.macros:
            return self.macros[name], i + 2 if s[i:i + 2] == '{}' else i
        if name in ('noindent', 'xspace', 'par', 'centering', 'small'):
            return '', i
        if name == 'ldots':
            return '…', i
        note, i = optional(s, i) if name == 'cite' else (None, i)
        arg, i = braced(s, i)
        if name in ('pinned', 'label'):
            return '', i
        if name == 'cite':
            names = '; '.join(CITES[k.strip()] for k in arg.split(','))
            return f'({names}' + (f', {self.inline(note)}' if note else '') + ')', i
        if name == 'ref':
            if arg not in self.labels:
                raise Unknown(f'\\ref{{{arg}}} names no float of the chapter')
            return str(self.labels[arg]), i
        wrap = {'emph': '*', 'textit': '*', 'textbf': '**', 'texttt': '`'}.get(name)
        if wrap is None:
            raise Unknown(f'\\{name} is not among the commands the converter reads')
        inner = arg.replace(r'\_', '_').replace(r'\allowbreak{}', '') if wrap == '`' else self.inline(arg)
        return f'{wrap}{inner}{wrap}', i

    def inline(self, s):
        """A run of text: commands, math, escapes and TeX ligatures."""
        out, i = [], 0
        while i < len(s):
            ch = s[i]
            if ch == '\\':
                m = re.match(r'\\([A-Za-z]+)\*?', s[i:])
                if m is None:
                    out.append(ESCAPES.get(s[i + 1]) or self.unknown(s, i))
                    i += 2
                    continue
                text, i = self.command(s, m[1], i + len(m[0]))
                out.append(text)
            elif ch == '$':
                j = s.index('$', i + 1)
                out.append(math(s[i + 1:j]))
                i = j + 1
            else:
                out.append(ch)
                i += 1
        text = ''.join(out)
        for tex, md in TEXT:
            text = text.replace(tex, md)
        return re.sub(r'[ \t]*\n[ \t]*', ' ', text)

    @staticmethod
    def unknown(s, i):
        raise Unknown(f'LaTeX the converter does not read: {s[i:i + 40]!r}')


def floating(conv, kind, body, tables):
    """A figure or table float as Markdown: the images or the table, then its caption."""
    caption = conv.inline(braced(body, body.index(r'\caption') + len(r'\caption'))[0])
    label = re.search(r'\\label\{([^}]*)\}', body)[1]
    head = f'**{kind.capitalize()} {conv.labels[label]}.** {caption}'
    if kind == 'figure':
        paths = re.findall(r'\\includegraphics\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}', body)
        return ' '.join(f'![{kind.capitalize()} {conv.labels[label]}]({conv.figure_path(p)})' for p in paths) \
            + f'\n\n{head}'
    name = next(n for n in re.findall(r'\\([A-Za-z]+)', body) if n in tables)
    return f'{head}\n\n{tables[name]}'


def block(conv, text):
    """One paragraph, heading or list of the chapter."""
    heading = re.match(r'\\(section|subsection)\*?', text)
    if heading:
        title, end = braced(text, heading.end())
        if not re.fullmatch(r'\s*(\\label\{[^}]*\})?\s*', text[end:]):
            raise Unknown(f'text after a heading, not separated by a blank line: {text[end:end + 40]!r}')
        return ('## ' if heading[1] == 'section' else '### ') + conv.inline(title)
    para = re.match(r'\\paragraph\{([^}]*)\}', text)
    if para:
        return f'**{conv.inline(para[1])}** ' + conv.inline(text[para.end():].strip())
    items = re.fullmatch(r'\\begin\{itemize\}(.*)\\end\{itemize\}', text, re.S)
    if items:
        return '\n'.join('- ' + conv.inline(t.strip()) for t in items[1].split(r'\item')[1:])
    return conv.inline(text)


def labels_of(tex):
    """{label: number} of the figures and tables, numbered in order as LaTeX numbers them."""
    count, out = {'figure': 0, 'table': 0}, {}
    for kind, body in FLOAT.findall(tex):
        count[kind] += 1
        for label in re.findall(r'\\label\{([^}]*)\}', body):
            out[label] = count[kind]
    return out


def strip_comments(tex):
    return re.sub(r'(?<!\\)%.*', '', tex)


def to_markdown(tex, macros, tables, tex_dir, md_dir):
    """The chapter's LaTeX as Markdown. macros: {name: Markdown text}; tables: {name: Markdown table};
    figure paths, relative to tex_dir in the LaTeX, become relative to md_dir."""
    tex = strip_comments(tex)
    labels = labels_of(tex)
    conv = Converter(macros, labels, lambda p: os.path.relpath(os.path.join(tex_dir, p), md_dir))
    floats = []
    tex = FLOAT.sub(lambda m: floats.append(m.groups()) or f'\n\n@@float{len(floats) - 1}@@\n\n', tex)
    out = []
    for text in (t.strip() for t in re.split(r'\n\s*\n', tex)):
        if not text or re.fullmatch(r'\\(begingroup|endgroup|sloppy|par|\s)*', text):
            continue
        found = re.fullmatch(r'@@float(\d+)@@', text)
        out.append(floating(conv, *floats[int(found[1])], tables) if found else block(conv, text))
    return '\n\n'.join(out) + '\n'
