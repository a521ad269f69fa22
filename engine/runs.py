"""Running one part: pick its precision, find a run already finished, train (or resume), evaluate,
write its files. What the notebooks, `experiments.py run` and `all` call.

    from engine.runs import run_part
    metrics = run_part('6b', profile='auto')

Files per part, in results/<profile>[-<precision>]/<part>/: checkpoint.pt (training state, rewritten
atomically every epoch and every `checkpoint_minutes`; a rerun resumes from it, fresh=True starts
over), model.pt (the trained model, what `eval` loads), metrics.json, history.json (per-iteration
curves), per_image.pt (per-image values, for paired comparisons), run.log and PNG figures. While
importance sampling runs, is_partial.pt holds the images done, saved after each batch: a rerun
resumes from it.

A run's numbers belong to the models.py and losses.py that made it (the `code` digests of its
metrics.json). Code that differs from them never writes into that run (guard_run), and a
student's runs asked for the repository's results/ go to results/mine (student.results_for).
"""
import json
import os
import shlex
import shutil
import time

import torch

from engine import figures, student
from engine.config import (AUTO_PROFILES, BF16_PARITY, PRECISIONS, TITLES, as_bool, as_int, bf16_units, changes, config,
                           describe_hardware, gpu_precision, model_spec, part_dir, pick_device, pick_profile,
                           precisions_started, run_dir, with_defaults)
from engine.config import check_extras
from engine.evaluate import evaluate, to_host64
from engine.files import atomic_save, keep_out_of_git, read_json, write_json
from engine.locks import part_lock
from engine.partial import EvaluationStopped, PartialPass
from engine.reproduce import git_commit
from engine.student import code_digest
from engine.subsets import SUBSET_SEED, subset_of
from engine.timing import precision_speeds
from engine.modelfiles import model_record
from engine.train import build, init_output_bias, load_data, say, train
from engine.transfer import PACK_BYTES, carry, drop_carried, restore_carried


class ResultsExistError(RuntimeError):
    """A finished run with other settings is in the directory a run would write to."""


class ForeignCodeError(RuntimeError):
    """The models.py or losses.py here differ from the code that made a run, which is asked to be written to."""


# settings a finished run does not depend on: how the steps were executed, not what they computed (ours:
# compile_train's CUDA graphs run the same operations; a change of it mid-run is one line of run.log)
FINISHED_IGNORES = ('compile', 'compile_train', 'checkpoint_minutes')
PARTIAL = 'is_partial.pt'  # an importance-sampling pass in progress, resumed by a rerun (partial.PartialPass)
AUTO_SPEEDUP = 1.1  # 'auto' trains in bfloat16 only where it measures at least this much faster
CODE_COPY = 'code'  # <part dir>/code/: the models.py and losses.py of a run made with a student's code


# ---------------------------------------------------------------------------------------------
# Whose code may write where

def recorded_code(out):
    """{file: sha256} of the code that made the run in out (its metrics.json), or None."""
    path = os.path.join(out, 'metrics.json')
    if not os.path.exists(path):
        return None
    return read_json(path).get('code') or None


def foreign_files(out):
    """The files of the code here that differ from the code that made the run in out ([] if they
    are the same, or if the run recorded none)."""
    recorded, now = recorded_code(out), code_digest()
    return [] if recorded is None else [f for f in now if recorded.get(f) != now[f]]


def guard_run(out, action):
    """Refuse (ForeignCodeError) to let `action` write into the run in out when the code here is not
    the code that made it: its numbers would be mixed with another code's."""
    changed = foreign_files(out)
    if changed:
        raise ForeignCodeError(
            f'your {" and ".join(changed)} differ{"s" if len(changed) == 1 else ""} from the code that made {out}, '
            f'so {action} would write your code\'s numbers into that run; nothing was written. Your code may '
            f'evaluate that model without writing (drop --update, --keep and --minutes), or train runs of its own '
            f'(`python experiments.py run PART`, into results/mine), which `python experiments.py compare` sets '
            f'beside the reference')


def guard_results_dir(results_dir):
    """A student's code may not write into the committed tree under another name (e.g. results/full):
    ForeignCodeError unless results_dir is results/ itself (redirected to results/mine), results/mine
    or a directory outside results/."""
    reference = os.path.realpath(student.reference_results())
    real = os.path.realpath(results_dir)
    inside = real.startswith(reference + os.sep)
    if inside and not student.is_mine(results_dir) and not real.startswith(
            os.path.realpath(os.path.join(reference, student.MINE)) + os.sep) and student.changed_files():
        raise ForeignCodeError(f'{results_dir} is inside the committed results ({student.reference_results()}) and '
                               f'your models.py or losses.py differ from the code behind them; give --results-dir '
                               f'results (your runs then go to results/mine) or a directory outside results/')


def keep_code(out):
    """Copy the models.py and losses.py that make a student's run into out/code/, so that the checks
    of `compare` run on the code that made the numbers, whatever is in the checkout later."""
    if not student.changed_files():
        return None
    where = os.path.join(out, CODE_COPY)
    os.makedirs(where, exist_ok=True)
    for name in student.CODE_FILES:
        shutil.copyfile(os.path.join(student.CODE_DIR, name), os.path.join(where, name))
    return where


# ---------------------------------------------------------------------------------------------
# A run already there

def seed_dirs(results_dir, part, profile, precision='fp32'):
    """{seed: part directory} of the part's runs with a finished metrics.json, seed 0 included."""
    found = {}
    base = run_dir(results_dir, profile, precision)
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        seed = 0 if name == part else (int(name[len(part) + 5:]) if name.startswith(f'{part}-seed')
                                       and name[len(part) + 5:].isdigit() else None)
        if seed is not None and os.path.exists(os.path.join(base, name, 'metrics.json')):
            found[seed] = os.path.join(base, name)
    return dict(sorted(found.items()))


def describe_images(n, subset=None):
    if n is None or subset == 'all':
        return 'all test images'
    if subset is not None and subset.startswith('uniform:'):  # subsets.test_subset's sample
        return f'a uniform sample of {n} test images (seed {subset.split(":", 1)[1]})'
    return f'the first {n} test images'


def finished_run(paths, cfg, out, part, profile):
    """The metrics of the part's run finished in `out` with the settings cfg and today's models.py and
    losses.py, or None if none has finished there (or if only more epochs are asked and its
    checkpoint is there to train on from). A finished run with other settings, or produced by other
    code, raises ResultsExistError: it is never trained over, and never passed off as this code's."""
    if not (os.path.exists(paths['metrics']) and os.path.exists(paths['model'])):
        return None
    done = read_json(paths['metrics'])
    saved = with_defaults(done.get('config') or {})
    differ = sorted(k for k in set(saved) | set(cfg) if k not in FINISHED_IGNORES and saved.get(k) != cfg.get(k))
    if differ == ['epochs'] and cfg['epochs'] > saved['epochs'] and os.path.exists(paths['checkpoint']):
        print(f'{out}: training the finished run on from its checkpoint, to {cfg["epochs"]} epochs', flush=True)
        return None
    way_out = ('use another results directory (--results-dir, results_dir=...), or rerun with --fresh '
               '(fresh=True), which deletes that run')
    if 'is_images' in differ:  # an evaluation's size: the number states its images, and `eval` redoes it
        differ.remove('is_images')
        if not differ and cfg['model'] == 'binary_vae':
            results = os.path.dirname(os.path.dirname(out))
            recorded = done['values'].get(f'test_nll_is{saved["is_samples"]}') or dict(n_images=0, subset='all')
            print(f'{out}: its importance-sampled NLL covers '
                  f'{describe_images(saved["is_images"], subset_of(recorded))}, not '
                  f'{describe_images(cfg["is_images"], f"uniform:{SUBSET_SEED}")} as asked; to recompute it from the '
                  f'model: python experiments.py eval {part} --quantity test_nll_is{saved["is_samples"]} '
                  f'--profile {profile}'
                  + (f' --precision {cfg["precision"]}' if cfg['precision'] != 'fp32' else '')
                  + (f' --results-dir {shlex.quote(results)}' if results != 'results' else '')
                  + ' --is-images N --keep --update', flush=True)
    if differ:
        raise ResultsExistError(f'{out} holds a finished run with other settings ({changes(saved, cfg, differ)}); it '
                                f'is kept as it is. To train this part with the new settings, {way_out}')
    changed = [f for f, digest in code_digest().items() if (done.get('code') or {}).get(f) != digest]
    if changed:
        raise ResultsExistError(f'{out} holds a finished run whose numbers came from another {" and ".join(changed)} '
                                f'than the one here now, so they are not this code\'s results. To train this part '
                                f'with your code, {way_out}')
    return done


def switches(is_images=None, compile_train=None, seed=None):
    """The overrides of config that `all`, `run` and the notebooks share, without those left at None
    (the profile's setting); is_images 'all' is every test image; seed: the training seed (0 the runs
    the answers quote; another, a run of its own in <part>-seed<k>, for the spread between seeds)."""
    out = {}
    if seed is not None:
        out['seed'] = as_int(seed, 'seed', minimum=0)
    if is_images is not None:
        out['is_images'] = None if isinstance(is_images, str) and is_images.strip().lower() == 'all' else is_images
    if compile_train is not None:
        out['compile_train'] = as_bool(compile_train, 'compile_train')
    return out


def training_time(m):
    """[(hardware, seconds)] of a run's training, in the order first used, summed over its sittings
    on each (metrics.json's sittings); a sitting whose hardware was not recorded is named by its
    device type. A run finished before sittings were recorded trained on its recorded hardware."""
    sittings = m.get('sittings') or [dict(device=m['device'], hardware=m.get('hardware'), seconds=m['train_seconds'])]
    spent = {}
    for s in sittings:
        label = s.get('hardware') or (str(s['device']).split(':')[0].upper() if s.get('device') else 'an unrecorded '
                                                                                                   'device')
        spent[label] = spent.get(label, 0.0) + s['seconds']
    return list(spent.items())


def trained_on(m):
    """The hardware a run trained on, in words: one name, or several joined by ' + '."""
    return ' + '.join(label for label, _ in training_time(m))


# ---------------------------------------------------------------------------------------------
# Precision

def can_train_in(precision, device):
    """Why `precision` cannot train on device, or None. Every precision trains on every device type
    here; a run whose every step was skipped (float16 overflowing at each) is refused as finished
    instead (check_trained)."""
    return None


def check_trained(state):
    """Refuse (ValueError) to write as finished a run that took no optimiser step: float16 with a loss
    scaler can skip every step (each overflowed), which would leave the untrained model."""
    skipped = len(state['history'].get('skipped') or [])
    if state['step'] and skipped >= state['step']:
        raise ValueError(f'every one of the {state["step"]} training steps was skipped by loss scaling (float16 '
                         f'overflowed at each), so nothing was trained and no model is written as finished; '
                         f'train with --precision bf16 or fp32')


def pick_precision(precision, part, profile, device, results_dir='results', fresh=False, seed=0):
    """(precision, why) of a part's training. 'fp32', 'bf16' and 'fp16' are taken as asked (fp16 only
    on a GPU). 'auto': a run of the part already started in results_dir keeps its precision
    (float32 first) where this device can train in it, so that a rerun resumes or finds it;
    otherwise float16 on a CUDA GPU without bfloat16 tensor cores (config.gpu_precision) and
    float32 on any other GPU; on a CPU, bfloat16 for a part with shown parity (BF16_PARITY) in the
    cpu or full profile, on a CPU with bfloat16 units, where a few training steps each way, in
    turns, measure it AUTO_SPEEDUP times faster; float32 otherwise."""
    device = torch.device(device)
    if precision != 'auto':
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be auto or one of {", ".join(PRECISIONS)}, got {precision!r}')
        refused = can_train_in(precision, device)
        if refused:
            raise ValueError(refused)
        return precision, 'as asked'
    started = [] if as_bool(fresh, 'fresh') else precisions_started(results_dir, part, profile, seed=seed)
    for p in started:
        if can_train_in(p, device) is None and not (p == 'bf16' and device.type == 'cuda'
                                                    and gpu_precision(device) == 'fp16'):
            return p, f'its run in {part_dir(results_dir, part, profile, p, seed)}'
    note = (f' (its run in {part_dir(results_dir, part, profile, started[0], seed)} is in {started[0]}, which '
            f'{device.type} cannot train in; it stays as it is)' if started else '')
    if device.type != 'cpu':
        if gpu_precision(device) == 'fp16':
            capability = '.'.join(map(str, torch.cuda.get_device_capability(device)))
            return 'fp16', f'fp16: CUDA compute capability {capability} has no bfloat16 tensor cores{note}'
        return 'fp32', f'float32 on {device.type}{note}'
    if part not in BF16_PARITY or profile not in AUTO_PROFILES:
        return 'fp32', (f'float32: {part} has not shown bf16 parity' if part not in BF16_PARITY
                        else f'float32 in the {profile} profile') + note
    units = bf16_units()
    if not units:
        return 'fp32', 'float32: this CPU reports no bfloat16 units' + note
    speed = precision_speeds(part, profile, device)
    measured = f'{speed["bf16"]:.0f} against {speed["fp32"]:.0f} training images/s, measured in turns'
    if speed['bf16'] < AUTO_SPEEDUP * speed['fp32']:
        return 'fp32', f'float32: bf16 is not faster here ({measured}){note}'
    return 'bf16', f'bf16: the CPU has {", ".join(units)}, {measured}, and {part} has shown parity{note}'


# ---------------------------------------------------------------------------------------------
# Running a part

def run_part(part, profile='auto', device=None, fresh=False, results_dir='results', progress=True, stop_at=None,
             precision='auto', is_images=None, compile_train=None, **overrides):
    """Train (or resume) one part, evaluate it, save its figures and metrics; returns the metrics
    (None if stopped at the wall-clock time stop_at, with a checkpoint to resume from). The files
    go to results_dir/<profile>[-<precision>]/<part>; precision 'auto' is pick_precision's choice.
    is_images and compile_train: None keeps the profile's setting (the notebooks pass None);
    is_images='all' importance-samples every test image. With models.py or losses.py other than the
    code behind the committed results, results_dir 'results' means results/mine (student.results_for).
    overrides: settings of `config`, e.g. epochs=1."""
    fresh = as_bool(fresh, 'fresh')
    guard_results_dir(results_dir)
    results_dir = student.results_for(results_dir, say=True)  # a student's code: results/mine
    device = pick_device(device)
    profile = pick_profile(profile, device)
    seed = as_int(overrides.get('seed', 0), 'seed', minimum=0)
    precision, why = pick_precision(precision, part, profile, device, results_dir, fresh, seed)
    cfg = config(part, profile, precision=precision, **overrides, **switches(is_images, compile_train))
    check_extras(part, profile, cfg)  # a models.py of the course's API only: one sentence on what the part needs
    out = part_dir(results_dir, part, profile, cfg['precision'], cfg['seed'])
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, name) for k, name in (('checkpoint', 'checkpoint.pt'), ('model', 'model.pt'),
                                                              ('metrics', 'metrics.json'), ('history', 'history.json'))}
    with part_lock(out):
        if fresh:
            guard_run(out, '--fresh')
            for p in list(paths.values()) + [os.path.join(out, n) for n in ('run.log', 'per_image.pt', PARTIAL)]:
                if os.path.exists(p):
                    os.remove(p)
            drop_carried(out)
        done = finished_run(paths, cfg, out, part, profile)
        if done is not None:
            print(f'{part}: already done ({paths["metrics"]}, trained on {trained_on(done)}); '
                  f'--fresh to redo it', flush=True)
            return done
        restore_carried(out, log=lambda m: say(out, f'{part}: {m}'))  # a checkpoint committed by `carry`
        if why != 'as asked':
            say(out, f"{part}: precision 'auto' -> {precision} ({why})")
        return train_and_evaluate(part, profile, cfg, device, out, paths, progress, stop_at)


def train_and_evaluate(part, profile, cfg, device, out, paths, progress, stop_at=None):
    say(out, f'{part}: {TITLES[part]}, {profile} profile on {device} ({describe_hardware(device)}), torch '
             f'{torch.__version__}, {torch.get_num_threads()} threads, commit {git_commit()}; settings '
             + json.dumps(cfg, sort_keys=True))  # one line per sitting: a run resumed elsewhere records each
    torch.manual_seed(cfg['seed'])
    spec = model_spec(cfg)
    nets = build(spec, device)
    init_output_bias(nets, cfg, device)
    state, complete = train(part, cfg, nets, out, device, progress, stop_at)
    if not complete:
        say(out, f'{part}: stopped at the time limit at epoch {state["epoch"]}, batch {state["batch"]}; the '
                 f'checkpoint {paths["checkpoint"]} holds it: rerun the same command to resume')
        return None
    check_trained(state)
    atomic_save(dict(part=part, profile=profile, config=cfg, models=model_record(nets, spec),
                     autoregress=state['autoregress'], epoch=state['epoch'], step=state['step']), paths['model'])
    uncommitted = keep_out_of_git(out, 'model.pt')  # the storage policy: too large for git, kept here only
    for net in nets.values():
        net.eval()
    t0 = time.time()
    test_x = load_data(cfg, train=False).to(device)
    per_image, partial = {}, PartialPass(os.path.join(out, PARTIAL), stop_at, log=lambda m: say(out, m))
    try:
        values = evaluate(nets, cfg, test_x, progress=progress, keep=per_image, partial=partial)
    except EvaluationStopped as stop:
        say(out, f'{part}: {stop}')
        return None
    atomic_save({k: to_host64(v) if torch.is_floating_point(v) else v for k, v in per_image.items()},
                os.path.join(out, 'per_image.pt'))
    figs = figures.sample_figures(part, nets, cfg, test_x, out)
    figs.update(figures.curve_figures(part, cfg, state['history'], out))
    write_json(paths['history'], state['history'])
    code_copy = keep_code(out)
    metrics = dict(part=part, title=TITLES[part], profile=profile, device=str(device),
                   hardware=describe_hardware(device), precision=cfg['precision'], epochs=state['epoch'],
                   steps=state['step'], train_seconds=round(state['train_seconds'], 1),
                   sittings=[dict(s, seconds=round(s['seconds'], 1)) for s in state['sittings']],
                   eval_seconds=round(time.time() - t0 + partial.earlier, 1), model=paths['model'], commit=git_commit(),
                   code=code_digest(), autoregress_step=state['history']['autoregress_step'], values=values,
                   figures=figs, config=cfg, **({'model_uncommitted': uncommitted} if uncommitted else {}),
                   **({'code_copy': code_copy} if code_copy else {}))
    write_json(paths['metrics'], metrics, indent=1)
    partial.remove()
    if drop_carried(out):  # the storage policy: a finished run keeps its model file, not a checkpoint
        say(out, f'{part}: removed the carried checkpoint {os.path.join(out, "checkpoint.pack")} (git rm it with the '
                 f'finished run)')
    say(out, f'{part}: ' + ', '.join(f'{k} {v["value"]}' + (f' ± {v["stderr"]}' if v['stderr'] is not None else '')
                                     for k, v in values.items()) + f' (evaluation {metrics["eval_seconds"]:.0f} s)')
    warn_kl_mismatch(out, part, values)
    return metrics


def warn_kl_mismatch(out, part, values):
    """A run whose closed-form and Monte-Carlo KL terms differ by about a factor of two says so: the
    two estimate the same expectation, so a ratio near 2 (or 1/2) points at a dropped or doubled ½."""
    closed, mc = (values.get(k, {}).get('value') for k in ('kl', 'kl_mc'))
    if closed is None or mc is None or min(closed, mc) < 0.5:  # nats: too small a KL for a ratio to mean much
        return
    ratio = closed / mc
    if abs(ratio - 2) < 0.2 or abs(1 / ratio - 2) < 0.2:
        say(out, f'{part}: warning: the closed-form KL term ({closed:.2f}) is {ratio:.2f}× the Monte-Carlo one '
                 f'({mc:.2f}); they estimate the same KL, so a factor of two points at a missing or extra ½ in '
                 f'losses.gaussian_elbo\'s closed form')


def carry_parts(profile, precision='fp32', results_dir='results', parts=None, piece_bytes=PACK_BYTES):
    """`carry` the checkpoint of each of `parts` (default: every unfinished part with one) in
    results_dir/<profile>[-<precision>]; returns the manifests written."""
    from engine.config import PARTS
    found = [p for p in PARTS
             if os.path.exists(os.path.join(part_dir(results_dir, p, profile, precision), 'checkpoint.pt'))
             and not os.path.exists(os.path.join(part_dir(results_dir, p, profile, precision), 'metrics.json'))]
    if parts is None and not found:
        raise ValueError(f'no unfinished part in {run_dir(results_dir, profile, precision)} has a checkpoint: nothing '
                         f'to carry')
    return [carry(part_dir(results_dir, p, profile, precision), piece_bytes)
            for p in (found if parts is None else parts)]
