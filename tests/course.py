"""How the course_api tests speak to a student: a failure names the course's call, what the course
expects of it and what came instead, so that it reads as an instruction. A call that raises
(NotImplementedError in the framework's stubs, a TypeError of another signature) or returns
something else than the expected tensors fails with that sentence, never with a traceback into
the test's own code (pytest.fail with pytrace=False)."""
import pytest
import torch


def fail(message):
    pytest.fail(message, pytrace=False)


def describe(value):
    """What a call returned, in words: 'None', 'a tensor of shape (4, 49)', 'a tuple of 2: (...)'."""
    if isinstance(value, torch.Tensor):
        return f'a tensor of shape {tuple(value.shape)}'
    if isinstance(value, (tuple, list)):
        return f'a {type(value).__name__} of {len(value)}: ({", ".join(describe(v) for v in value)})'
    return 'None' if value is None else f'{type(value).__name__} {str(value)[:80]}'


def call(what, fn, *args, **kwargs):
    """fn(*args, **kwargs), the course's call `what` (e.g. 'models.PixelCNN(capacity=4, depth=1)(x)')."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        message = f'{what} is not implemented yet (it raises NotImplementedError)'
    except Exception as e:  # a student's code may raise anything: say which call did, and what it said
        message = f'{what} raised {type(e).__name__}: {e}'
    fail(message)  # outside the except clause: no chained traceback of the student's exception


def signature(args, kwargs):
    return ', '.join([repr(a) for a in args] + [f'{k}={v!r}' for k, v in kwargs.items()])


def build(module, name, *args, **kwargs):
    """(module.<name>(*args, **kwargs), the call in words), constructed as the course's notebooks do."""
    what = f'{module.__name__}.{name}({signature(args, kwargs)})'
    if not hasattr(module, name):
        fail(f'{module.__name__}.py has no {name}: the course calls {what}')
    return call(what, getattr(module, name), *args, **kwargs), what


def attribute(obj, name, what):
    if not hasattr(obj, name):
        fail(f'{what} has no attribute {name!r}, which the course framework defines and its notebooks use')
    return getattr(obj, name)


def shape_text(shape):
    return '() (a 0-dim scalar)' if tuple(shape) == () else str(tuple(shape))


def tensor(what, value, shape):
    """value, checked to be a tensor of `shape`."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
        fail(f'{what} should return a tensor of shape {shape_text(shape)}; it returned {describe(value)}')
    return value


def returns(what, fn, shape, *args):
    """fn(*args), the course's call `what`, checked to return a tensor of `shape`."""
    return tensor(what, call(what, fn, *args), shape)


def tensors(what, value, *shapes):
    """value, checked to be a tuple of len(shapes) tensors of those shapes."""
    ok = isinstance(value, (tuple, list)) and len(value) == len(shapes) and all(
        isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(s) for v, s in zip(value, shapes))
    if not ok:
        fail(f'{what} should return {len(shapes)} tensors of shapes {", ".join(map(shape_text, shapes))}; '
             f'it returned {describe(value)}')
    return tuple(value)


def shown(t):
    t = torch.as_tensor(t)
    if t.numel() == 1:
        return f'{t.item():.6g}'
    return f'a tensor of shape {tuple(t.shape)}, first values {t.flatten()[:3].tolist()}'


def close(what, got, expected, meaning, rtol=None, atol=None):
    """got == expected within the tolerances (None: torch.testing.assert_close's for the dtype), or a
    failure naming `meaning`, what the value should be."""
    try:
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
        return
    except AssertionError as e:
        why = str(e).strip().splitlines()[0]
    fail(f'{what}: expected {meaning} = {shown(expected)}, got {shown(got)} ({why})')


def check(ok, what, expected, got):
    """A property of a call's result: 'what: expected ..., got ...' when it does not hold."""
    if not ok:
        fail(f'{what}: expected {expected}, got {got}')
