"""Model files and checkpoints on disk: reading one safely, the model record a run writes
({name: {class, kwargs, state_dict}}), the networks rebuilt from it, and which code may resume a
checkpoint. engine/train.py writes them; evaluation, figures and verification read them.

    nets = load_models(load_file(path)['models'], device, autoregress=True)
"""
import os

import torch

import models
from engine import student


class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be used."""


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
