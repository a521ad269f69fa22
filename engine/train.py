"""Training for CSE 599i Homework 2: the optimiser, the training loop and its checkpoints. One loop
trains every part; engine/config.py says what each part is, engine/objectives.py what it minimises,
engine/modelfiles.py how its files are read back.

The loop: resume (from out/checkpoint.pt, exactly: model, optimiser, data order and noise
generators), then per epoch start_epoch (learning-rate drop, autoregression switched on, data
order), step per batch, end_of_epoch (test loss on the monitor images, run.log line,
checkpoint). Nothing non-finite is ever written: the loss and the gradient norm are checked before
the optimiser step on the CPU, and on a GPU every SYNC_EVERY steps and before every checkpoint
(reading them every step would stall the GPU's queue).
"""
import contextlib
import math
import os
import time

import torch

from engine import data, objectives, student
from engine.config import changes, describe_hardware, model_spec, settings_differ
from engine.evaluate import bar, cuda_numerics, noise, test_subset
from engine.files import atomic_save
from engine.modelfiles import (RESUME_ADVICE, CheckpointError, check_code, earlier_sittings, load_file, load_state,
                               model_record, model_state, on_cpu)
from engine.objectives import check_training_data, kl_weight, objective

# CUDA in training: deterministic cuDNN kernels without benchmark mode (so a resumed run ends with
# the numbers of an unbroken one), TF32 allowed (never in evaluation); evaluate.cuda_numerics
TRAINING_TF32 = True


SYNC_EVERY = 50  # steps between reads of the loss and finiteness on a GPU (every step on the CPU)


_DATA = {}


def load_data(cfg, train):
    """(N, 1, 28, 28) float32 images, cached per process; the first train_images / all test images."""
    key = (cfg['data'], train)
    if key not in _DATA:
        _DATA[key] = data.load_mnist(train) if cfg['data'] == 'mnist' else data.load_binarized_mnist(train)
    x = _DATA[key]
    return x[:cfg['train_images']] if train else x


def adam(params, lr):
    """Adam; the fused kernel where the installed torch has it for the parameters' device (CUDA;
    the CPU from torch 2.4): the same update in one pass over all parameters, instead of a dozen
    small tensor operations per parameter. Elsewhere (MPS, older torch) the plain one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def build(spec, device):
    """The part's networks, {name: models.<class>(**kwargs)} on `device` (student.construct: a class written
    to the course's API gets the course's arguments only)."""
    return {name: student.construct(cls, kwargs).to(device) for name, (cls, kwargs) in spec.items()}


def init_output_bias(nets, cfg, device):
    """Gaussian VAE: start the decoder's per-pixel output bias at the logit of the mean training
    image, so that g(z) starts at the mean digit. From a bias of 0 (every pixel 0.5), the
    reconstruction term ||x - g(z)||^2 / (2 sigma^2) at sigma = 0.03 drives most logits far
    below zero in the first steps, where the sigmoid's slope vanishes: the decoder then outputs
    black images and neither its pixels nor the latent recover (seen in training: test -ELBO stuck
    at the all-black level, KL falling to 0). Starting at the mean digit keeps every logit where
    its gradient is alive. Only the initial values change; a checkpoint's weights replace them."""
    if cfg['model'] != 'gaussian_vae' or not cfg['init_output_bias']:
        return
    bias = getattr(nets['decoder'], 'bias', None)
    if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (28, 28):
        raise student.NeedsExtrasError("init_output_bias needs the decoder's per-pixel output bias, "
                                       "models.GaussianVAEDecoder.bias of shape (28, 28), which the one here has not")
    mean = load_data(cfg, train=True).mean(0)[0].clamp(1e-3, 1 - 1e-3)  # (28, 28)
    with torch.no_grad():
        nets['decoder'].bias.copy_(torch.logit(mean).to(device))


def loss_scaler(precision, device):
    """float16 training's gradient scaler (torch.amp.GradScaler), None for the other precisions.
    The loss is multiplied by a scale S before the backward pass, so that small gradients survive
    float16's range, and the gradients are divided by S before the step; a step whose gradients
    overflowed is skipped and S halved, and S doubles after 2000 steps without overflow. With
    Adam's fused kernel the skip is decided on the device, without reading it on the host."""
    if precision != 'fp16':
        return None
    device = torch.device(device)
    make = getattr(torch.amp, 'GradScaler', None)
    if make is not None:
        return make(device.type)
    if device.type == 'cuda':
        return torch.cuda.amp.GradScaler()
    raise ValueError(f'precision fp16 on {device.type} needs torch >= 2.3 (torch.amp.GradScaler); this is torch '
                     f'{torch.__version__}: use --precision fp32 or bf16')


# The settings' floats (free bits' lambda, sigma) compiled in as constants, each value its own graph:
# where torch.compile makes a float that changed between calls a symbol instead, a use of it under
# clamp can keep an earlier value, with no error (pytorch/pytorch#194976, #197889; seen in torch
# 2.14.1: 6e-freebits compiled after 6e-warmup in one process trained with another lambda). Older
# torch, without the switch, always compiled floats in as constants. Read when a step compiles, not
# at import: importing torch._dynamo takes seconds, which every command would pay.
def constant_floats():
    return dict(specialize_float=True) if hasattr(torch._dynamo.config, 'specialize_float') else {}


def captured(fn, device):
    """fn through torch.compile, for the training step: one fused graph per forward and backward
    instead of hundreds of small kernels, and on CUDA replayed as a CUDA graph (mode
    'reduce-overhead'), which removes the per-kernel launch cost that bounds small models there.
    The same function (tests compare it with eager); if compilation fails it says so and runs fn.
    beta is passed as a tensor, so that a KL warm-up does not recompile at every step: one tensor
    on the device, refilled in place at each step (no tensor built from host data)."""
    fast = [torch.compile(fn, mode='reduce-overhead' if torch.device(device).type == 'cuda' else None)]
    weight = torch.zeros((), device=device)  # beta

    def call(nets, cfg, x, eps, beta):
        beta = weight.fill_(beta)
        if fast[0] is not None:
            try:
                with torch._dynamo.config.patch(**constant_floats()):
                    return fast[0](nets, cfg, x, eps, beta)
            except Exception as err:  # any compiler failure: eager computes the same
                print(f'torch.compile of the training objective failed ({type(err).__name__}: {str(err)[:200]}); '
                      f'training eagerly', flush=True)
                fast[0] = None
        return fn(nets, cfg, x, eps, beta)
    return call


def fresh_compiler(cfg):
    """Start the part with torch.compile's caches empty, when it compiles anything (the training
    objective, or importance sampling on the CPU). TorchDynamo keeps compiled code per Python
    function across the parts of one process (`all`, a notebook): every part's networks and
    settings add graphs to those of the objective, and a function that holds
    torch._dynamo.config.recompile_limit of them (8) runs eagerly from then on, with only a log
    warning (the parts of `all --compile-train` in a row: from 6e-freebits' autoregressive phase on)."""
    if cfg['compile_train'] or cfg['compile']:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Stopping on a non-finite number, and the run log


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss."""


def say(out, message):
    """Print a line and append it, time-stamped, to out/run.log (the part's run log)."""
    print(message, flush=True)
    with open(os.path.join(out, 'run.log'), 'a') as fh:
        fh.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")}  {message}\n')


def total_grad_norm(params):
    """The Euclidean norm of every gradient together (parameters without one are skipped), on the
    device: NaN or inf as soon as one entry is."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def stop_message(part, where, path, saved, what, first=False):
    """Why a run stops on a non-finite number, where, which checkpoint is kept, and the suspect: at the
    first step (first=True), before any update, the model or the loss code; later, the learning rate."""
    kept = (f'the last good checkpoint, {path}, holds epoch {saved["epoch"]} + {saved["batch"]} batches and was '
            f'not overwritten; rerunning resumes from it' if saved else
            f'no checkpoint had been written yet ({path} does not exist); a rerun starts from scratch')
    advice = ('This was the first step, before any parameter was updated, so the learning rate is not the cause: '
              'look at the networks of models.py and the losses of losses.py (pytest -m course_api checks both).'
              if first else 'A rerun with the same settings meets the same numbers: lower the learning rate (lr) or '
                             'use --precision fp32 if this was a bf16 or fp16 run.')
    return f'part {part}: {what} at {where}; training stopped, nothing non-finite was saved: {kept}. {advice}'


# ---------------------------------------------------------------------------------------------
# The training loop


def new_history():
    """Per-iteration training curves and per-epoch test points, as history.json stores them."""
    return dict(step=[], loss=[], recon=[], kl=[], objective=[], beta=[], test_epoch=[], test_step=[], test_loss=[],
                test_kl=[], autoregress_step=None, skipped=[])  # skipped: steps whose update loss scaling skipped


class Checkpointing:
    """Training's checkpoint, out/checkpoint.pt: resumed only with this run's settings and code,
    written only with finite parameters (a part of Training)."""

    def resume(self):
        """Load out/checkpoint.pt if there is one; its settings must be those of this run."""
        if not os.path.exists(self.path):
            return
        ck = load_file(self.path)
        missing = [k for k in ('config', 'models', 'optimizer', 'rng', 'epoch') if k not in ck]
        if missing:
            raise CheckpointError(f'{self.path} is not a checkpoint of this project (it lacks {", ".join(missing)}); '
                                  f'rerun with --fresh (fresh=True) or delete it')
        differ = settings_differ(ck['config'], self.cfg)
        if differ:
            raise CheckpointError(f'{self.path} was trained with other settings '
                                  f'({changes(ck["config"], self.cfg, differ, ("in it", "now"))}); '
                                  f'rerun with --fresh (fresh=True), delete it, or use another --results-dir')
        check_code(ck, self.path)
        for name, net in self.nets.items():
            load_state(net, model_state(ck['models'][name]), f'part {self.part}: {self.path} ({name})', RESUME_ADVICE)
        try:
            self.opt.load_state_dict(ck['optimizer'])
            if self.scaler is not None:
                self.scaler.load_state_dict(ck['scaler'])
        except (ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"{self.path}: its optimizer state does not fit this part's parameters ({e}); "
                                  f'it is kept as it is. {RESUME_ADVICE}') from e
        self.shuffle.set_state(ck['rng']['shuffle'])
        torch.set_rng_state(ck['rng']['torch'])
        try:
            self.noise.set_state(ck['rng']['noise'])
        except RuntimeError:  # a generator state of another device type (e.g. saved on CUDA, resumed on CPU)
            say(self.out, f'{self.part}: the checkpoint comes from another device; eps draws restart from the seed')
        self.state = {k: ck[k] for k in self.state if k != 'sittings'}
        self.state['sittings'] = earlier_sittings(ck)
        self.saved = dict(epoch=self.state['epoch'], batch=self.state['batch'])
        say(self.out, f'{self.part}: resuming from {self.path} at epoch {self.state["epoch"]}, batch '
                      f'{self.state["batch"]}, step {self.state["step"]}')
        if self.state['epoch'] > self.cfg['epochs']:
            raise CheckpointError(f'{self.path} has trained {self.state["epoch"]} epochs, more than the '
                                  f'{self.cfg["epochs"]} asked for; ask for at least {self.state["epoch"]} '
                                  f'epochs or rerun with --fresh')

    def save(self):
        """Write the checkpoint, after reading every pending number: never a non-finite model."""
        self.flush()
        if not all(torch.isfinite(p).all() for p in self.params):
            where = self.where(self.state['batch'], self.state['step'])
            raise NonFiniteLossError(stop_message(self.part, where, self.path, self.saved, 'a parameter is not finite'))
        rng = dict(shuffle=self.shuffle.get_state(), noise=self.noise.get_state(), torch=torch.get_rng_state())
        atomic_save(dict(part=self.part, config=self.cfg, models=model_record(self.nets, model_spec(self.cfg)),
                         optimizer=on_cpu(self.opt.state_dict()), rng=rng, code=student.code_digest(),
                         scaler=None if self.scaler is None else self.scaler.state_dict(), **self.state), self.path)
        self.saved = dict(epoch=self.state['epoch'], batch=self.state['batch'])


class Stepping:
    """Training's optimiser step, and the per-step numbers it reads from the device in batches
    (every step on the CPU), stopping at the first non-finite one (a part of Training)."""

    def step(self, x_train, b, steps_per_epoch):
        """One optimiser step on batch b of the epoch's data order."""
        cfg, state = self.cfg, self.state
        bs = cfg['batch_size']
        x = x_train[self.order[b * bs:(b + 1) * bs]]  # (B, 1, 28, 28)
        eps = noise(self.noise, (len(x), student.LATENT_DIMS)) if cfg['model'] != 'pixelcnn' else None
        # KL warm-up, counted in steps: beta rises over kl_warmup epochs from kl_warmup_start
        beta = kl_weight(state['step'], cfg['kl_warmup'] * steps_per_epoch, cfg['kl_warmup_start'] * steps_per_epoch)
        loss, recon, kl = self.objective(self.nets, cfg, x, eps, beta)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)  # the gradients, and their norm below, at their true scale
        self.pending.append((state['step'], b, beta, torch.stack([loss.detach(), recon.detach(), kl.detach(),
                                                                  total_grad_norm(self.params)])))
        if len(self.pending) >= self.check_every:  # on the CPU: checked before the step can spread a NaN
            self.flush()
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)  # skipped if a gradient overflowed
            self.scaler.update()
        state['step'] += 1
        state['batch'] = b + 1

    def flush(self):
        """Read the pending per-step numbers (one transfer), stop at the first non-finite one, and
        append them to the history."""
        if not self.pending:
            return
        values = torch.stack([v for *_, v in self.pending]).tolist()  # [objective, recon, kl, grad norm] per step
        hist = self.state['history']
        for (step, b, beta, _), (obj, recon, kl, grad_norm) in zip(self.pending, values, strict=True):
            # under loss scaling a gradient that overflowed is a skipped step, not a stop
            if not (math.isfinite(obj) and (math.isfinite(grad_norm) or self.scaler is not None)):
                self.pending = []
                what = (f'the training loss is {obj}' if not math.isfinite(obj)
                        else f'the gradient norm is {grad_norm} (the loss is {obj})')
                message = stop_message(self.part, self.where(b, step), self.path, self.saved, what,
                                       first=step == 0)
                say(self.out, message)
                raise NonFiniteLossError(message)
            for k, v in (('step', step), ('objective', obj), ('recon', recon), ('kl', kl), ('beta', beta)):
                hist[k].append(v)
            if not math.isfinite(grad_norm):  # float16: a gradient overflowed, the scaler skips the update
                hist.setdefault('skipped', []).append(step)
            hist['loss'].append(recon + kl)
        self.pending = []

    def where(self, batch, step):
        """Where training is, in a stop message: epoch (counted from 1), batch of the epoch, step."""
        return f'epoch {self.state["epoch"] + 1}, batch {batch} of the epoch, step {step}'


class Epochs:
    """Training's epochs: the learning rate, autoregression and data order at the start of each,
    the monitor loss, a run.log line and a checkpoint at its end; the time spent (a part of Training)."""

    def start_epoch(self, epoch, n):
        """The learning rate of this epoch, autoregression on from autoregress_epoch, the data order."""
        cfg, state, hist = self.cfg, self.state, self.state['history']
        late = cfg['lr_drop_epoch'] is not None and epoch >= cfg['lr_drop_epoch']
        for group in self.opt.param_groups:
            group['lr'] = cfg['lr_late'] if late else cfg['lr']
        if cfg['autoregress']:
            self.nets['decoder'].autoregress = state['autoregress'] = epoch >= cfg['autoregress_epoch']
            if state['autoregress'] and hist['autoregress_step'] is None:
                hist['autoregress_step'] = state['step']
        if state['batch'] == 0:
            state['perm'] = torch.randperm(n, generator=self.shuffle)  # cpu: data order, CPU generator (checkpointed)
        self.order = state['perm'].to(self.device)  # one copy an epoch: no step copies from the host
        for net in self.nets.values():
            net.train()

    def end_of_epoch(self, epoch, x_monitor, steps_per_epoch):
        """Test loss on the monitor images, a run.log line, the checkpoint."""
        from engine.evaluate import neg_elbo
        cfg, state, hist = self.cfg, self.state, self.state['history']
        self.flush()
        for net in self.nets.values():
            net.eval()
        monitor = neg_elbo(self.nets, cfg, x_monitor, cfg['seed'] + 101)
        key = 'test_nll' if cfg['model'] == 'pixelcnn' else 'test_elbo'
        hist['test_epoch'].append(epoch + 1)
        hist['test_step'].append(state['step'])
        hist['test_loss'].append(monitor[key]['value'])
        hist['test_kl'].append(monitor['kl']['value'] if 'kl' in monitor else 0.0)
        last = hist['loss'][-steps_per_epoch:]
        skipped = sum(s >= state['step'] - steps_per_epoch for s in hist.get('skipped', []))
        say(self.out, f'{self.part}: epoch {epoch + 1}/{cfg["epochs"]}, step {state["step"]}: train '
                      f'{sum(last) / len(last):.2f} (mean of the epoch), test {hist["test_loss"][-1]:.2f} '
                      f'({len(x_monitor)} images), KL {hist["test_kl"][-1]:.2f}, beta {hist["beta"][-1]:.2f}, '
                      f'lr {self.opt.param_groups[0]["lr"]:g}, {state["train_seconds"]:.0f} s of training'
                      + (f', {skipped} steps skipped by loss scaling' if skipped else ''))
        state['epoch'], state['batch'] = epoch + 1, 0
        self.save()

    def count(self, seconds):
        """Add training seconds to the run's total and to this sitting's (this process, its device
        and hardware): a run resumed on another machine records where each part of its time went."""
        if self.sitting is None:
            self.sitting = dict(device=str(self.device), hardware=describe_hardware(self.device), seconds=0.0)
            self.state['sittings'].append(self.sitting)
        self.state['train_seconds'] += seconds
        self.sitting['seconds'] += seconds


def monitor_images(cfg):
    """The test images of the loss after each epoch: the sample the final test ELBO covers (all, or nested in it)."""
    x_test = load_data(cfg, train=False)
    index = test_subset(len(x_test), cfg['monitor_images'])
    return x_test if index is None else x_test[index]


class Training(Checkpointing, Stepping, Epochs):
    """One part's training: its models, optimiser, generators and state, checkpointed to
    out/checkpoint.pt. The state (epoch, batch, step, data order, history) is what a checkpoint holds.
    The checkpoint, the step and the epoch are its parts: Checkpointing, Stepping, Epochs."""

    def __init__(self, part, cfg, nets, out, device, progress):
        self.part, self.cfg, self.nets, self.out, self.progress = part, cfg, nets, out, progress
        self.device = torch.device(device)
        self.path = os.path.join(out, 'checkpoint.pt')
        self.params = [p for net in nets.values() for p in net.parameters()]
        self.opt = adam(self.params, cfg['lr'])
        self.scaler = loss_scaler(cfg['precision'], self.device)
        self.shuffle = torch.Generator().manual_seed(cfg['seed'] + 1)           # data order
        self.noise = torch.Generator(self.device).manual_seed(cfg['seed'] + 2)  # eps of the reparameterisation
        self.state = dict(epoch=0, batch=0, step=0, train_seconds=0.0, perm=None, autoregress=False,
                          history=new_history(), sittings=[])
        self.sitting = None   # this process's entry of state['sittings'], made at its first training seconds
        self.saved = None     # {epoch, batch} of the checkpoint on disk
        self.pending = []     # per-step numbers not yet read from the device
        self.check_every = 1 if self.device.type in objectives.FREE_READS else SYNC_EVERY
        self.order = None     # the epoch's data order (state['perm']) on the device
        fresh_compiler(cfg)
        self.objective = captured(objective, self.device) if cfg['compile_train'] else objective

    def run(self, stop_at=None):
        """Train to cfg['epochs'] (or until the wall-clock time stop_at, then checkpoint and return
        False). Returns True when training is complete."""
        cfg, state = self.cfg, self.state
        decoder = self.nets.get('decoder')
        if cfg['autoregress']:
            decoder.autoregress = state['autoregress']
        if state['epoch'] >= cfg['epochs']:
            return True
        x_train = load_data(cfg, train=True).to(self.device)
        check_training_data(x_train, self.device)
        x_monitor = monitor_images(cfg).to(self.device)
        steps_per_epoch = math.ceil(len(x_train) / cfg['batch_size'])
        last_save = time.time()
        for epoch in range(state['epoch'], cfg['epochs']):
            self.start_epoch(epoch, len(x_train))
            t0 = time.time()
            batches = range(state['batch'], steps_per_epoch)
            shown = dict(desc=f'{self.part} epoch {epoch + 1}/{cfg["epochs"]}',  # pragma: no mutate
                         initial=batches.start)
            for b in bar(batches, self.progress, total=steps_per_epoch, **shown):  # pragma: no mutate (display only)
                self.step(x_train, b, steps_per_epoch)
                late = time.time() - last_save > 60 * cfg['checkpoint_minutes']
                if (late or (stop_at is not None and time.time() > stop_at)) and b + 1 < steps_per_epoch:
                    self.count(time.time() - t0)
                    t0 = time.time()
                    self.save()
                    last_save = time.time()
                    if stop_at is not None and time.time() > stop_at:
                        return False
            self.count(time.time() - t0)
            self.end_of_epoch(epoch, x_monitor, steps_per_epoch)
            last_save = time.time()
            if stop_at is not None and time.time() > stop_at and state['epoch'] < cfg['epochs']:
                return False
        return True


def train(part, cfg, nets, out, device, progress, stop_at=None):
    """Train the part's models, resuming from out/checkpoint.pt if present. Returns (state, done):
    the training state {epoch, batch, step, train_seconds, history, autoregress, ...} and whether
    training is complete (False when stopped at the wall-clock time stop_at, checkpoint written)."""
    training = Training(part, cfg, nets, out, device, progress)
    training.resume()
    with training_numerics(device):
        done = training.run(stop_at)
    return training.state, done


def training_numerics(device):
    """The numerics training runs under on `device`: on CUDA deterministic cuDNN kernels without
    benchmark mode, TF32 allowed (evaluate.cuda_numerics); nothing to set elsewhere."""
    return cuda_numerics(tf32=TRAINING_TF32) if torch.device(device).type == 'cuda' else contextlib.nullcontext()
