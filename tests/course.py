"""How the course_api tests speak to a student: a failure names the course's call, what the course
expects of it and what came instead, so that it reads as an instruction. A call that raises
(NotImplementedError in the framework's stubs, a TypeError of another signature) or returns
something else than the expected tensors fails with that sentence, never with a traceback into
the test's own code (pytest.fail with pytrace=False).

A failure names the likeliest fix where the numbers point at one: a value off by exactly a factor
(ratio: "exactly 2× the closed form: a missing ½?"), and a check that compares one of the student's
functions with another of theirs says which of the two is wrong (elsewhere): its message then ends
with FAULT, "the fault is in <module>.<name>", which engine/verdicts.py and reporting/versus.py read
to count the failure against that function rather than the one the check calls."""
import pytest
import torch

FAULT = 'the fault is in {}'  # engine/verdicts.py's CULPRIT reads it back: keep the two in step


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
        isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(s) for v, s in zip(value, shapes, strict=True))
    if not ok:
        fail(f'{what} should return {len(shapes)} tensors of shapes {", ".join(map(shape_text, shapes))}; '
             f'it returned {describe(value)}')
    return tuple(value)


def shown(t):
    t = torch.as_tensor(t)
    if t.numel() == 1:
        return f'{t.item():.6g}'
    return f'a tensor of shape {tuple(t.shape)}, first values {t.flatten()[:3].tolist()}'


def ratio(got, expected, called='the expected value', batch=None):
    """The fix that `got` being an exact multiple of `expected` points at ('' if it is none): 2× is a
    missing ½, ½× an extra ½, −1× a flipped sign, batch× a sum over the batch where the course takes
    its mean. `called` names the expected value, e.g. 'the closed form'."""
    try:
        got, expected = (torch.as_tensor(t).detach().to(torch.float64) for t in (got, expected))
    except (TypeError, ValueError, RuntimeError):
        return ''
    if got.shape != expected.shape or expected.numel() == 0 or not bool((expected != 0).all()):
        return ''
    factors = [(2.0, f'exactly 2× {called}: a missing ½?'), (0.5, f'exactly ½ × {called}: an extra ½?'),
               (-1.0, f'the negative of {called}: a flipped sign?')]
    if batch:
        factors.append((float(batch), f'exactly {batch}× {called}: a sum over the batch where the course takes '
                                      'the mean?'))
    for factor, text in factors:
        if torch.allclose(got, factor * expected, rtol=1e-6, atol=0):
            return text
    return ''


def near(a, b, rtol=1e-5):
    """a and b equal within rtol, for the notes of a failure (never raises)."""
    try:
        a, b = (torch.as_tensor(t).detach().to(torch.float64) for t in (a, b))
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=1e-12))
    except (TypeError, ValueError, RuntimeError):
        return False


def elsewhere(agrees, theirs, truth, culprit, subject, meaning, called):
    """For a check that compares `subject` (e.g. 'losses.mc_gaussian_elbo') with `theirs`, the value of
    another of the student's functions (`culprit`): when the subject's own value agrees with the true
    one (agrees) and `theirs` is not the true value `truth`, a sentence saying so that names the
    culprit by FAULT; None otherwise (the subject may then be at fault itself)."""
    if not agrees or near(theirs, truth):
        return None
    hint = ratio(theirs, truth, called)
    return (f'{subject} agrees with the true {meaning} = {shown(truth)}, and {culprit} gives {shown(theirs)}'
            f'{" (" + hint + ")" if hint else ""}: {FAULT.format(culprit)}, not in {subject}')


def close(what, got, expected, meaning, rtol=None, atol=None, called=None, batch=None, note=None, hint=True):
    """got == expected within the tolerances (None: torch.testing.assert_close's for the dtype), or a
    failure naming `meaning`, what the value should be, the fix an exact factor points at (ratio, with
    `called` naming the expected value; hint=False: none) and `note`, a sentence of the caller's."""
    try:
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
        return
    except AssertionError as e:
        why = str(e).strip().splitlines()[0]
    hint = ratio(got, expected, called or 'the expected value', batch) if hint else ''
    fail(f'{what}: expected {meaning} = {shown(expected)}, got {shown(got)}{": " + hint if hint else ""} ({why})'
         + (f'. {note}' if note else ''))


def check(ok, what, expected, got, note=None):
    """A property of a call's result: 'what: expected ..., got ...' (and `note`) when it does not hold."""
    if not ok:
        fail(f'{what}: expected {expected}, got {got}' + (f'. {note}' if note else ''))
