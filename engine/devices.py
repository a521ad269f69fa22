"""The devices this machine has, and a device named by the user checked against them before any work."""
import torch


def available_devices():
    """The device names torch can run on here, e.g. ['cpu', 'cuda', 'cuda:0', 'cuda:1']."""
    names = ['cpu']
    if torch.cuda.is_available():
        names += ['cuda'] + [f'cuda:{i}' for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, 'mps', None)
    if mps is not None and mps.is_available():
        names.append('mps')
    return names


def check_device(name):
    """torch.device(name), or ValueError naming the devices this machine has when name is not a device
    torch knows or not one present here (e.g. 'cuda' on a machine without an NVIDIA GPU)."""
    have = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f'{name!r} is not a device; this machine has: {", ".join(have)}') from None
    text = str(device)
    if text not in have:
        why = {'cuda': 'no CUDA GPU is available here (no NVIDIA driver, or a CPU-only torch)',
               'mps': 'no Apple GPU (MPS) is available here'}.get(device.type, f'{text} is not available here')
        raise ValueError(f'--device {name}: {why}; this machine has: {", ".join(have)}')
    return device
