"""The experiment runner of CSE 599i Homework 2: the command line and the orchestration of the
parts. Every part of the handout is a configuration (engine/config.py) of one training loop (engine/train.py),
one evaluation (engine/evaluate.py) and one set of figures (engine/figures.py); report.py writes the tables.

    python experiments.py all                              # every part; profile chosen by the device
    python experiments.py all --profile cpu --parts 5b,6a  # some parts, a given profile
    python experiments.py all --profile full --minutes 50  # stop cleanly after 50 minutes; rerun to resume
    python experiments.py all --profile full --jobs 3 --is-images 1000 --compile-train  # 3 parts at once, CUDA graphs
    python experiments.py run 6b [--fresh] [--epochs N]    # one part (resumes from its checkpoint)
    python experiments.py run 6c --profile full --is-images 1000  # IS NLL on the first 1000 test images
    python experiments.py run 6a --precision bf16          # bfloat16 forward passes (fp16: float16); default auto
    python experiments.py eval 6b --quantity test_nll_is1000 --profile cpu  # recompute one number
    python experiments.py estimate --profile cpu           # measured throughput and expected time per part
    python experiments.py list [--profile cpu]             # the parts, their settings and the deviations
    python experiments.py summary                          # rewrite results/<profile>/summary.{md,json}
    python experiments.py compare                          # your runs (results/mine) beside the reference's
    python experiments.py notebooks                        # execute the notebooks in place with the results
    python experiments.py verify                           # rerun every reproduce command, compare
    python experiments.py pack DIR --profile full [--parts 5b]  # packs of at most 8 files of 16 MiB in DIR
    python experiments.py unpack DIR                       # and back, on another machine (packs in any order)
    python experiments.py carry --profile full [--parts 6d]  # an in-progress checkpoint as pieces git can hold

    from experiments import run_part, show                 # what the notebooks do
    metrics = run_part('6b', profile='auto'); show('6b')

Files per part, in results/<profile>[-<precision>]/<part>/: checkpoint.pt (training state, rewritten
atomically every epoch and every `checkpoint_minutes`; a rerun resumes from it, --fresh starts
over), model.pt (the trained model, what `eval` loads), metrics.json, history.json (per-iteration
curves), per_image.pt (per-image values, for paired comparisons), run.log and PNG figures. While
importance sampling runs, is_partial.pt holds the images done, saved after each batch: a rerun
resumes from it (a long pass can span sittings; `--minutes` stops it cleanly too).

With a models.py or losses.py other than the code behind the committed results (a student's own),
runs asked to go to results/ go to results/mine/<profile>[-<precision>]/<part> (engine/student.py); a
checkpoint is resumed only by the code that wrote it.
"""
import argparse
import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import time

import torch

from engine import figures
from engine import student
from engine.reproduce import code_digest, eval_command, git_commit, redraw, verify
from engine.transfer import PACK_BYTES, PACK_FILES, carry, drop_carried, pack, restore_carried, unpack
from engine.config import (AUTO_PROFILES, BF16_PARITY, PARTS, PRECISIONS, PROFILES, TITLES, as_bool, as_int,
                           bf16_units, config, describe_hardware, gpu_precision, list_settings, changes, model_spec,
                           part_dir, part_for, pick_device, pick_profile, precisions_started, run_dir, with_defaults)  # noqa: F401
from engine.timing import estimate, precision_speeds
from engine.evaluate import EvaluationStopped, PartialPass, evaluate, to_host64
from engine.files import keep_out_of_git, write_json
from engine.train import (CheckpointError, NonFiniteLossError, atomic_save, build, init_output_bias, load_data,
                          model_record, say, train)
from engine.files import read_json
from reporting import versus
from reporting.display import compare, show, show_finished, show_remedies  # noqa: F401 (notebooks)
from reporting.reader import trained_on
from reporting.summary import write_summary
from reporting.versus import show_versus  # noqa: F401 (notebooks)



class RunLockedError(RuntimeError):
    """Another process is running the same part in the same results directory."""


class ResultsExistError(RuntimeError):
    """A finished run with other settings is in the directory a run would write to."""


@contextlib.contextmanager
def part_lock(out):
    """out/run.lock holds the pid of the process running the part; a second run of the same part
    refuses while that process lives. A lock left by a process that is gone is cleared, and so are
    the temporary files of checkpoint writes it left half-way."""
    path = os.path.join(out, 'run.lock')
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                with open(path) as fh:
                    pid = int(fh.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and process_alive(pid):
                raise RunLockedError(f'{out} is in use by process {pid} ({path}); wait for it to finish, or stop '
                                     f'that process; a lock of a process that is gone is cleared by itself')
            os.remove(path)
    else:
        raise RunLockedError(f'could not take the lock {path}; remove it if no run of this part is going on')
    with os.fdopen(fd, 'w') as fh:
        fh.write(str(os.getpid()))
    for name in os.listdir(out):  # with the lock held, a temporary file here is a dead run's half-written file
        if name.endswith('.tmp'):
            os.remove(os.path.join(out, name))
            print(f'removed {os.path.join(out, name)}, left half-written by a run that was stopped', flush=True)
    try:
        yield
    finally:
        if os.path.exists(path):
            os.remove(path)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True





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
        results = os.path.dirname(os.path.dirname(out))
        if not differ:
            print(f'{out}: its importance-sampled NLL covers {describe_images(saved["is_images"])}, not the '
                  f'{describe_images(cfg["is_images"])} asked; to recompute it from the model: python experiments.py '
                  f'eval {part} --quantity test_nll_is{saved["is_samples"]} --profile {profile}'
                  + (f' --precision {cfg["precision"]}' if cfg['precision'] != 'fp32' else '')
                  + (f' --results-dir {shlex.quote(results)}' if results != 'results' else '')
                  + ' --is-images N --keep --update', flush=True)
    if differ:
        raise ResultsExistError(f'{out} holds a finished run with other settings ({changes(saved, cfg, differ)}); it is kept as it '
                                f'is. To train this part with the new settings, {way_out}')
    changed = [f for f, digest in code_digest().items() if (done.get('code') or {}).get(f) != digest]
    if changed:
        raise ResultsExistError(f'{out} holds a finished run whose numbers came from another {" and ".join(changed)} '
                                f'than the one here now, so they are not this code\'s results. To train this part '
                                f'with your code, {way_out}')
    return done


# settings a finished run does not depend on: how the steps were executed, not what they computed (ours:
# compile_train's CUDA graphs run the same operations; a change of it mid-run is one line of run.log)
FINISHED_IGNORES = ('compile', 'compile_train', 'checkpoint_minutes')


def switches(is_images=None, compile_train=None):
    """The overrides of config that `all`, `run` and the notebooks share, without those left at None
    (the profile's setting); is_images 'all' is every test image."""
    out = {}
    if is_images is not None:
        out['is_images'] = None if isinstance(is_images, str) and is_images.strip().lower() == 'all' else is_images
    if compile_train is not None:
        out['compile_train'] = as_bool(compile_train, 'compile_train')
    return out


def describe_images(n):
    return 'all test images' if n is None else f'the first {n} test images'


EVAL_STOPPED = 3  # exit status of an `eval --minutes N` stopped at its time limit, with images left
PARTIAL = 'is_partial.pt'  # an importance-sampling pass in progress, resumed by a rerun (evaluate.PartialPass)

AUTO_SPEEDUP = 1.1  # 'auto' trains in bfloat16 only where it measures at least this much faster


def pick_precision(precision, part, profile, device, results_dir='results', fresh=False):
    """(precision, why) of a part's training. 'fp32', 'bf16' and 'fp16' are taken as asked. 'auto' is
    float16 on a CUDA GPU without bfloat16 tensor cores (config.gpu_precision) and float32 on any
    other GPU; on a CPU, the precision of the part's run already in results_dir (float32
    first), so that a rerun resumes or finds it; otherwise bfloat16 for a part with shown parity
    (BF16_PARITY) in the cpu or full profile, on a CPU with bfloat16 units, where a few training
    steps each way, in turns, measure it AUTO_SPEEDUP times faster; float32 otherwise."""
    if precision != 'auto':
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be auto or one of {", ".join(PRECISIONS)}, got {precision!r}')
        return precision, 'as asked'
    device = torch.device(device)
    started = [] if as_bool(fresh, 'fresh') else precisions_started(results_dir, part, profile)
    if device.type != 'cpu':
        if gpu_precision(device) == 'fp16':
            capability = '.'.join(map(str, torch.cuda.get_device_capability(device)))
            return 'fp16', f'fp16: CUDA compute capability {capability} has no bfloat16 tensor cores'
        return 'fp32', f'float32 on {device.type}'
    if started:
        return started[0], f'its run in {part_dir(results_dir, part, profile, started[0])}'
    if part not in BF16_PARITY or profile not in AUTO_PROFILES:
        return 'fp32', (f'float32: {part} has not shown bf16 parity' if part not in BF16_PARITY
                        else f'float32 in the {profile} profile')
    units = bf16_units()
    if not units:
        return 'fp32', 'float32: this CPU reports no bfloat16 units'
    speed = precision_speeds(part, profile, device)
    measured = f'{speed["bf16"]:.0f} against {speed["fp32"]:.0f} training images/s, measured in turns'
    if speed['bf16'] < AUTO_SPEEDUP * speed['fp32']:
        return 'fp32', f'float32: bf16 is not faster here ({measured})'
    return 'bf16', f'bf16: the CPU has {", ".join(units)}, {measured}, and {part} has shown parity'


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
    results_dir = student.results_for(results_dir, say=True)  # a student's code: results/mine
    device = pick_device(device)
    profile = pick_profile(profile, device)
    precision, why = pick_precision(precision, part, profile, device, results_dir, fresh)
    cfg = config(part, profile, precision=precision, **overrides, **switches(is_images, compile_train))
    out = part_dir(results_dir, part, profile, cfg['precision'])
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, name) for k, name in (('checkpoint', 'checkpoint.pt'), ('model', 'model.pt'),
                                                              ('metrics', 'metrics.json'), ('history', 'history.json'))}
    with part_lock(out):
        if fresh:
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
    atomic_save({k: to_host64(v) for k, v in per_image.items()}, os.path.join(out, 'per_image.pt'))
    figs = figures.sample_figures(part, nets, cfg, test_x, out)
    figs.update(figures.curve_figures(part, cfg, state['history'], out))
    write_json(paths['history'], state['history'])
    metrics = dict(part=part, title=TITLES[part], profile=profile, device=str(device),
                   hardware=describe_hardware(device), precision=cfg['precision'], epochs=state['epoch'],
                   steps=state['step'], train_seconds=round(state['train_seconds'], 1),
                   sittings=[dict(s, seconds=round(s['seconds'], 1)) for s in state['sittings']],
                   eval_seconds=round(time.time() - t0 + partial.earlier, 1), model=paths['model'], commit=git_commit(),
                   code=code_digest(), autoregress_step=state['history']['autoregress_step'], values=values,
                   figures=figs, config=cfg, **({'model_uncommitted': uncommitted} if uncommitted else {}))
    write_json(paths['metrics'], metrics, indent=1)
    partial.remove()
    if drop_carried(out):  # the storage policy: a finished run keeps its model file, not a checkpoint
        say(out, f'{part}: removed the carried checkpoint {os.path.join(out, "checkpoint.pack")} (git rm it with the finished run)')
    say(out, f'{part}: ' + ', '.join(f'{k} {v["value"]}' + (f' ± {v["stderr"]}' if v['stderr'] is not None else '')
                                     for k, v in values.items()) + f' (evaluation {metrics["eval_seconds"]:.0f} s)')
    return metrics



NOTEBOOKS = ('gaussian_vae.ipynb', 'pixelcnn.ipynb', 'binaryvae.ipynb')


def run_notebooks(profile='auto', results_dir='results', notebooks=NOTEBOOKS):
    """Execute the notebooks in place (papermill) with the given profile and results, so that
    they are saved with the outputs of those runs; a part not yet run is trained first."""
    import papermill
    root = os.path.dirname(os.path.abspath(__file__))
    for name in notebooks:
        path = os.path.join(root, name)
        print(f'executing {name} ({profile} profile, {results_dir})', flush=True)
        # the defaults of the parameters cell are not injected, so the saved notebook keeps profile = "auto"
        parameters = {k: v for k, v in (('profile', profile), ('results_dir', results_dir))
                      if v != {'profile': 'auto', 'results_dir': 'results'}[k]}
        papermill.execute_notebook(path, path, parameters=parameters or None, cwd=root,
                                   kernel_name='python3', progress_bar=False)
        strip_volatile(path)


def strip_volatile(path):
    """Remove what changes at every execution without changing an output (papermill's timings,
    execution timestamps), so that rerunning a notebook leaves it unmodified in git."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop('papermill', None)
    for cell in nb.cells:
        for key in ('papermill', 'execution'):
            cell.metadata.pop(key, None)
    nbformat.write(nb, path)


# ---------------------------------------------------------------------------------------------
# Time: estimates, and runs limited to a number of minutes

def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds // 60}m{seconds % 60:02d}s'


def check_parts(parts):
    """A list of part names, each known: checked before any work."""
    parts = [p.strip() for p in parts]
    if not parts or any(not p for p in parts):
        raise ValueError(f'--parts must name one or more parts, comma-separated; the parts are {", ".join(PARTS)}')
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f'unknown part(s) {", ".join(unknown)}; the parts are {", ".join(PARTS)}')
    return parts


# An epoch count asked for on the command line is checked before any work (our bounds, not the course's):
STEP_RATE_BOUND = 10_000  # training steps a second that no device reaches with these networks (each step is a
                          # forward pass, a backward pass and an Adam update, hundreds of kernels), so that
                          # epochs x steps per epoch / STEP_RATE_BOUND is a lower bound on the training time
UNASKED_HOURS = 24        # a run that this lower bound puts past a day needs --minutes
MAX_EPOCHS = 2 ** 53      # the largest count metrics.json records exactly for every JSON reader (doubles)
MNIST_TRAIN = 60_000      # images in MNIST's training set


def check_run_length(part, profile, epochs, minutes=None):
    """Refuse, before any work, a --minutes that is not a positive number, an epoch count below 1 or
    above MAX_EPOCHS, and, without --minutes, one whose training alone would take over UNASKED_HOURS
    even at STEP_RATE_BOUND steps a second; each message says how long the count would take."""
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f'--minutes must be a positive number, got {minutes!r}')
    if epochs is None:
        return
    cfg = config(part, profile, epochs=epochs)  # epochs below 1 are refused here
    per_epoch = math.ceil(min(cfg['train_images'] or MNIST_TRAIN, MNIST_TRAIN) / cfg['batch_size'])
    steps = epochs * per_epoch
    took = (f'{part} ({profile} profile) would train {steps:,} steps ({per_epoch:,} an epoch): at least '
            f'{describe_duration(steps // STEP_RATE_BOUND)} even at {STEP_RATE_BOUND:,} steps a second')
    if epochs > MAX_EPOCHS:
        raise ValueError(f'--epochs must be at most {MAX_EPOCHS:,} (2^53, the largest count every JSON reader '
                         f'holds exactly), got {epochs:,}; {took}')
    if minutes is None and steps // STEP_RATE_BOUND > 3600 * UNASKED_HOURS:
        raise ValueError(f'--epochs {epochs:,}: {took}, more than {UNASKED_HOURS} hours. Ask for fewer epochs, or '
                         f'add --minutes N to train until that time limit (the run stops cleanly; rerun to resume)')


def describe_duration(seconds):
    """A whole number of seconds, however large, in hours, days or years."""
    if seconds < 2 * 86400:
        return f'{seconds / 3600:.1f} hours'
    if seconds < 2 * 31_557_600:
        return f'{seconds // 86400:,} days'
    years = seconds // 31_557_600
    return f'{years:,} years' if years < 10 ** 6 else f'10^{len(str(years)) - 1} years'


def estimate_all(profile, parts, device, results_dir='results', fresh=False, precision='auto', tolerant=False,
                 **overrides):
    """{part: estimate, with its 'precision'} for the parts (precision 'auto': pick_precision's
    choice for each), 0 s for those already done; prints a table. tolerant: a part whose estimate
    raises (a student's model that does not run yet) is listed at 0 s; running it says why.
    overrides: settings of config."""
    parts = check_parts(parts)
    print(f'estimating the time of {len(parts)} parts on {device} ({profile} profile)...', flush=True)
    expected = {}
    for part in parts:
        try:
            e = expected[part] = estimate_part(part, profile, device, results_dir, fresh, precision, **overrides)
        except Exception as err:  # a student's model that does not run yet: `all` runs it anyway and says why
            if not tolerant:
                raise
            print(f'  {part:12s} cannot be estimated ({type(err).__name__}: {err}'.splitlines()[0] + ')', flush=True)
            expected[part] = dict(NOT_ESTIMATED, precision=precision if precision != 'auto' else 'fp32')
            continue
        rates = ', '.join(f'{label} {e[k]:.0f}/s' for k, label in (
            ('train_images_s', 'training images'), ('autoregressive_images_s', 'with the PixelCNN on'),
            ('is_samples_s', 'importance samples')) if e[k])
        print(f'  {part:12s} {e["precision"]:4s} ~{fmt_time(e["seconds"]):>7s}  {rates or "done"}', flush=True)
    print(f'  {"total":17s} ~{fmt_time(sum(e["seconds"] for e in expected.values())):>7s}', flush=True)
    return expected


NOT_ESTIMATED = dict(seconds=0.0, train_images_s=None, autoregressive_images_s=None, is_samples_s=None)


def estimate_part(part, profile, device, results_dir, fresh, precision, **overrides):
    """One part's estimate with its 'precision' (0 s when it has finished)."""
    chosen = pick_precision(precision, part, profile, device, results_dir, fresh)[0]
    out = part_dir(results_dir, part, profile, chosen)
    if not fresh and os.path.exists(os.path.join(out, 'metrics.json')):
        return dict(NOT_ESTIMATED, precision=chosen)
    measured = estimate(part, config(part, profile, precision=chosen, **overrides), device, None if fresh else out)
    return dict(measured, precision=chosen)


def run_all(profile='auto', parts=None, device=None, fresh=False, results_dir='results', progress=True,
            precision='auto', minutes=None, is_images=None, compile_train=None, jobs=1):
    """Every part (or the given ones) in one profile, with time estimates; then the summary. With
    minutes, stop cleanly once that much time has passed (a checkpoint at the current step; rerun
    the same command, on this machine or another after pack/unpack, to resume). is_images,
    compile_train: as run_part's. jobs > 1: that many parts at once, each a process of its own on
    the same device (run_jobs). A part that cannot run (refused, or its code raises) does not stop
    the others: the table at the end says what ran, what was skipped or failed and why, and
    PartsFailedError follows it. Returns True when every part is done (False when stopped by
    minutes). A student's code: results 'results' means results/mine (student.results_for)."""
    fresh = as_bool(fresh, 'fresh')
    results_dir = student.results_for(results_dir, say=True)
    device = pick_device(device)
    profile = pick_profile(profile, device)
    parts = check_parts(parts) if parts is not None else list(PARTS)
    if minutes is not None and not minutes > 0:
        raise ValueError(f'--minutes must be a positive number, got {minutes!r}')
    jobs = as_int(jobs, 'jobs', minimum=1)
    extra = switches(is_images, compile_train)
    estimates = estimate_all(profile, parts, device, results_dir, fresh, precision, tolerant=True, **extra)
    plan = dict(profile=profile, device=device, fresh=fresh, results_dir=results_dir, extra=extra,
                stop_at=time.time() + 60 * minutes if minutes is not None else None)  # each slice trains a step
    t_start = time.time()
    outcomes = {}
    if jobs == 1:
        stopped = run_serial(parts, estimates, plan, progress, t_start, outcomes)
    else:
        stopped = run_jobs(parts, estimates, plan, jobs, outcomes)
    if stopped:
        again = ' '.join(shlex.quote(a) for a in sys.argv) if sys.argv[0].endswith('experiments.py') else ''
        print(f'\nstopped after {fmt_time(time.time() - t_start)} (the --minutes limit) before {", ".join(stopped)} '
              f'finished; run the same command again to resume' + (f': {again}' if again else ''), flush=True)
        return False
    summaries = []
    for chosen in sorted({e['precision'] for e in estimates.values()}, key=PRECISIONS.index):
        if os.path.isdir(run_dir(results_dir, profile, chosen)):
            write_summary(results_dir, profile, chosen)  # every part present, not only those run now
            summaries.append(os.path.join(run_dir(results_dir, profile, chosen), 'summary.md'))
    print('\n' + outcomes_table(outcomes), flush=True)
    failed = [p for p, (outcome, _) in outcomes.items() if outcome in ('skipped', 'failed')]
    if failed:
        others = f'; summary of the others in {" and ".join(summaries)}' if summaries else ''
        raise PartsFailedError(f'{len(failed)} of {len(parts)} parts did not run ({", ".join(failed)}); the table '
                               f'above says why{others}')
    print(f'\nall parts done in {fmt_time(time.time() - t_start)}; summary in {" and ".join(summaries)}', flush=True)
    return True


class PartsFailedError(RuntimeError):
    """`all` ran every part it could, and some could not run (skipped or failed)."""


REFUSALS = (ResultsExistError, RunLockedError, CheckpointError)  # the engine declined to run a part: nothing was done


def run_one(part, out, **kwargs):
    """(outcome, why) of one part in `all`: 'ran' (trained and evaluated now), 'done' (finished
    before), 'stopped' (at the time limit), 'skipped' (refused, with the reason) or 'failed' (an
    error, named; its traceback is printed)."""
    metrics = os.path.join(out, 'metrics.json')
    before = os.path.getmtime(metrics) if os.path.exists(metrics) else None
    try:
        m = run_part(part, **kwargs)
    except REFUSALS as e:
        print(f'{part}: skipped: {e}', flush=True)
        return 'skipped', str(e)
    except Exception as e:  # a student's models.py or losses.py may raise anything: the next part still runs
        import traceback
        traceback.print_exc()
        return 'failed', f'{type(e).__name__}: {e}'.splitlines()[0]
    if m is None:
        return 'stopped', 'at the time limit, with a checkpoint'
    now = os.path.getmtime(metrics) if os.path.exists(metrics) else None
    values = ', '.join(f'{q} {v["value"]:.2f}' for q, v in (m.get('values') or {}).items()
                       if v.get('stderr') is not None)
    return ('ran' if now != before else 'done'), values


def outcomes_table(outcomes):
    """What `all` did with each part, one line each."""
    lines = [f'{"part":12s} {"outcome":8s} why / numbers']
    lines += [f'{part:12s} {outcome:8s} {why}' for part, (outcome, why) in outcomes.items()]
    return '\n'.join(lines)


def run_parts(parts, jobs=1, profile='auto', device=None, fresh=False, results_dir='results', progress=True,
              precision='auto', is_images=None, compile_train=None):
    """{part: metrics} of the parts (what the notebooks call): one after the other in this process,
    or with jobs > 1 that many at once as separate processes (run_jobs; their output in job.log)."""
    jobs = as_int(jobs, 'jobs', minimum=1)
    kw = dict(profile=profile, device=device, fresh=fresh, results_dir=results_dir, precision=precision,
              is_images=is_images, compile_train=compile_train)
    if jobs == 1:
        return {part: run_part(part, progress=progress, **kw) for part in check_parts(parts)}
    device = pick_device(device)
    profile = pick_profile(profile, device)
    fresh = as_bool(fresh, 'fresh')
    chosen = {p: dict(precision=pick_precision(precision, p, profile, device, results_dir, fresh)[0])
              for p in check_parts(parts)}
    run_jobs(list(chosen), chosen, dict(profile=profile, device=device, fresh=fresh, results_dir=results_dir,
                                        extra=switches(is_images, compile_train), stop_at=None), jobs)
    return {p: read_json(os.path.join(part_dir(results_dir, p, profile, c['precision']), 'metrics.json'))
            for p, c in chosen.items()}


def run_serial(parts, estimates, plan, progress, t_start, outcomes):
    """The parts one after the other in this process, each one's (outcome, why) into outcomes;
    returns [the part stopped by the time limit] or []."""
    expected, fresh = {p: e['seconds'] for p, e in estimates.items()}, plan['fresh']
    for i, part in enumerate(parts):
        print(f'\n[{i + 1}/{len(parts)}] {part}: {TITLES[part]} -- this part ~{fmt_time(expected[part])}, all '
              f'remaining parts ~{fmt_time(sum(expected[p] for p in parts[i:]))} (elapsed '
              f'{fmt_time(time.time() - t_start)})', flush=True)
        stop_at, precision = plan['stop_at'], estimates[part]['precision']
        if stop_at is not None and time.time() > stop_at:
            return [part]
        outcomes[part] = run_one(part, part_dir(plan['results_dir'], part, plan['profile'], precision),
                                 profile=plan['profile'], device=plan['device'], fresh=fresh,
                                 results_dir=plan['results_dir'], progress=progress, stop_at=stop_at,
                                 precision=precision, **plan['extra'])
        if outcomes[part][0] == 'stopped':
            return [part]
        fresh = False  # --fresh applies once per part, not to a resumed slice
    return []


JOB_LOG = 'job.log'  # in a part's directory: the output of its process under --jobs
POLL_SECONDS = 0.2


def job_command(part, precision, plan):
    """The `experiments.py run` command line of one part under --jobs: the settings of `all`, the
    time left of --minutes, no progress bars (the output goes to a file)."""
    cmd = [sys.executable, os.path.abspath(__file__), 'run', part, '--profile', plan['profile'], '--device',
           str(plan['device']), '--precision', precision, '--results-dir', plan['results_dir'], '--no-progress']
    if plan['fresh']:
        cmd.append('--fresh')
    if plan['stop_at'] is not None:
        cmd += ['--minutes', repr(max(1e-6, (plan['stop_at'] - time.time()) / 60))]
    if 'is_images' in plan['extra']:
        cmd += ['--is-images', str(plan['extra']['is_images'] or 'all')]
    if 'compile_train' in plan['extra']:
        cmd.append('--compile-train' if plan['extra']['compile_train'] else '--no-compile-train')
    return cmd


def launch(part, precision, plan):
    """Start one part's process; its output is appended to <part dir>/job.log. Returns (process, log path, start)."""
    out = part_dir(plan['results_dir'], part, plan['profile'], precision)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, JOB_LOG)
    cmd = job_command(part, precision, plan)
    with open(log, 'a') as fh:
        fh.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")}  {" ".join(shlex.quote(c) for c in cmd)}\n')
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=os.getcwd(),
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))
    print(f'{part}: started as process {proc.pid} ({precision}); output in {log}', flush=True)
    return proc, log, time.time()


def run_jobs(parts, estimates, plan, jobs, outcomes=None):
    """Up to `jobs` parts at once, each `experiments.py run` in a process of its own on the same
    device, in the order given. Waits for all; returns the parts stopped by the time limit; each
    part's (outcome, why) goes into outcomes, or, without outcomes, PartsFailedError names each
    part whose process failed, with the end of its log."""
    waiting, running, stopped, failed = list(parts), {}, [], []
    print(f'\n{len(parts)} parts, {min(jobs, len(parts))} at a time as separate processes on {plan["device"]}',
          flush=True)
    while waiting or running:
        while waiting and len(running) < jobs:
            part = waiting.pop(0)
            if plan['stop_at'] is not None and time.time() > plan['stop_at']:
                stopped.append(part)
            else:
                running[part] = launch(part, estimates[part]['precision'], plan)
        time.sleep(POLL_SECONDS)
        for part, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[part]
            outcome = job_outcome(part, proc.returncode, log, estimates[part]['precision'], plan)
            print(f'{part}: {outcome} after {fmt_time(time.time() - t0)}', flush=True)
            (stopped if outcome == 'stopped' else failed if outcome.startswith('failed') else []).append(part)
            if outcomes is not None:
                outcomes[part] = (outcome.split(' ')[0], f'{outcome} (its output: {log})')
    if failed and outcomes is None:
        logs = [os.path.join(part_dir(plan['results_dir'], p, plan['profile'], estimates[p]['precision']), JOB_LOG)
                for p in failed]
        raise PartsFailedError('; '.join(f'{p} failed (its output: {log})' for p, log in zip(failed, logs))
                               + '; the other parts ran to their end; no summary written')
    return stopped


def job_outcome(part, returncode, log, precision, plan):
    """'done', 'stopped' (the time limit, a checkpoint to resume from) or 'failed (...)' with the end of the log."""
    if returncode == 0:
        done = os.path.exists(os.path.join(part_dir(plan['results_dir'], part, plan['profile'], precision),
                                           'metrics.json'))
        return 'done' if done else 'stopped'
    with open(log, errors='replace') as fh:
        tail = [line.rstrip() for line in fh.readlines()[-3:]]
    return f'failed (exit status {returncode}): ' + ' / '.join(tail)


# ---------------------------------------------------------------------------------------------
# The command line

def add_commands(sub):
    """The subcommands and their own options: (all, run, eval, estimate, summary, compare, notebooks,
    verify, list, pack, figures, unpack, carry)."""
    a = sub.add_parser('all', help='run every part (or --parts), then write the summary')
    a.add_argument('--jobs', type=int, default=1,
                   help='run N parts at once, each a process of its own on the same device, its output in '
                        '<results-dir>/<profile>/<part>/job.log; the summary follows when all have ended')
    r = sub.add_parser('run', help='run one part')
    r.add_argument('part', choices=list(PARTS))
    r.add_argument('--epochs', type=int, default=None, help="train this many epochs instead of the profile's")
    e = sub.add_parser('eval', help='recompute one number from <run dir>/<part>/model.pt; the last line is the value')
    e.add_argument('part', choices=list(PARTS))
    e.add_argument('--quantity', required=True, help='test_elbo, test_elbo_mc, test_nll, test_nll_is<M>, kl, active_units')
    e.add_argument('--keep', action='store_true', help="add the per-image values to the part's per_image.pt")
    e.add_argument('--update', action='store_true', help='write the recomputed value into metrics.json')
    e.add_argument('--is-images', type=int, default=None,
                   help='importance-sample the first N test images instead of the number the run used')
    e.add_argument('--minutes', type=float, default=None,
                   help='importance sampling only: stop cleanly after this many minutes, the images done saved '
                        'beside the model; the same command resumes there (exit status 3 while images are left)')
    es = sub.add_parser('estimate', help='measure throughput and estimate the time of each part')
    s = sub.add_parser('summary', help='rewrite summary.md and summary.json of every run directory')
    cp = sub.add_parser('compare', help="your finished parts (results/mine) beside the reference's, paired over the "
                                        'same test images; suspects among the course_api tests where yours is worse')
    nb = sub.add_parser('notebooks', help='execute the three notebooks in place, saving the outputs of the runs')
    v = sub.add_parser('verify', help="run every summary.json `reproduce` command and compare with the reported value")
    v.add_argument('--parts', default=None, help='comma-separated parts (default: every part in the summaries)')
    v.add_argument('--runs', default=None, help='comma-separated run directories, e.g. cpu,cpu-bf16 (default: all)')
    v.add_argument('--quantities', default=None, help='comma-separated quantities, e.g. test_elbo,kl (default: all)')
    ls = sub.add_parser('list', help='print the parts, their settings and the deviations from the course framework')
    ls.add_argument('--profile', default='full', choices=list(PROFILES))
    pk = sub.add_parser('pack', help="write a profile's results into DIR as packs of at most 8 files of 16 MiB")
    pk.add_argument('dir')
    pk.add_argument('--parts', default=None, help="comma-separated parts to pack (default: the profile's whole "
                                                  'directory); what exceeds one pack goes to DIR/pack-1, pack-2, ...')
    pk.add_argument('--leave-out', default=None,
                    help='comma-separated file names not to pack, e.g. model.pt,checkpoint.pt')
    pk.add_argument('--max-files', type=int, default=PACK_FILES, help='files in one pack, its manifest included')
    pk.add_argument('--piece-mib', type=float, default=PACK_BYTES / 2 ** 20, help='MiB of one piece at most')
    fg = sub.add_parser('figures', help="draw a finished part's figures again from its model.pt and history.json")
    fg.add_argument('part', choices=list(PARTS))
    up = sub.add_parser('unpack', help='restore what pack wrote into DIR')
    up.add_argument('dir', nargs='+', help='one or more directories written by pack (or holding its pack-* '
                                           'directories), in any order')
    ca = sub.add_parser('carry', help="each unfinished part's checkpoint.pt as <part>/checkpoint.pack: pieces of at "
                                      'most 16 MiB that git can hold between sittings; a rerun restores it')
    ca.add_argument('--parts', default=None, help='comma-separated parts (default: every unfinished part with a checkpoint)')
    ca.add_argument('--piece-mib', type=float, default=PACK_BYTES / 2 ** 20, help='MiB of one piece at most')
    return a, r, e, es, s, cp, nb, v, ls, pk, fg, up, ca


def add_shared_options(a, r, e, es, s, cp, nb, v, ls, pk, fg, up, ca):
    """The options several subcommands share: profile, precision, results directory, device, ..."""
    for p in (a, r):
        p.add_argument('--minutes', type=float, default=None,
                       help='stop cleanly after this many minutes (rerun to resume); needed for an --epochs count that '
                            'would train longer than a day')
    for p in (a, r, es):
        p.add_argument('--is-images', default=None,
                       help="importance-sample the first N test images instead of the profile's (full: all 10,000; "
                            "cpu: 1,000); 'all': every test image")
    for p in (a, r):
        p.add_argument('--compile-train', action=argparse.BooleanOptionalAction, default=None,
                       help='train through torch.compile (mode reduce-overhead: CUDA graphs on CUDA), falling back to '
                            'eager if it fails; may change between sittings of a run (default: off)')
    for p in (a, es):
        p.add_argument('--parts', default=None, help='comma-separated parts (default: all of them)')
    for p in (a, r, e, es, nb, pk, fg, ca):
        p.add_argument('--profile', default='auto', choices=['auto', *PROFILES])
    for p in (a, r, es):
        p.add_argument('--precision', default='auto', choices=['auto', *PRECISIONS],
                       help='bf16 / fp16: training forward passes in bfloat16 / float16 with loss scaling (evaluation '
                            'stays float32), results in <results-dir>/<profile>-bf16 / -fp16; auto (default): fp16 on a '
                            'CUDA GPU without bfloat16 tensor cores, bf16 for the parts that have shown parity, '
                            'on a CPU with bfloat16 units where it measures faster, float32 otherwise')
    for p in (e, pk, fg, ca):
        p.add_argument('--precision', default='fp32', choices=PRECISIONS,
                       help="the run's training precision: fp32 (results in <results-dir>/<profile>), bf16 or fp16 "
                            '(<results-dir>/<profile>-bf16, -fp16)')
    for p in (a, r):
        p.add_argument('--fresh', action='store_true', help='discard existing checkpoints and results of the part(s)')
        p.add_argument('--no-progress', action='store_true', help='no progress bars')
    for p in (a, r, e, es, s, nb, v, pk, up, fg, cp, ca):
        p.add_argument('--results-dir', default='results')
    for p in (a, r, e, es, fg):
        p.add_argument('--device', default=None, help='cuda, mps or cpu (default: the first available)')


def parser():
    """The command line's parser."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '))
    sub = parser.add_subparsers(dest='command', required=True)
    add_shared_options(*add_commands(sub))
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        command(args)
    except (CheckpointError, NonFiniteLossError, ResultsExistError, RunLockedError, PartsFailedError, ValueError,
            OSError) as err:
        sys.exit(f'error: {err}')


def command(args):
    """Carry out one parsed command line."""
    if args.command == 'all':
        parts = args.parts.split(',') if args.parts is not None else None
        run_all(args.profile, parts, args.device, args.fresh, args.results_dir, not args.no_progress, args.precision,
                args.minutes, args.is_images, args.compile_train, args.jobs)
    elif args.command == 'run':
        extra = {'epochs': args.epochs} if args.epochs is not None else {}
        check_run_length(args.part, pick_profile(args.profile, pick_device(args.device), quiet=True), args.epochs,
                         args.minutes)
        run_part(args.part, args.profile, args.device, args.fresh, args.results_dir, not args.no_progress,
                 stop_at=time.time() + 60 * args.minutes if args.minutes is not None else None,
                 precision=args.precision, is_images=args.is_images, compile_train=args.compile_train, **extra)
    elif args.command == 'eval':
        try:
            eval_command(args.part, args.quantity, args.results_dir, args.device, args.profile, args.precision,
                         args.keep, args.update, args.is_images, args.minutes)
        except EvaluationStopped as stop:
            print(stop, flush=True)
            sys.exit(EVAL_STOPPED)
    elif args.command == 'estimate':
        device = pick_device(args.device)
        estimate_all(pick_profile(args.profile, device), args.parts.split(',') if args.parts is not None
                     else list(PARTS), device, student.results_for(args.results_dir), precision=args.precision,
                     **switches(args.is_images))
    elif args.command == 'summary':
        write_summary(student.results_for(args.results_dir, say=True))
    elif args.command == 'compare':
        print(versus.versus_markdown(args.results_dir), end='')
    elif args.command == 'verify':
        checked = verify(args.results_dir, args.parts.split(',') if args.parts else None,
                         profiles=args.runs.split(',') if args.runs else None,
                         quantities=args.quantities.split(',') if args.quantities else None)
        if any(c['ok'] is False for c in checked):
            sys.exit(1)
    elif args.command == 'notebooks':
        run_notebooks(args.profile, args.results_dir)
    elif args.command == 'list':
        list_settings(args.profile)
    elif args.command == 'pack':
        pack(args.dir, pick_profile(args.profile, pick_device(None)), args.precision, args.results_dir,
             check_parts(args.parts.split(',')) if args.parts is not None else None, args.max_files,
             int(args.piece_mib * 2 ** 20), tuple(args.leave_out.split(',')) if args.leave_out else ())
    elif args.command == 'figures':
        redraw(args.part, args.results_dir, args.device, args.profile, args.precision)
    elif args.command == 'unpack':
        unpack(args.dir, args.results_dir)
    elif args.command == 'carry':
        carry_parts(pick_profile(args.profile, pick_device(None)), args.precision, args.results_dir,
                    check_parts(args.parts.split(',')) if args.parts is not None else None, int(args.piece_mib * 2 ** 20))


def carry_parts(profile, precision='fp32', results_dir='results', parts=None, piece_bytes=PACK_BYTES):
    """`carry` the checkpoint of each of `parts` (default: every unfinished part with one) in
    results_dir/<profile>[-<precision>]; returns the manifests written."""
    found = [p for p in PARTS if os.path.exists(os.path.join(part_dir(results_dir, p, profile, precision), 'checkpoint.pt'))
             and not os.path.exists(os.path.join(part_dir(results_dir, p, profile, precision), 'metrics.json'))]
    if parts is None and not found:
        raise ValueError(f'no unfinished part in {run_dir(results_dir, profile, precision)} has a checkpoint: nothing to carry')
    return [carry(part_dir(results_dir, p, profile, precision), piece_bytes) for p in (found if parts is None else parts)]


if __name__ == '__main__':
    main()
