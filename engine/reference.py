"""Reference runs built on first use: where a student has finished a part at a profile and precision
that the committed results lack (the smoke profile, say), `compare` trains the reference code's run
of that part into results/reference/<profile>[-<precision>]/<part>, so that the student gets a paired
verdict in minutes. The reference code is the committed models.py and losses.py (git's HEAD), checked
against the digest the committed results recorded; it runs in a copy of the code in a temporary
folder, in a process of its own, never mixed with the student's files.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from engine import ROOT, student
from engine.config import part_dir

BUILT = 'reference'  # results/reference: reference runs built here, never committed
CODE_TREE = ('experiments.py', 'engine', 'reporting', 'tools')  # what a run of the reference code needs


def built_dir():
    return os.path.join(student.reference_results(), BUILT)


def reference_source(name):
    """The committed text of models.py or losses.py (git's HEAD), or None outside a git checkout."""
    run = subprocess.run(['git', 'show', f'HEAD:{name}'], cwd=ROOT, capture_output=True)
    return run.stdout if run.returncode == 0 else None


def build(part, profile, precision='fp32', say=print):
    """Train the reference code's run of part at profile and precision into results/reference, unless
    it is there; returns its directory. ValueError if the reference code cannot be recovered."""
    out = part_dir(built_dir(), part, profile, precision)
    if os.path.exists(os.path.join(out, 'metrics.json')):
        return out
    want = student.reference_code()
    with tempfile.TemporaryDirectory() as tmp:
        for name in student.CODE_FILES:
            text = reference_source(name)
            if text is None:
                raise ValueError(f'the committed {name} cannot be read from git here, so no reference run can be '
                                 f'built; compare at the cpu profile, whose reference runs are committed')
            with open(os.path.join(tmp, name), 'wb') as fh:
                fh.write(text)
        student_dir = student.CODE_DIR
        try:
            student.CODE_DIR = tmp
            digest = student.code_digest()
        finally:
            student.CODE_DIR = student_dir
        if want is not None and digest != want:
            raise ValueError('the committed models.py and losses.py (git HEAD) are not the code behind the committed '
                             'results, so no reference run can be built from them')
        for name in CODE_TREE:
            source = os.path.join(ROOT, name)
            copy = shutil.copytree if os.path.isdir(source) else shutil.copyfile
            copy(source, os.path.join(tmp, name), **({'ignore': shutil.ignore_patterns('__pycache__')}
                                                     if os.path.isdir(source) else {}))
        say(f'{part}: building the reference run at the {profile} profile from the committed code, into {out}')
        env = dict(os.environ, HW2_DATA=os.environ.get('HW2_DATA') or os.path.join(ROOT, 'data'))
        run = subprocess.run([sys.executable, 'experiments.py', 'run', part, '--profile', profile, '--precision',
                              precision, '--results-dir', built_dir(), '--no-progress'],
                             cwd=tmp, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise ValueError(f'the reference run of {part} at the {profile} profile failed: '
                             + (run.stderr.strip().splitlines() or ['no message'])[-1])
    return out
