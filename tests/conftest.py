"""Run the course_api tests against another models.py / losses.py.

    HW2_MODELS=/path/to/models.py HW2_LOSSES=/path/to/losses.py pytest -m course_api

loads those files as the modules `models` and `losses` before any test module imports them.
The course_api tests use only what the course framework's notebooks call, so any file written
against the framework can be checked. While a file is substituted only tests/test_models.py and
tests/test_losses.py are collected and every test not marked course_api is skipped: the others
exercise this implementation's extras (and experiments.py, which would import the substituted
file). With neither variable set, nothing here changes the suite.

Under mutation testing (mutmut sets MUTANT_UNDER_TEST; docs/mutation.md) the tests run from the
copy in mutants/: MNIST is read from the repository's data/ unless HW2_DATA says otherwise, and
torch.compile runs its functions eagerly, because mutmut's dispatch sets a ContextVar on every
call, which TorchDynamo cannot trace.
"""
import importlib.util
import os
import sys

import pytest

SUBSTITUTABLE = {'models': 'HW2_MODELS', 'losses': 'HW2_LOSSES'}
COURSE_API_FILES = ('test_models.py', 'test_losses.py')


def substituted():
    """{module name: file} for each variable that is set (and not empty)."""
    return {name: os.environ[var] for name, var in SUBSTITUTABLE.items() if os.environ.get(var)}


def load_as(name, path):
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise pytest.UsageError(f'{SUBSTITUTABLE[name]}={path}: no such file')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # `import models` in the test files now returns this module
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    for name, path in substituted().items():
        load_as(name, path)
    if 'MUTANT_UNDER_TEST' in os.environ or 'mutmut' in sys.modules:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../mutants
        os.environ.setdefault('HW2_DATA', os.path.join(os.path.dirname(here), 'data'))
        import torch._dynamo
        torch._dynamo.config.disable = True


def pytest_runtest_setup(item):
    """Under a mutant, only the test files of the mutated module's selection (mutation.TESTS, passed
    as MUTATION_TESTS) judge it; mutmut's other phases (its test statistics, the clean run) run all."""
    chosen = os.environ.get('MUTATION_TESTS')
    if chosen and '__mutmut_' in os.environ.get('MUTANT_UNDER_TEST', '') and item.path.name not in chosen.split(','):
        pytest.skip("not among the tests that judge this module's mutants (mutation.TESTS)")


def pytest_report_header(config):
    return [f'{name} under test: {path}' for name, path in substituted().items()]


def pytest_ignore_collect(collection_path, config):
    if substituted() and collection_path.suffix == '.py' and collection_path.name not in COURSE_API_FILES:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    if not substituted():
        return
    skip = pytest.mark.skip(reason='HW2_MODELS / HW2_LOSSES set: only course_api tests run against substituted files')
    for item in items:
        if item.get_closest_marker('course_api') is None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Every test runs on the CPU, whatever accelerator the machine has: the engine's device choice
    is pinned by HW2_DEVICE, and subprocesses and notebook kernels inherit it (and see no CUDA
    device). Tests that simulate a GPU undo the pin themselves."""
    monkeypatch.setenv('HW2_DEVICE', 'cpu')
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')


def an_hour_per_step(monkeypatch):
    """The engine's clock stands at 1000 s and jumps an hour after each training step, so a
    --minutes limit passes at the first step on any machine, however loaded (no race)."""
    import time
    import types

    import experiments
    from engine import jobs, runs, train
    clock = dict(now=1000.0)
    fake = types.SimpleNamespace(time=lambda: clock['now'], strftime=time.strftime)
    for module in (experiments, jobs, runs, train):
        monkeypatch.setattr(module, 'time', fake)
    step = train.Training.step

    def step_then_an_hour(self, *args):
        step(self, *args)
        clock['now'] += 3600
    monkeypatch.setattr(train.Training, 'step', step_then_an_hour)
