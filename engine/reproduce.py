"""Recomputing what a run reported, from its committed files: one number (`eval`, the `reproduce`
command of every summary row), every number at once (`verify`, each in a fresh process, as a user
would), and the figures (`figures`).
"""
import os
import shlex
import sys
import time

import torch

from engine import ROOT, figures
from engine.config import as_int, is_quantity, part_dir, pick_device, pick_profile, run_dir, run_dirs, with_defaults
from engine.evaluate import evaluate, to_host64
from engine.files import atomic_save, read_json, write_json
from engine.partial import PartialPass
from engine.student import CODE_FILES, code_digest  # noqa: F401 (reproduce.code_digest: the name callers know)
from engine.subsets import MNIST_TEST, images_for, index_key, subset_of, subset_words
from engine.modelfiles import CheckpointError, load_file, load_models
from engine.train import load_data


def git_commit():
    """The commit of the code that ran (None outside a git checkout)."""
    import subprocess
    try:
        run = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT,
                             capture_output=True, text=True)
        return run.stdout.strip() or None
    except OSError:
        return None


SUBSETS = ('uniform', 'first')  # eval_command's subset: a uniform sample of the test images, or the first n


def eval_command(part, quantity, results_dir='results', device=None, profile='auto', precision='fp32', keep=False,
                 update=False, is_images=None, minutes=None, subset=None, seed=0):
    """Recompute one reported number from <run dir>/<part>/model.pt; the last line printed is the value.
    keep: add its per-image values to per_image.pt (for paired comparisons), with the indices of their
    test images beside them where they cover a subset (subsets.index_key). update: write the value,
    which states its subset, into metrics.json if it differs (after an estimator is corrected, or over
    more images), recording the previous value and the commit under 'recomputed'. is_images:
    importance-sample that many test images instead of the number the run used. The images are those
    the recorded number covers where it covers as many (so that it reproduces: the first n for a number
    recorded before subsets, metrics.json without 'subset'), otherwise the uniform sample of
    subsets.test_subset; subset 'uniform' or 'first' asks for one of the two instead (e.g. 'uniform' to
    move a number recorded over the first n test images to the uniform sample). minutes: importance
    sampling only, stop cleanly after that many minutes with the images done saved in
    <part>/eval_partial(...).pt (partial_name), raising partial.EvaluationStopped; the same command
    resumes there and ends with the numbers of an unbroken pass."""
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f'subset must be one of {", ".join(SUBSETS)}, got {subset!r}')
    path, record, cfg, nets, device = load_model_file(part, results_dir, device, profile, precision, seed)
    if is_images is not None:
        cfg['is_images'] = as_int(is_images, 'is_images', minimum=1)
    out = os.path.dirname(path)
    partial = None
    if minutes is not None:
        if quantity != is_quantity(cfg):
            raise ValueError(f'--minutes applies to the importance-sampled NLL ({is_quantity(cfg)}) only, not to '
                             f'{quantity}, which is computed in one pass')
        if not minutes > 0:
            raise ValueError(f'--minutes must be a positive number, got {minutes}')
        partial = PartialPass(os.path.join(out, partial_name(quantity, cfg['is_images'])), time.time() + 60 * minutes)
    test_x = load_data(cfg, train=False).to(device)
    n = cfg['is_images'] if quantity == is_quantity(cfg) else cfg['test_images']
    first = subset == 'first' or (subset is None and recorded_first(out, quantity, n, len(test_x)))
    per_image = {}
    v = evaluate(nets, cfg, test_x, only=quantity, progress=False, keep=per_image, partial=partial,
                 first=first)[quantity]
    if partial is not None:
        partial.remove()
    if keep and quantity in per_image:
        kept_path = os.path.join(out, 'per_image.pt')
        kept = load_file(kept_path) if os.path.exists(kept_path) else {}
        kept[quantity] = to_host64(per_image[quantity])
        if index_key(quantity) in per_image:
            kept[index_key(quantity)] = per_image[index_key(quantity)].cpu()
        else:
            kept.pop(index_key(quantity), None)  # every test image, in order
        atomic_save(kept, kept_path)
    if update:
        update_metric(os.path.join(out, 'metrics.json'), quantity, v, is_images, n_test=len(test_x))
    print(f'{part} {quantity}: {v["value"]}' + (f' ± {v["stderr"]}' if v['stderr'] is not None else '')
          + f' over {v["n_images"]} test images ({subset_words(v["subset"])})' + (f', M = {v["M"]}' if 'M' in v else '')
          + f' ({record["profile"]} profile, {cfg["epochs"]} epochs, {device})')
    print(v['value'])
    return v['value']


def recorded_first(out, quantity, n, n_test):
    """True where <out>/metrics.json records the quantity over the first n of the n_test test images
    (a value recorded before subsets, n fewer than all): its recomputation over n images covers those."""
    path = os.path.join(out, 'metrics.json')
    recorded = (read_json(path).get('values') or {}).get(quantity) if os.path.exists(path) else None
    return recorded is not None and images_for(n_test, n)[0] is not None and subset_of(recorded, n_test) == f'first:{n}'


def partial_name(quantity, is_images):
    """The file of a resumable `eval` in progress: one per quantity and number of images, so that
    another evaluation (verify's, or one over other images) never writes over it."""
    return f'eval_partial_{quantity}_{"all" if is_images is None else is_images}.pt'


def load_model_file(part, results_dir, device, profile, precision, seed=0):
    """The part's model.pt (of its run with that training seed), checked: (path, record, settings,
    models in eval mode, device)."""
    device = pick_device(device)
    profile = pick_profile(profile, device)
    path = os.path.join(part_dir(results_dir, part, profile, precision, seed), 'model.pt')
    if not os.path.exists(path):
        raise CheckpointError(f'{path} does not exist; run `python experiments.py run {part} --profile {profile}'
                              + (f' --precision {precision}' if precision != 'fp32' else '') + '` first')
    record = load_file(path, advice='restore it with git (`git checkout -- PATH`) or retrain the part with '
                                    '`python experiments.py run PART --fresh`')
    missing = [k for k in ('config', 'models', 'autoregress') if k not in record]
    if missing:
        raise CheckpointError(f'{path} is not a model file of this project (it lacks {", ".join(missing)}); '
                              f'restore it with git or retrain the part with --fresh')
    cfg = with_defaults(record['config'])
    nets = load_models(record['models'], device, record['autoregress'])
    torch.manual_seed(cfg['seed'])
    return path, record, cfg, nets, device


def redraw(part, results_dir='results', device=None, profile='auto', precision='fp32', seed=0):
    """Draw a finished part's figures again from its model.pt and history.json (same seeds, so the
    same samples) and point metrics.json at them."""
    path, record, cfg, nets, device = load_model_file(part, results_dir, device, profile, precision, seed)
    out = os.path.dirname(path)
    figs = figures.sample_figures(part, nets, cfg, load_data(cfg, train=False).to(device), out)
    figs.update(figures.curve_figures(part, cfg, read_json(os.path.join(out, 'history.json')), out))
    metrics = read_json(os.path.join(out, 'metrics.json'))
    write_json(os.path.join(out, 'metrics.json'), dict(metrics, figures=figs), indent=1)
    print(f'{part}: ' + ', '.join(figs.values()), flush=True)


def update_metric(path, quantity, value, is_images=None, n_test=MNIST_TEST):
    """Replace one value in a metrics.json by its recomputation, keeping the previous one on record
    (and the number of images importance-sampled, when it was asked). A value recorded before subsets
    that the recomputation repeats, over the images it covered, only gains its 'subset'."""
    m = read_json(path)
    old = m['values'].get(quantity)
    if old == value:
        return
    if old is not None and 'subset' not in old and subset_of(old, n_test) == value.get('subset') \
            and dict(old, subset=value['subset']) == value:
        m['values'][quantity] = value
        write_json(path, m, indent=1)
        print(f'{path}: {quantity} covers {subset_words(value["subset"])}', flush=True)
        return
    m.setdefault('recomputed', {})[quantity] = dict(previous=m['values'].get(quantity), commit=git_commit(),
                                                    **({} if is_images is None else {'is_images': is_images}))
    m['values'][quantity] = value
    write_json(path, m, indent=1)
    print(f'{path}: {quantity} updated to {value["value"]}', flush=True)


def why_not_verifiable(results_dir, row):
    """Why a summary row cannot be recomputed here (its model file is not committed), or None."""
    part_path = os.path.join(run_dir(results_dir, row['profile'], row.get('precision', 'fp32')), row['part'])
    if os.path.exists(os.path.join(part_path, 'model.pt')):
        return None
    metrics = os.path.join(part_path, 'metrics.json')
    reason = read_json(metrics).get('model_uncommitted') if os.path.exists(metrics) else None
    return (f'{part_path}/model.pt is not here' + (f': {reason}' if reason else '')
            + '; the number stands on the run that trained it (metrics.json, run.log)')


def verify(results_dir='results', parts=None, out=None, profiles=None, quantities=None):
    """Run every `reproduce` command of the summary.json of each run directory (or those of `parts`,
    or of the run directories named in `profiles`, e.g. ['cpu', 'cpu-bf16']) as a user would, in a
    fresh process from the repository root, and compare the value it prints last with the reported
    one: agreement means within max(0.05, stderr) nats. Writes the outcome to `out` (default
    results_dir/verify.json, where earlier checks of other numbers are kept) and returns the rows
    checked now; failures are listed, not raised."""
    import subprocess
    root = ROOT
    rows = []
    for path, _, _ in run_dirs(results_dir):
        name = os.path.basename(path)
        if (profiles is None or name in profiles) and os.path.exists(os.path.join(path, 'summary.json')):
            rows += [r for r in read_json(os.path.join(path, 'summary.json')) if (parts is None or r['part'] in parts)
                     and (quantities is None or r['quantity'] in quantities)]
    commit = git_commit()  # the code that recomputed the numbers
    checked = []
    for r in rows:
        skip = why_not_verifiable(results_dir, r)
        if skip:
            checked.append(dict(part=r['part'], quantity=r['quantity'], profile=r['profile'],
                                precision=r.get('precision', 'fp32'), reported=r['value'], reproduced=None,
                                ok=None, skipped=skip, command=r['reproduce'], commit=commit))
            print(f'skip {r["part"]:12s} {r["quantity"]:16s} {skip}', flush=True)
            continue
        argv = shlex.split(r['reproduce'])
        t0 = time.time()
        run = subprocess.run([sys.executable if argv[0] == 'python' else argv[0]] + argv[1:], cwd=root,
                             capture_output=True, text=True)
        try:
            value = float(run.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            value = None
        tolerance = max(0.05, r['stderr'] or 0.0)
        ok = run.returncode == 0 and value is not None and abs(value - r['value']) <= tolerance
        checked.append(dict(part=r['part'], quantity=r['quantity'], profile=r['profile'],
                            precision=r.get('precision', 'fp32'), reported=r['value'], reproduced=value,
                            tolerance=tolerance, ok=ok, seconds=round(time.time() - t0, 1), command=r['reproduce'],
                            commit=commit, error=None if run.returncode == 0 else run.stderr.strip()[-500:]))
        print(f'{"ok  " if ok else "FAIL"} {r["part"]:12s} {r["quantity"]:16s} reported {r["value"]}, '
              f'reproduced {value} (tolerance {tolerance:g}), {time.time() - t0:.0f} s', flush=True)
    out = out or os.path.join(results_dir, 'verify.json')
    earlier = []
    if os.path.exists(out):  # keep the outcome of numbers not rechecked this time
        done = {c['command'] for c in checked}
        earlier = [c for c in read_json(out) if c['command'] not in done]
    write_json(out, earlier + checked, indent=1)
    failed = [c for c in checked if c['ok'] is False]
    skipped = sum(c['ok'] is None for c in checked)
    print(f'{len(checked) - len(failed) - skipped} of {len(checked) - skipped} numbers reproduced'
          + (f', {skipped} skipped (their model files are not committed)' if skipped else '')
          + f'; details in {out}', flush=True)
    return checked
