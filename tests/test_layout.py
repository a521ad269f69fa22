"""The house: the course's files and the entry points at the root, one folder per layer, imports
that only flow down (engine -> tools -> reporting -> the entry points), and rooms of one idea (no
function or class over 60 lines). Read from the source, nothing is run."""
import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ['models', 'losses', 'engine', 'tools', 'reporting', 'entry']  # each imports only what is before it
COURSE = {'models.py', 'losses.py'}           # the two files students submit
ENTRY_POINTS = {'experiments.py', 'report.py'}
LONGEST = 60                                  # lines of a function or class


def tracked_python():
    out = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        pytest.skip('not a git checkout')
    return [p for p in out.stdout.split() if not p.startswith(('tests/', 'analysis/'))]


def module_name(path):
    return path[:-3].replace('/', '.').removesuffix('.__init__')


def layer(module):
    top = module.split('.')[0]
    return top if top in LAYERS else 'entry'


def imports(path, source=None):
    """Every project module that the file imports, at the top or inside a function."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read() if source is None else source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f'{node.module}.{a.name}' for a in node.names}  # `from engine import train`
    modules = {module_name(p) for p in tracked_python()}
    return {m for m in found if m in modules and m != module_name(path)}


def graph():
    return {module_name(p): imports(p) for p in tracked_python()}


def test_the_root_holds_the_course_files_and_the_entry_points_only():
    root = {p for p in tracked_python() if '/' not in p}
    assert root == COURSE | ENTRY_POINTS


def test_imports_only_flow_down_the_layers():
    up = [(m, d) for m, deps in graph().items() for d in deps
          if LAYERS.index(layer(d)) > LAYERS.index(layer(m)) or layer(d) == 'entry']
    assert not up, f'imports that flow up (module, what it imports): {up}'


def test_no_module_imports_another_that_imports_it_back():
    g = graph()
    done, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in done:
            return
        stack.append(m)
        for d in sorted(g.get(m, ())):
            visit(d)
        stack.pop()
        done.add(m)
    for m in sorted(g):
        visit(m)
    assert not cycles, f'import circles: {cycles}'


def test_the_checker_sees_an_import_inside_a_function():
    """The graph counts an import made inside a function, as the circle rule asks."""
    g = graph()
    assert 'engine.evaluate' in g['engine.train']       # at the top
    assert 'reporting.versus' in g['experiments']       # `from reporting import versus`
    late = 'def f():\n    from engine import train\n    import reporting.answers\n    return train\n'
    assert imports('late.py', late) == {'engine', 'engine.train', 'reporting.answers'}


def test_no_function_or_class_is_over_60_lines():
    """Rooms of one idea, everywhere but in the course's two files, whose classes follow the framework."""
    long = []
    for path in (p for p in tracked_python() if p not in COURSE):
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.end_lineno - node.lineno + 1 > LONGEST:
                long.append(f'{path}: {node.name} ({node.end_lineno - node.lineno + 1} lines)')
    assert not long, long


def test_the_python_inside_the_shell_scripts_imports_modules_that_exist():
    """`python -c "from engine.train import ..."` in tools/*.sh: the default suite does not run those
    scripts (they are marked `script`), so a moved module would break them unseen."""
    import glob
    import importlib.util
    import re
    found = []
    for path in glob.glob(os.path.join(ROOT, 'tools', '*.sh')):
        for module in re.findall(r'\bfrom ([\w.]+) import\b|\bimport ([\w.]+)', open(path).read()):
            found.append((os.path.basename(path), module[0] or module[1]))
    assert ('gpu_check.sh', 'engine.train') in found
    missing = [(p, m) for p, m in found if importlib.util.find_spec(m.split('.')[0]) is None
               or importlib.util.find_spec(m) is None]
    assert not missing, missing


LINK = r'\]\(([^)\s]+)\)'   # a markdown link's target


def broken_links(path, text):
    """The relative link targets of a markdown text that name no file or folder, from the file's folder."""
    import re
    base = os.path.dirname(path)
    return [t for t in re.findall(LINK, text) if not re.match(r'[a-z]+:|#', t)
            and not os.path.exists(os.path.join(base, t.split('#')[0]))]


def test_every_relative_link_of_the_markdown_and_the_notebooks_names_a_file():
    """Generated sections are written into files in different folders (README.md at the root,
    running.md in docs/), so a link right in one is broken in the other."""
    import glob
    import json
    texts = {p: open(p).read() for p in [os.path.join(ROOT, 'README.md'), *glob.glob(os.path.join(ROOT, 'docs', '*.md'))]}
    for nb in glob.glob(os.path.join(ROOT, '*.ipynb')):
        cells = json.load(open(nb))['cells']
        texts[nb] = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    import re
    assert sum(len(re.findall(LINK, t)) for t in texts.values()) > 20   # the pattern finds the links
    assert broken_links(os.path.join(ROOT, 'docs', 'running.md'), '[speed](docs/speed.md)') == ['docs/speed.md']
    broken = {os.path.relpath(p, ROOT): b for p, t in texts.items() if (b := broken_links(p, t))}
    assert not broken, broken
