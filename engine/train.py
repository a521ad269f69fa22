"""Training for CSE 599i Homework 2: the objective of each model kind (the negative ELBO of
Problems 5 and 6, with KL warm-up and free bits for 6e), the optimiser, the training loop and its
checkpoints. One loop trains every part; engine/config.py says what each part is.

The loop: resume (from out/checkpoint.pt, exactly: model, optimiser, data order and noise
generators), then per epoch start_epoch (learning-rate drop, autoregression switched on, data
order), train_step per batch, end_of_epoch (test loss on the monitor images, run.log line,
checkpoint). Nothing non-finite is ever written: the loss and the gradient norm are checked before
the optimiser step on the CPU, and on a GPU every SYNC_EVERY steps and before every checkpoint
(reading them every step would stall the GPU's queue).

References
- KL warm-up: Bowman et al. 2016, "Generating Sentences from a Continuous Space";
  Sønderby et al. 2016, "Ladder Variational Autoencoders".
- Free bits: Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow".
"""
import contextlib
import math
import os
import time

import torch

from engine import data
from engine import files
import losses
import models
from engine import student
from engine.config import changes, describe_hardware, model_spec, settings_differ
from engine.evaluate import bar, cuda_numerics, noise, test_subset

# CUDA in training: deterministic cuDNN kernels without benchmark mode (so a resumed run ends with
# the numbers of an unbroken one), TF32 allowed (never in evaluation); evaluate.cuda_numerics
TRAINING_TF32 = True
SYNC_EVERY = 50  # steps between reads of the loss and finiteness on a GPU (every step on the CPU)
# Device types whose values the host reads without waiting for a queue of kernels: there the loss
# and its finiteness are read every step and losses.py checks its inputs at every call. Elsewhere
# (CUDA, MPS) a training step reads nothing on the host (see step and loss_on).
FREE_READS = ('cpu',)

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


def kl_weight(step, warmup_steps, start_step=0):
    """beta(step): 1 before start_step, then 0 rising linearly to 1 over warmup_steps (KL warm-up)."""
    if warmup_steps <= 0 or step < start_step:
        return 1.0
    return min(1.0, (step - start_step) / warmup_steps)


def free_bits_kl(kl_terms, free_bits):
    """sum_d max(lambda, mean over the batch of KL_d), kl_terms (B, 49) (Kingma et al. 2016):
    a dimension whose KL is under the floor lambda costs lambda and gets no gradient from it."""
    return torch.clamp(kl_terms.mean(0), min=free_bits).sum()


LOW_PRECISION = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def low_precision(precision, device):
    """The context of the training forward passes. 'fp32' (the default): plain float32, no autocast
    at all (older torch does not accept autocast on every device). 'bf16': torch.autocast to
    bfloat16, so convolutions and matrix products round their inputs to 8-bit mantissas and run on
    the CPU's bfloat16 units (AMX, AVX512-BF16) or the GPU's tensor cores. 'fp16': autocast to
    float16 (10-bit mantissas, but a range that ends at 65504 and underflows below 6e-8), for GPUs
    whose tensor cores have no bfloat16; its gradients are scaled (loss_scaler). Parameters,
    gradients, Adam's state and the losses stay float32, and evaluation always runs in float32.
    Either computes a different function (relative error ~1e-3 per layer): the README sets bf16
    test numbers beside float32 runs, and `python -m tools.bench --bf16-json` measures its speed."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    if precision not in LOW_PRECISION:
        raise ValueError(f'precision must be fp32, {" or ".join(LOW_PRECISION)}, got {precision!r}')
    return torch.autocast(torch.device(device).type, dtype=LOW_PRECISION[precision])


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


def loss_on(loss, device):
    """losses.py's `loss` as a training step calls it on `device`. Where reads are free (FREE_READS),
    the function itself. Elsewhere it is evaluated as a vmap over a batch of one batch: losses.py
    skips its checks of tensor values under vmap (cross_entropy's data in [0, 1] would otherwise be
    read at every step, stalling the GPU's queue), and check_training_data checks the data once
    instead. The same values; the gradients agree to rounding, not bit for bit, so the CPU, where
    the committed runs were trained, keeps the direct call."""
    if torch.device(device).type in FREE_READS:
        return loss

    def batched(*args):
        dims = tuple(0 if isinstance(a, torch.Tensor) else None for a in args)
        out = torch.func.vmap(loss, in_dims=dims)(*(a[None] if isinstance(a, torch.Tensor) else a for a in args))
        return out[0] if isinstance(out, torch.Tensor) else tuple(t[0] for t in out)
    return batched


def check_training_data(x, device):
    """The training images lie in [0, 1]: what losses.py checks at every call where reads are free,
    checked once per run elsewhere (loss_on)."""
    if torch.device(device).type in FREE_READS:
        return
    lo, hi = torch.aminmax(x)
    if not (lo >= 0 and hi <= 1):
        raise ValueError(f'the training images must lie in [0, 1], got values in [{lo.item():g}, {hi.item():g}]; '
                         f'load them with data.load_mnist or data.load_binarized_mnist')


# ---------------------------------------------------------------------------------------------
# The objective of each model kind: (training objective, reconstruction, KL), batch means in
# nats. Reconstruction + KL is the negative ELBO of the handout (for 6a the NLL, with KL = 0),
# whatever beta and free bits do to the objective.

def pixelcnn_objective(nets, cfg, x, eps, beta):
    """-log p(x) = sum_i BCE(logit_i, x_i) (6a)."""
    with low_precision(cfg['precision'], x.device):
        logits = nets['pixelcnn'](x)
    nll = loss_on(losses.cross_entropy, x.device)(logits.float(), x)
    return nll, nll, torch.zeros_like(nll)


def _encode(nets, cfg, x, eps, decode):
    """z ~ q(z|x) by reparameterisation and the decoder's output, under the training precision. The
    encoder's logqzx comes as its (B, 49) per-dimension terms where it gives them (this project's
    encoder: free bits needs them), else as (B,) (an encoder written to the course's API only)."""
    f = nets['encoder']
    with low_precision(cfg['precision'], x.device):
        z, terms, mu, logvar = student.posterior(f, x, eps, per_dim=student.is_projects(type(f)))
        out = decode(nets['decoder'], z, x)  # (B, 1, 28, 28)
    return tuple(t.float() for t in (z, terms, mu, logvar, out))


def gaussian_vae_objective(nets, cfg, x, eps, beta):
    """||x - g(z)||^2 / (2 sigma^2) + beta KL(q(z|x) || N(0, I)), the KL as losses.py computes it (5b, 5c)."""
    z, terms, mu, logvar, out = _encode(nets, cfg, x, eps, lambda g, z, x: g(z))
    recon, kl = loss_on(getattr(losses, cfg['loss']), x.device)(out, x, z, cfg['sigma'], mu, logvar)
    return recon + beta * kl, recon, kl


def binary_vae_objective(nets, cfg, x, eps, beta):
    """-log p(x|z) + beta (log q(z|x) - log r(z)), one z per image (6b-6e); with free bits the KL
    term is sum_d max(lambda, batch-mean KL_d) instead."""
    z, terms, mu, logvar, out = _encode(nets, cfg, x, eps, lambda g, z, x: g(z, x))
    recon, kl = loss_on(losses.discrete_output_elbo, x.device)(out, x, z, terms.sum(1) if terms.dim() == 2 else terms)
    if cfg['free_bits'] > 0:
        if terms.dim() != 2:
            raise student.NeedsExtrasError(f'free bits needs {student.PER_DIM}, which the encoder here does not give')
        # per-dimension KL estimate log q(z_d|x) - log r(z_d) = z_d^2 / 2 - logqzx_d
        return recon + beta * free_bits_kl(0.5 * z.pow(2) - terms, cfg['free_bits']), recon, kl
    return recon + beta * kl, recon, kl


OBJECTIVES = {'pixelcnn': pixelcnn_objective, 'gaussian_vae': gaussian_vae_objective,
              'binary_vae': binary_vae_objective}


def objective(nets, cfg, x, eps, beta=1.0):
    """The part's training objective, reconstruction and KL on the batch x (B, 1, 28, 28) with
    reparameterisation noise eps (B, 49) (None for the PixelCNN)."""
    return OBJECTIVES[cfg['model']](nets, cfg, x, eps, beta)


# The settings' floats (free bits' lambda, sigma) compiled in as constants, each value its own graph:
# where torch.compile makes a float that changed between calls a symbol instead, a use of it under
# clamp can keep an earlier value, with no error (pytorch/pytorch#194976, #197889; seen in torch
# 2.14.1: 6e-freebits compiled after 6e-warmup in one process trained with another lambda). Older
# torch, without the switch, always compiled floats in as constants.
CONSTANT_FLOATS = dict(specialize_float=True) if hasattr(torch._dynamo.config, 'specialize_float') else {}


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
                with torch._dynamo.config.patch(**CONSTANT_FLOATS):
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
# Checkpoints and model files

class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be used."""


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss."""


def atomic_save(obj, path):
    """torch.save through a temporary file and os.replace: readers see the old file or the new one,
    never half of one. On failure (a full disk) the temporary file is removed and the error names the path."""
    files.atomic_save(obj, path)


FRESH = 'rerun with --fresh (fresh=True) or delete it'  # what to do about an unusable checkpoint


def load_file(path, advice=FRESH):
    """A checkpoint or model file, onto the CPU, with tensors and plain containers only (no code
    runs while loading); CheckpointError with `advice` if it cannot be read."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'{path} is corrupt or unreadable ({type(e).__name__}: {e}); '
                              + advice.replace('PATH', path).replace('PART', os.path.basename(os.path.dirname(path)))
                              ) from e


def on_cpu(obj):
    """obj with every tensor in it (in dicts, lists and tuples) copied to the CPU: the files a run
    writes load on any machine, whatever device trained it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def model_record(nets, spec):
    """{name: {class, kwargs, state_dict}}: models.<class>(**kwargs) then load_state_dict rebuilds it.
    The weights are on the CPU."""
    return {name: dict(cls=spec[name][0], kwargs=spec[name][1], state_dict=on_cpu(net.state_dict()))
            for name, net in nets.items()}


def model_kwargs(r):
    """The constructor arguments of a model record; one without a layout was written by layout v1."""
    return {'layout': 'v1', **r['kwargs']}


def model_state(r):
    """The state dict of a model record, under today's parameter names."""
    return r['state_dict'] if 'layout' in r['kwargs'] else models.upgrade_v1_state_dict(r['state_dict'])


RESUME_ADVICE = ('To train this part with the code here, rerun with --fresh (fresh=True), which deletes it, or use '
                 'another --results-dir')


def load_state(net, state, what, advice):
    """net.load_state_dict(state); parameters that do not fit raise a CheckpointError naming `what`
    and those parameters, instead of torch's RuntimeError. The file is not touched."""
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        own = net.state_dict()
        parts = [('missing in the file', [k for k in own if k not in state]),
                 (f'not in {type(net).__name__} here', [k for k in state if k not in own]),
                 ('of another shape', [f'{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here'
                                       for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)])]
        found = '; '.join(f'{label}: {names(keys)}' for label, keys in parts if keys) or str(e).splitlines()[0]
        raise CheckpointError(f"{what}: its parameters do not fit models.{type(net).__name__} of the models.py here "
                              f'({found}); it is kept as it is. {advice}') from None


def names(keys, shown=5):
    return ', '.join(keys[:shown]) + (f' and {len(keys) - shown} more' if len(keys) > shown else '')


def load_models(record, device, autoregress):
    """The networks of a model record on `device`, in eval mode; a decoder with a PixelCNN has
    autoregression on or off as recorded."""
    nets = {}
    for name, r in record.items():
        nets[name] = student.construct(r['cls'], model_kwargs(r)).to(device)
        load_state(nets[name], model_state(r), f'the {name} of a model file', 'Load it with the code that trained it, '
                   'or retrain the part with the code here')
        nets[name].eval()
    if 'decoder' in nets and hasattr(nets['decoder'], 'autoregress'):
        nets['decoder'].autoregress = autoregress
    return nets


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

CUDA_GENERATOR_STATE_BYTES = 16  # a CUDA generator's state: seed and offset (a CPU one's is 5056 bytes)


def earlier_sittings(ck):
    """The sittings {device, hardware, seconds} of a checkpoint. One written before they were
    recorded holds its training seconds as one sitting on the device type its noise generator's
    state belongs to (a generator of the training device), its hardware unrecorded (None)."""
    if 'sittings' in ck:
        return ck['sittings']
    if not ck.get('train_seconds'):
        return []
    size = len(ck['rng']['noise'])
    device = ('cpu' if size == len(torch.Generator().get_state()) else
              'cuda' if size == CUDA_GENERATOR_STATE_BYTES else None)
    return [dict(device=device, hardware=None, seconds=ck['train_seconds'])]


def new_history():
    """Per-iteration training curves and per-epoch test points, as history.json stores them."""
    return dict(step=[], loss=[], recon=[], kl=[], objective=[], beta=[], test_epoch=[], test_step=[], test_loss=[],
                test_kl=[], autoregress_step=None, skipped=[])  # skipped: steps whose update loss scaling skipped


def check_code(ck, path):
    """A checkpoint is resumed only by the code that trained it: one that records the digest of
    its models.py and losses.py by that code; one written before checkpoints recorded it (a
    run of the reference code) only by the reference code."""
    now = student.code_digest()
    if 'code' in ck:
        changed = [f for f in student.CODE_FILES if ck['code'].get(f) != now[f]]
        why = changed and f'was trained by another {" and ".join(changed)} than the one here now'
    else:
        changed = student.changed_files()
        why = changed and (f'records no code digest (it was written before checkpoints did, by the code '
                           f'behind the committed results), and your {" and ".join(changed)} differ from that code')
    if why:
        raise CheckpointError(f"{path} {why}, so it is not resumed: its training would not be your code's. "
                              f'It is kept as it is. {RESUME_ADVICE}')


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
        self.check_every = 1 if self.device.type in FREE_READS else SYNC_EVERY
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
