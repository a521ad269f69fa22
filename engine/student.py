"""A student's own code: which models.py and losses.py a run used (their digest), whether they are
the code behind the committed results (the reference code), and where a student's runs go.

The reference code is the one the committed results recorded: the `code` digests in the
metrics.json of every part under the repository's results/ (they all agree; were they ever to
differ, the digest most of them recorded). A checkout without finished results takes its own code
as the reference. When models.py or losses.py differ from the reference, runs that would write to
the repository's results/ go to results/mine/<profile>[-<precision>]/<part> instead (results_for):
the committed results are never trained over, never resumed from and never shown as the
student's. Any other results directory is used as given.
"""
import collections
import hashlib
import json
import os

from engine import ROOT

CODE_DIR = ROOT  # where the models.py and losses.py that run are (the repository's own)
CODE_FILES = ('models.py', 'losses.py')  # the student's files: every run records their digest
MINE = 'mine'    # results/mine: a student's runs, never read as reference runs


def code_digest():
    """{file: sha256} of models.py and losses.py as they are now. Windows line ends (CRLF) are read
    as LF first, so that a checkout with git's autocrlf has the digest of the committed files."""
    digest = {}
    for name in CODE_FILES:
        with open(os.path.join(CODE_DIR, name), 'rb') as fh:
            digest[name] = hashlib.sha256(fh.read().replace(b'\r\n', b'\n')).hexdigest()
    return digest


def reference_results():
    return os.path.join(ROOT, 'results')


def recorded_codes(results=None):
    """Counter of the code digests (as sorted JSON) that the finished parts under results/ recorded,
    results/mine excluded."""
    results = results or reference_results()
    seen = collections.Counter()
    for run in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        if run == MINE or not os.path.isdir(os.path.join(results, run)):
            continue
        for part in sorted(os.listdir(os.path.join(results, run))):
            path = os.path.join(results, run, part, 'metrics.json')
            if os.path.isfile(path):
                try:
                    with open(path) as fh:
                        code = json.load(fh).get('code')
                except (OSError, ValueError):
                    continue  # an unreadable file is reported by the readers of results, not here
                if code:
                    seen[json.dumps(code, sort_keys=True)] += 1
    return seen


def reference_code():
    """{file: sha256} of the code behind the committed results, or None if no finished part recorded one."""
    seen = recorded_codes()
    return json.loads(seen.most_common(1)[0][0]) if seen else None


def changed_files():
    """The files of CODE_FILES that differ from the reference code ([] when this is the reference)."""
    reference, now = reference_code(), code_digest()
    return [] if reference is None else [f for f in CODE_FILES if reference.get(f) != now[f]]


def is_reference():
    return not changed_files()


def is_reference_dir(results_dir):
    return os.path.realpath(results_dir) == os.path.realpath(reference_results())


def is_mine(results_dir):
    """Whether results_dir is the directory of a student's runs (results/mine)."""
    return os.path.realpath(results_dir) == os.path.realpath(os.path.join(reference_results(), MINE))


def results_for(results_dir, say=False):
    """Where runs asked to go to results_dir go: results_dir/mine when it is the repository's
    results/ and the code is not the reference code; results_dir otherwise. say: print one line
    when the runs are redirected."""
    changed = changed_files() if is_reference_dir(results_dir) else []
    if not changed:
        return results_dir
    mine = os.path.join(results_dir, MINE)
    if say:
        print(f'your {" and ".join(changed)} differ{"s" if len(changed) == 1 else ""} from the code behind the '
              f'committed results, so your runs go to {mine}/ (results/ stays as committed); '
              f'`python experiments.py compare` sets them beside the reference', flush=True)
    return mine
