"""An importance-sampling pass saved after each batch of images (PartialPass): its NLLs, the
generator's state, its device type, the seconds spent and a digest of them all, so that a pass
stopped at a time limit, or killed, resumes at its next batch and ends with the numbers of an
unbroken pass.

A file is taken up only by the very pass that made it, and only if it holds what that pass could
have saved; otherwise a message says why and the pass starts from the first image:
- one that cannot be read, or made for another model, other test images or other settings (its
  key differs);
- one whose generator state was saved on another device type (a CPU generator's state cannot be
  set on a CUDA one, nor the reverse, and the two draw different numbers from one seed), whose
  draws cannot be continued here;
- one whose number of images is not a whole number of batches (or all of them), or more than the
  pass has; one holding an NLL that is not finite and positive (-log p(x) of a binary image is
  positive: an estimate p(x) >= 1 of a 784-pixel image is no model's);
- one whose generator state is not where the draws of the images it holds leave the pass's
  generator: checked by making those draws again (replay), about 50 million normals per 1000
  images at M = 1000, a second or so on a CPU;
- one whose NLL of the first or of the last image it holds is not what those draws give: the two
  are computed again (M samples each, relative tolerance SPOT_TOLERANCE);
- one whose digest does not match its contents.
Files written before the digest (key, nll, seconds and generator only: those of passes begun
before it) are still taken up after every check but the last: a change to their NLLs that keeps
their number, keeps them finite and positive and leaves the first and the last as they were is
not detected.
"""
import hashlib
import json
import math
import os
import sys
import time

import torch

from engine import files

# How far an NLL computed again for one image, from the same draws, may be from the one its batch gave
# (other kernels for a batch of one, eager instead of compiled): far above float32 rounding (tests hold the
# compiled and the eager pass to 1e-4), far below any change worth making to a number.
SPOT_TOLERANCE = 1e-4

CPU_STATE = torch.Generator().get_state().shape  # a CPU generator's state (Mersenne Twister): 5056 bytes


class EvaluationStopped(Exception):
    """Importance sampling stopped at the time limit; the PartialPass file holds the images done."""

    def __init__(self, path, done, total):
        super().__init__(f'importance sampling stopped at the time limit after {done} of {total} test images; '
                         f'{path} holds them: rerun the same command to resume')
        self.path, self.done, self.total = path, done, total


def fingerprint(*tensors):
    """sha256 of the tensors' dtypes, shapes and bytes, in order: which model, which test images.
    Read on the host as raw bytes, with no conversion on the device (MPS has no float64)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f'{t.dtype}{tuple(t.shape)}'.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def partial_digest(record):
    """sha256 of what a PartialPass file holds (key, NLLs, seconds, the generator's state and device
    type): saved with it, so that a file changed after it was written is not taken up."""
    h = hashlib.sha256(json.dumps(record['key'], sort_keys=True).encode())
    h.update(fingerprint(record['nll']).encode())
    h.update(repr(float(record['seconds'])).encode())
    h.update(str(record.get('device')).encode())
    if record['generator'] is not None:
        h.update(fingerprint(record['generator']).encode())
    return h.hexdigest()


def draws_key(generator, eps):
    """What fixes the draws of a pass, for its PartialPass key: the given eps, or the generator's state
    before the first draw (its seed, and its device: CPU and CUDA streams differ); None: torch's global one."""
    if eps is not None:
        return fingerprint(eps)
    return None if generator is None else fingerprint(generator.get_state())


def copy_generator(generator):
    """A new generator on the same device in the same state."""
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy


def saved_device(saved):
    """The device type whose generator made the state in a PartialPass file: recorded in files with a
    digest; in earlier ones 'cpu' if the state has the CPU generator's size, None otherwise."""
    if 'device' in saved:
        return saved['device']
    state = saved.get('generator')
    return 'cpu' if isinstance(state, torch.Tensor) and state.shape == CPU_STATE else None


def moved(path, saved, generator, device=None):
    """The message for a file whose generator state is of another device type than the pass's."""
    return (f'{path} was saved on another device type' + (f' ({device})' if device else '')
            + f', whose random draws cannot be continued on {generator.device.type}; importance sampling '
            f'restarts its draws from the first image (the {len(saved["nll"])} images done there are computed '
            f'again)')


def of_another_device(saved, key, generator):
    """Whether the file is of this very pass but for its draws, and its generator's state is of another
    device type: its key's draws, the fingerprint of the generator's first state, differ only because
    the device type does."""
    try:
        rest = {k: v for k, v in saved['key'].items() if k != 'draws'}
        elsewhere = (saved['key'].get('draws') is not None and saved.get('generator') is not None
                     and saved_device(saved) != generator.device.type)
    except Exception:  # a key that is not a dict: another pass's file
        return False
    return elsewhere and rest == {k: v for k, v in key.items() if k != 'draws'}


def fault(saved, key, generator, replay):
    """Why a file with the pass's key cannot be taken up (None: it can)."""
    nll, images, batch = saved['nll'], key['images'], key['batch']
    if not isinstance(nll, torch.Tensor) or nll.dim() != 1 or not nll.is_floating_point():
        return 'its NLLs are not a vector of numbers'
    done = len(nll)
    if not 0 < done <= images:
        return f'it holds {done} images, and this pass has {images}'
    if done % batch and done != images:
        return f'its {done} images are not a whole number of batches of {batch} images'
    if not bool((torch.isfinite(nll) & (nll > 0)).all()):
        return 'it holds NLLs that are not finite and positive'
    seconds = saved['seconds']
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        return f'its seconds ({seconds!r}) are not a time spent'
    if 'digest' in saved and saved['digest'] != partial_digest(saved):
        return 'its contents do not match its digest (the file was changed after it was written)'
    if generator is None:
        return None
    state = saved['generator']
    if not isinstance(state, torch.Tensor) or state.shape != generator.get_state().shape:
        return 'its generator state is not one that this pass\'s generator can take'
    return None if replay is None else replay_fault(nll, state, generator, replay)


def replay_fault(nll, state, generator, replay):
    """Why the draws of the file's images, made again from the pass's generator, do not lead to its
    generator state or to its NLLs (None: they do)."""
    probe = copy_generator(generator)
    done = len(nll)
    again = replay(probe, done)
    if not torch.equal(probe.get_state(), state):
        return f'its generator state is not where the draws of its {done} images leave the generator'
    for k, value in sorted(again.items()):
        if not abs(value - nll[k].item()) <= SPOT_TOLERANCE * (1 + abs(value)):
            return (f'the NLL it holds for image {k + 1} of the pass, {nll[k].item():.6f}, is not the '
                    f'{value:.6f} that the same draws give')
    return None


def take_up(path, key, generator, replay):
    """(the contents of the PartialPass file at path, None) if the pass can take them up, with the
    generator set to their saved state; otherwise (None, why not, in a message)."""
    try:
        saved = torch.load(path, map_location='cpu', weights_only=True)
        same = saved['key'] == key
    except Exception as err:  # a damaged file costs its compute, never the run
        return None, f'{path} cannot be read ({type(err).__name__}); importance sampling starts from the first image'
    if not same and generator is not None and of_another_device(saved, key, generator):
        return None, moved(path, saved, generator, saved_device(saved))
    if not same:
        return None, (f'{path} holds importance sampling of another model, other test images or other settings; '
                      f'starting from the first image')
    try:
        why = fault(saved, key, generator, replay)
    except Exception as err:  # a malformed entry: the same as a damaged file
        why = f'it could not be checked ({type(err).__name__}: {str(err)[:200]})'
    if why is not None:
        return None, f'{path} is not taken up: {why}; importance sampling starts from the first image'
    if generator is not None:
        try:
            generator.set_state(saved['generator'])
        except (RuntimeError, TypeError):  # a state of another device type's generator (or none)
            return None, moved(path, saved, generator)
    return saved, None


class PartialPass:
    """An importance-sampling pass saved after each batch of images, resumed by the very pass that made
    it (the module's docstring says what is checked first). path None: nothing is saved. log: where the
    messages go (the run's log; stderr by default)."""

    def __init__(self, path, stop_at=None, log=None):
        self.path, self.stop_at = path, stop_at
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.earlier = 0.0  # seconds spent in earlier sittings
        self.started = time.time()

    def resume(self, key, generator, replay=None):
        """The NLLs already computed ([] or [(n,)]) under key, with the generator moved on to where
        they stopped. generator: the pass's, in its state before the first draw (None: the draws are
        given, or torch's global generator's). replay(generator, n): makes the draws of the pass's
        first n images from generator and returns {position: NLL} of some of them computed again from
        those draws (None: neither the generator's state nor any NLL is checked)."""
        if self.path is None or not os.path.exists(self.path):
            return []
        saved, why = take_up(self.path, key, generator, replay)
        if why is not None:
            self.log(why)
            return []
        self.earlier = saved['seconds']
        print(f'importance sampling resumes after {len(saved["nll"])} images ({self.path})', flush=True)
        return [saved['nll']]

    def save(self, key, nll, generator, total):
        """Save the NLLs so far; past the time limit, with images left, raise EvaluationStopped."""
        if self.path is None:
            return
        done = torch.cat(nll).cpu()
        record = dict(key=key, nll=done, seconds=self.earlier + time.time() - self.started,
                      generator=None if generator is None else generator.get_state(),
                      device=None if generator is None else generator.device.type)
        files.atomic_save(dict(record, digest=partial_digest(record)), self.path)
        if self.stop_at is not None and time.time() > self.stop_at and len(done) < total:
            raise EvaluationStopped(self.path, len(done), total)

    def remove(self):
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)
