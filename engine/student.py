"""A student's own code: which models.py and losses.py a run used (their digest), whether they are
the code behind the committed results (the reference code), and where a student's runs go.

The reference code is the one the committed results recorded: the `code` digests in the
metrics.json of every part under the repository's results/ (they all agree; were they ever to
differ, the digest most of them recorded). A checkout without finished results takes its own code
as the reference. When models.py or losses.py differ from the reference, runs that would write to
the repository's results/ go to results/mine/<profile>[-<precision>]/<part> instead (results_for):
the committed results are never trained over, never resumed from and never shown as the
student's. Any other results directory is used as given.

A student's models.py may follow the course framework's API only: its classes, their constructors,
`forward` and `sample` as the notebooks call them. The engine builds such classes without this
project's extra constructor arguments (EXTRAS) where the settings hold the course's value, and
refuses a part that needs another value, in one sentence (NeedsExtrasError, needed_extras). It
reaches the methods it calls beyond the course's API (encode, reparameterize, latent_logits,
pixel_logits, sample with given uniforms) through `fast` and `posterior`: this project's classes
(those whose constructor takes `layout`) answer them themselves; any other class is called through
its course API only, whatever other methods it has (their names may mean something else there).
"""
import collections
import contextlib
import hashlib
import inspect
import json
import os
import types

import torch

from engine import ROOT
import models

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


# ---------------------------------------------------------------------------------------------
# A models.py written to the course's API only

LATENT_DIMS = 49  # z: the course's 7x7 latent grid, flattened
LATENT_GRID = (1, 7, 7)  # epsilon as the course's notebooks pass it to VAEEncoder.forward

# This project's constructor arguments beyond the course framework's, each at the value with which
# a class builds the course's network (the framework's layouts, IAF(capacity) of depth 9, the
# PixelVAE decoder's PixelCNN() of capacity 32 and depth 9).
EXTRAS = dict(layout='course', iaf_depth=9, pixelcnn_capacity=32, pixelcnn_depth=9)
COURSE_HAS = dict(layout="the framework's layout", iaf_depth='IAF steps of depth 9',
                  pixelcnn_capacity='capacity 32', pixelcnn_depth='depth 9')  # the PixelCNN's
PER_DIM = ("the per-dimension terms of log q(z|x) that free bits floors (this project's "
           "VAEEncoder.reparameterize(..., per_dim=True))")


class NeedsExtrasError(ValueError):
    """A part's settings need what only this project's models.py has (an extra constructor argument
    at a value other than the course's, or an extra method), and the models.py here has not."""


def takes(cls, name):
    """Whether the constructor of cls has a parameter `name` of its own (not only **kwargs)."""
    try:
        parameter = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def is_projects(cls):
    """Whether cls is one of this project's classes (its constructor takes `layout`), whose methods
    beyond the course's API are the ones the engine calls."""
    return takes(cls, 'layout')


def shapes(key, kwargs):
    """Whether the extra `key` shapes the network that kwargs build: the IAF depth only where there are
    flows, the PixelVAE decoder's PixelCNN only where it has one."""
    if key == 'iaf_depth':
        return kwargs.get('flows', 0) > 0
    if key.startswith('pixelcnn_'):
        return bool(kwargs.get('autoregress', False))
    return True


def extras_missing(name, kwargs):
    """The extras of kwargs that models.<name> does not take, where they shape its network and hold
    another value than the course's, in words ([] or one phrase)."""
    cls = getattr(models, name, None)
    if cls is None:
        return []  # building it says so
    missing = {k: v for k, v in kwargs.items()
               if k in EXTRAS and v != EXTRAS[k] and shapes(k, kwargs) and not takes(cls, k)}
    if not missing:
        return []
    pixelcnn = [COURSE_HAS[k] for k in missing if k.startswith('pixelcnn_')]
    has = [COURSE_HAS[k] for k in missing if not k.startswith('pixelcnn_')]
    has += [f'a PixelCNN of {" and ".join(pixelcnn)}'] if pixelcnn else []
    return [f'models.{name}({", ".join(f"{k}={v!r}" for k, v in missing.items())}), where the course\'s {name} has '
            + ' and '.join(has)]


def needed_extras(spec, cfg):
    """What a part with settings cfg and models spec (config.model_spec) needs of this project's
    models.py that the models.py here has not, in words ([] when it can run)."""
    need = [words for name, (cls, kwargs) in spec.items() for words in extras_missing(cls, kwargs)]
    encoder = getattr(models, spec.get('encoder', ('',))[0], None)
    if cfg.get('free_bits', 0) > 0 and encoder is not None and not is_projects(encoder):
        need.append(PER_DIM)
    return need


def construct(name, kwargs):
    """models.<name>(**kwargs), without the extras (EXTRAS) that the class does not take, which hold
    the course's value or do not shape its network: a class written to the course's API gets the
    course's arguments only. An extra it does not take, and that matters, is a NeedsExtrasError."""
    missing = extras_missing(name, kwargs)
    if missing:
        raise NeedsExtrasError(f'these settings need {missing[0]}: the models.py here does not take this '
                               f'project\'s extras, which are not the course\'s API')
    cls = getattr(models, name)
    return cls(**{k: v for k, v in kwargs.items() if k not in EXTRAS or takes(cls, k)})


def course_posterior(f, x, epsilon):
    """(z, logqzx, mu, logvar) of the course's VAEEncoder.forward(x, epsilon), epsilon passed as
    the course's (B, 1, 7, 7), the results as (B, 49), (B,), (B, 49), (B, 49)."""
    n = len(x)
    z, logqzx, mu, logvar = f(x, epsilon.reshape(n, *LATENT_GRID))
    return z.reshape(n, -1), logqzx.reshape(n), mu.reshape(n, -1), logvar.reshape(n, -1)


def posterior(f, x, epsilon, per_dim=False):
    """z ~ q(z|x) by reparameterisation with noise epsilon (B, 49): (z, logqzx, mu, logvar).
    per_dim: logqzx as its (B, 49) terms, which only this project's encoder gives."""
    if is_projects(type(f)):
        h, mu, logvar = f.encode(x)
        z, logqzx = f.reparameterize(h, mu, logvar, epsilon, per_dim=per_dim)
        return z, logqzx, mu, logvar
    if per_dim:
        raise NeedsExtrasError(f'this part needs {PER_DIM}, which the course\'s VAEEncoder does not give')
    return course_posterior(f, x, epsilon)


def _encode(f, x):
    """(h, mu, logvar) through the course's forward (epsilon 0). The course's encoder does not show
    its features h, so x itself stands for them: _reparameterize runs the encoder on it again."""
    _, _, mu, logvar = course_posterior(f, x, torch.zeros(len(x), LATENT_DIMS, device=x.device, dtype=x.dtype))
    return x, mu, logvar


def _reparameterize(f, h, mu, logvar, epsilon, per_dim=False):
    """(z, logqzx) through the course's forward on the images h (see _encode); mu and logvar are its own."""
    z, logqzx, _, _ = posterior(f, h, epsilon, per_dim)
    return z, logqzx


@contextlib.contextmanager
def _autoregression_off(g):
    saved = getattr(g, 'autoregress', False)
    g.autoregress = False
    try:
        yield
    finally:
        g.autoregress = saved


def _latent_logits(g, z):
    """The binary decoder's logits that depend on z alone: its forward(z) with autoregression off
    (the course's PixelVAE decoder adds pixelcnn(x) to them when it is on)."""
    with _autoregression_off(g):
        return g(z)


def _pixel_logits(g, x):
    """The binary decoder's logits that depend on x_<i: pixelcnn(x) with autoregression on, else 0."""
    if not getattr(g, 'autoregress', False):
        return torch.zeros((), device=x.device, dtype=x.dtype)
    return g.pixelcnn(x)


def _sample(net, *args, uniforms=None):
    """net.sample(*args) of the course (PixelCNN.sample(n), DiscreteVAEDecoder.sample(z)), which
    draws from torch's generator: with uniforms, from one seeded by them, so that the same
    uniforms draw the same images; the generator's state is restored after."""
    if uniforms is None:
        return net.sample(*args)
    devices = [uniforms.device] if uniforms.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(uniforms.reshape(-1)[:1].sum().item() * 2 ** 31))
        return net.sample(*args)


COURSE_CALLS = dict(encode=_encode, reparameterize=_reparameterize, latent_logits=_latent_logits,
                    pixel_logits=_pixel_logits, sample=_sample)


def fast(net, name):
    """net.<name>, one of the engine's calls beyond the course's API (COURSE_CALLS): the class's own
    method where it is this project's class, else the same call made through its course API."""
    if is_projects(type(net)):
        return getattr(net, name)
    return types.MethodType(COURSE_CALLS[name], net)
