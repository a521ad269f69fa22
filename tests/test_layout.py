"""The house: the course's files and the entry points at the root, one folder per layer, imports
that only flow down (engine -> tools -> reporting -> the entry points; the engine never imports the
command line), and rooms of one idea (no function or class over 60 lines, no module over 500).
Read from the source, nothing is run."""
import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ['models', 'losses', 'engine', 'tools', 'reporting', 'entry']  # each imports only what is before it
COURSE = {'models.py', 'losses.py'}           # the two files students submit
ENTRY_POINTS = {'experiments.py', 'report.py'}
LONGEST = 60                                  # lines of a function or class
LONGEST_MODULE = 500                          # lines of a module, but for the course's files and the tests
# Modules still over LONGEST_MODULE, each with what will bring it under: remove its entry then
# (test_the_long_module_exceptions_are_still_needed says when).
LONG_MODULES = {}


def tracked_python():
    """The Python files of the checkout outside tests/ and analysis/: those git tracks, and the new ones
    it does not ignore (a module not yet added is a module all the same)."""
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '*.py'], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip('not a git checkout')
    return sorted({p for p in out.stdout.split() if not p.startswith(('tests/', 'analysis/'))
                   and os.path.exists(os.path.join(ROOT, p))})


def read(path):
    with open(path) as fh:
        return fh.read()


def module_name(path):
    return path[:-3].replace('/', '.').removesuffix('.__init__')


def layer(module):
    top = module.split('.')[0]
    return top if top in LAYERS else 'entry'


def imports(path, source=None):
    """Every project module that the file imports, at the top or inside a function."""
    tree = ast.parse(read(os.path.join(ROOT, path)) if source is None else source)
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


def imports_experiments(source):
    """The lines of a source that import the command line (experiments.py): `import experiments`,
    `from experiments import ...` or importlib.import_module('experiments'), at the top or inside a
    function."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ''] if node.level == 0 else []
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, 'id', '')
            names = [node.args[0].value] if called in ('import_module', '__import__') else []
        else:
            continue
        if any(str(n).split('.')[0] == 'experiments' for n in names):
            found.append(node.lineno)
    return found


def test_the_engine_never_imports_the_command_line():
    """experiments.py parses the command line and calls the engine; the engine calling back into it
    (even from inside a function, where the circle rule's graph would see it too late to name) would
    tie every run to the parser's module."""
    sample = ('import os\nimport experiments as E\ndef f():\n    from experiments import run_part\n'
              '    return importlib.import_module("experiments")\n')
    assert imports_experiments(sample) == [2, 4, 5]    # the finder sees each form
    assert imports_experiments('from engine import experimentsx\nimport experimental\n') == []
    engine = [p for p in tracked_python() if p.startswith('engine/')]
    assert 'engine/runs.py' in engine
    found = {p: lines for p in engine if (lines := imports_experiments(read(os.path.join(ROOT, p))))}
    assert not found, f'modules of the engine that import experiments (file: lines): {found}'


def module_lengths():
    """{path: lines} of every module but the course's files (the tests are not in tracked_python)."""
    return {p: len(read(os.path.join(ROOT, p)).splitlines()) for p in tracked_python() if p not in COURSE}


def test_no_module_is_over_500_lines():
    """A file of one idea: a module that grows past LONGEST_MODULE lines is split into modules named
    for what each holds; the course's models.py follows the framework and is left whole."""
    long = {p: n for p, n in module_lengths().items() if n > LONGEST_MODULE and p not in LONG_MODULES}
    assert not long, f'modules over {LONGEST_MODULE} lines: {long}'


def test_the_long_module_exceptions_are_still_needed():
    lengths = module_lengths()
    done = [p for p in LONG_MODULES if lengths.get(p, 0) <= LONGEST_MODULE]
    assert not done, f'now at most {LONGEST_MODULE} lines (or gone): take them off LONG_MODULES: {done}'


def test_no_function_or_class_is_over_60_lines():
    """Rooms of one idea, everywhere but in the course's two files, whose classes follow the framework."""
    long = []
    for path in (p for p in tracked_python() if p not in COURSE):
        for node in ast.walk(ast.parse(read(os.path.join(ROOT, path)))):
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
        for module in re.findall(r'\bfrom ([\w.]+) import\b|\bimport ([\w.]+)', read(path)):
            found.append((os.path.basename(path), module[0] or module[1]))
    assert ('gpu_check.sh', 'engine.modelfiles') in found
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
    texts = {p: read(p) for p in [os.path.join(ROOT, 'README.md'), *glob.glob(os.path.join(ROOT, 'docs', '*.md'))]}
    for nb in glob.glob(os.path.join(ROOT, '*.ipynb')):
        cells = json.loads(read(nb))['cells']
        texts[nb] = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    import re
    assert sum(len(re.findall(LINK, t)) for t in texts.values()) > 20   # the pattern finds the links
    assert broken_links(os.path.join(ROOT, 'docs', 'running.md'), '[speed](docs/speed.md)') == ['docs/speed.md']
    broken = {os.path.relpath(p, ROOT): b for p, t in texts.items() if (b := broken_links(p, t))}
    assert not broken, broken
