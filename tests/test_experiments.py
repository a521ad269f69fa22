"""The experiment engine: the importance-sampling estimator against a model with a closed-form
likelihood and against the course's plain loop, the 6e remedies, resuming, failures, and the
whole homework end to end at the smoke profile."""
import json
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch

import config as C
import evaluate as V
import experiments as E
import train as T
from reference import DTYPE, LinearGaussianModel, broken_compile
import losses
import models

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# KL warm-up and free bits

def test_kl_weight_rises_linearly_from_zero_to_one():
    betas = [T.kl_weight(step, 100) for step in range(301)]
    assert betas[0] == 0.0
    assert betas[:101] == pytest.approx([s / 100 for s in range(101)])
    assert all(b == 1.0 for b in betas[100:])
    assert T.kl_weight(7, 0) == 1.0                     # no warm-up: the plain ELBO
    assert T.kl_weight(19, 100, start_step=20) == 1.0   # before the warm-up starts: the plain ELBO
    assert T.kl_weight(20, 100, start_step=20) == 0.0
    assert T.kl_weight(70, 100, start_step=20) == 0.5
    assert T.kl_weight(120, 100, start_step=20) == 1.0


def test_free_bits_floor_has_no_gradient_below_it():
    kl = torch.tensor([[0.05, 1.0, 0.3], [0.15, 2.0, 0.1]], requires_grad=True)  # batch means 0.1, 1.5, 0.2
    total = T.free_bits_kl(kl, 0.25)
    assert total.item() == pytest.approx(0.25 + 1.5 + 0.25)
    total.backward()
    assert torch.equal(kl.grad[:, [0, 2]], torch.zeros(2, 2))  # under the floor: no gradient
    assert torch.equal(kl.grad[:, 1], torch.full((2,), 0.5))   # above it: d mean / d entry = 1 / B


def tiny_vae(flows=0, autoregress=False, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    f = models.VAEEncoder(capacity=4, depth=1, flows=flows)
    g = models.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=autoregress, pixelcnn_capacity=4, pixelcnn_depth=1)
    g.autoregress = autoregress
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random weights of a visible size, so every path matters
        for p in list(f.parameters()) + list(g.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return f.to(dtype).eval(), g.to(dtype).eval()


def test_free_bits_objective_drops_the_kl_gradient_of_dimensions_under_the_floor():
    """With a floor above every dimension's KL, the training objective is recon + 49 lambda and its
    gradient is that of the reconstruction term alone."""
    f, g = tiny_vae(dtype=torch.float32)
    nets = dict(encoder=f, decoder=g)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3, dtype=torch.float32), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    cfg = dict(C.config('6e-freebits', 'smoke'), free_bits=1e3)
    objective, recon, kl = T.objective(nets, cfg, x, eps)
    assert objective.item() == pytest.approx(recon.item() + 49e3)
    params = [p for net in nets.values() for p in net.parameters()]
    grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    recon_grads = torch.autograd.grad(recon, params, allow_unused=True)
    for a, b in zip(grads, recon_grads):
        assert (a is None and b is None) or torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# Importance sampling

def test_importance_sampling_on_a_linear_gaussian_model():
    """z ~ N(0, I_2), x | z ~ N(Az + b, s^2 I_3): log p(x) is known exactly. With an imperfect
    Gaussian q, the estimator V.importance_sample lies below log p(x) on average (handout, Problem
    2), equals the ELBO log p(x) - KL(q || p(z|x)) at M = 1, and the gap shrinks as M grows."""
    g = torch.Generator().manual_seed(0)
    model = LinearGaussianModel(g)
    x = model.b + model.A @ torch.randn(2, generator=g, dtype=DTYPE) + model.s * torch.randn(3, generator=g, dtype=DTYPE)
    log_px = model.log_marginal(x).item()
    post = model.posterior(x)
    q = torch.distributions.MultivariateNormal(post.loc + 0.4, torch.diag(post.covariance_matrix.diagonal() * 1.5))
    kl = torch.distributions.kl_divergence(q, post).item()
    repeats = 4000

    def draw(m, start):  # (m, repeats, 2): independent estimates side by side
        return q.sample((m, repeats))

    def log_weight(z):  # log p(x | z) + log r(z) - log q(z | x)
        return model.log_joint(x, z) - q.log_prob(z)

    torch.manual_seed(0)
    gaps = {}
    for M in (1, 10, 100):
        est = V.importance_sample(draw, log_weight, M, chunk=7)  # (repeats,)
        se = (est.std() / math.sqrt(repeats)).item()
        gaps[M] = log_px - est.mean().item()
        assert gaps[M] > -3 * se
        if M == 1:
            assert gaps[1] == pytest.approx(kl, abs=4 * se)
            assert gaps[1] > 10 * se  # a clear gap to shrink
    assert gaps[1] > gaps[10] > gaps[100]
    assert gaps[100] < 0.2 * gaps[1]


@pytest.mark.parametrize('flows,autoregress', [(0, False), (0, True), (2, True)])
def test_fast_importance_sampling_equals_the_course_loop(flows, autoregress):
    f, g = tiny_vae(flows=flows, autoregress=autoregress)
    gen = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3, dtype=torch.float64), generator=gen)
    eps = torch.randn(5, 12, 49, generator=gen, dtype=torch.float64)  # (N, M, 49), the same draws for both
    fast = V.importance_sampled_nll(f, g, x, samples=12, chunk=5, batch=2, eps=eps)
    naive = V.importance_sample_naive(f, g, x, eps, chunk=4)
    assert fast.shape == (5,)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Resuming and failures (smoke profile, in process)

def history(results_dir, part='6b'):
    """The history of a smoke run of `part` under results_dir."""
    with open(os.path.join(results_dir, 'smoke', part, 'history.json')) as fh:
        return json.load(fh)


def test_resume_continues_the_step_counter(tmp_path, capsys):
    one = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    assert one['steps'] == 2 and one['epochs'] == 1
    two = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'resuming from' in capsys.readouterr().out
    assert two['steps'] == 4 and two['epochs'] == 2
    h = history(tmp_path)
    assert h['step'] == [0, 1, 2, 3] and h['test_epoch'] == [1, 2]
    # the same numbers as two epochs in one go
    straight = E.run_part('6b', profile='smoke', results_dir=str(tmp_path / 'straight'), progress=False, epochs=2)
    assert history(tmp_path / 'straight')['loss'] == h['loss']
    assert straight['values'] == two['values']
    # run again: nothing to do
    again = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'already done' in capsys.readouterr().out and again['values'] == two['values']


def test_resume_mid_epoch_after_an_interruption(tmp_path):
    """A run stopped after one step of the second epoch (a time limit already passed) resumes from
    its mid-epoch checkpoint to exactly the numbers of an unbroken run."""
    settings = dict(profile='smoke', device='cpu', progress=False, batch_size=50)  # 4 steps an epoch
    reference = E.run_part('6c', results_dir=str(tmp_path / 'reference'), **settings)
    E.run_part('6c', results_dir=str(tmp_path), epochs=1, **settings)
    os.remove(tmp_path / 'smoke' / '6c' / 'metrics.json')  # an unfinished run of 2 epochs, 1 done
    assert E.run_part('6c', results_dir=str(tmp_path), stop_at=0.0, **settings) is None  # one more step, then stop
    ck = torch.load(tmp_path / 'smoke' / '6c' / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['batch'], ck['step']) == (1, 1, 5)
    resumed = E.run_part('6c', results_dir=str(tmp_path), **settings)
    assert history(tmp_path, '6c')['step'] == list(range(8))
    assert history(tmp_path, '6c')['loss'] == history(tmp_path / 'reference', '6c')['loss']
    assert resumed['values'] == reference['values']


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    path = tmp_path / 'smoke' / '6a' / 'checkpoint.pt'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(E.CheckpointError, match=r'(?s)checkpoint\.pt.*--fresh'):
        E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2)
    fresh = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2, fresh=True)
    assert fresh['epochs'] == 2


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    for name in ('metrics.json', 'model.pt'):  # an unfinished run: only its checkpoint is there
        os.remove(tmp_path / 'smoke' / '6b' / name)
    with pytest.raises(E.CheckpointError, match='dec_depth'):
        E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=2, dec_depth=2)


def test_finished_run_with_other_settings_is_never_trained_over(tmp_path):
    done = E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    files = {p: p.read_bytes() for p in (tmp_path / 'smoke' / '6b').iterdir() if p.is_file()}
    for overrides in (dict(dec_depth=2), dict(is_images=5), dict(epochs=2, lr=0.01)):
        with pytest.raises(E.ResultsExistError, match=r'(?s)finished run with other settings.*--results-dir.*--fresh'):
            E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, **{'epochs': 1, **overrides})
    assert {p: p.read_bytes() for p in files} == files  # every file of the finished run is kept as it was
    # the same part at another profile or precision goes to its own directory
    E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, precision='bf16')
    assert os.path.exists(tmp_path / 'smoke-bf16' / '6b' / 'metrics.json')
    assert E.run_part('6b', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1) == done


def test_string_parameters_mean_what_they_say(tmp_path):
    """papermill's -p passes 'false' as a string: it must not mean True."""
    done = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    again = E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1, fresh='false')
    assert again == done  # not deleted and retrained
    assert C.part_for('false', '0', 'None') == '6b' and C.part_for('true', 0) == '6c'
    assert C.part_for(False, '8') == '6d' and C.part_for('1', 8, 'freebits') == '6e-freebits'
    for bad, match in ((dict(autoregress='maybe'), 'autoregress must be true or false'),
                       (dict(flows=2), 'flows must be one of 0, 8'), (dict(remedy='strong'), 'remedy must be')):
        with pytest.raises(ValueError, match=match):
            C.part_for(**bad)
    with pytest.raises(ValueError, match='fresh must be true or false'):
        E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, fresh='yes please')
    for epochs in (0, -1):
        with pytest.raises(ValueError, match='epochs must be an integer >= 1'):
            C.config('6a', 'smoke', epochs=epochs)


def test_nan_gradient_stops_before_the_step_and_nothing_non_finite_is_saved(tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (in the resumed second epoch): the step is not taken,
    the checkpoint of epoch 1 is kept with finite weights, and the message, also in run.log, names it."""
    objective = T.objective

    def nan_gradient(nets, cfg, x, eps, beta=1.0):
        loss, recon, kl = objective(nets, cfg, x, eps, beta)
        p = next(nets['decoder'].parameters())
        return loss + 0.0 * torch.sqrt(p.sum() * 0.0), recon, kl  # value unchanged; d sqrt(0) = inf, times 0: NaN

    E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    model = (tmp_path / 'smoke' / '6b' / 'model.pt').read_bytes()
    os.remove(tmp_path / 'smoke' / '6b' / 'metrics.json')
    monkeypatch.setattr(T, 'objective', nan_gradient)
    with pytest.raises(E.NonFiniteLossError, match=r'gradient norm is nan.*epoch 2, batch 0.*holds epoch 1 \+ 0'):
        E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False)
    out = tmp_path / 'smoke' / '6b'
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['step']) == (1, 2)
    assert all(torch.isfinite(v).all() for m in ck['models'].values() for v in m['state_dict'].values())
    assert 'gradient norm is nan' in (out / 'run.log').read_text()
    assert (out / 'model.pt').read_bytes() == model  # the model of epoch 1, not overwritten


def test_second_run_of_the_same_part_refuses_while_the_first_lives(tmp_path):
    out = tmp_path / 'smoke' / '6a'
    out.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out / 'run.lock').write_text(str(sleeper.pid))
        with pytest.raises(E.RunLockedError, match=f'in use by process {sleeper.pid}'):
            E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)
    finally:
        sleeper.kill()
        sleeper.wait()
    (out / 'checkpoint.pt.999999.tmp').write_bytes(b'half a checkpoint')  # left by a killed writer
    E.run_part('6a', profile='smoke', results_dir=str(tmp_path), progress=False, epochs=1)  # a dead pid's lock is cleared
    assert not os.path.exists(out / 'run.lock') and not os.path.exists(out / 'checkpoint.pt.999999.tmp')


def test_nan_loss_stops_the_part_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN training loss in the resumed second epoch: the run stops at its first step, names it,
    and keeps the checkpoint of epoch 1 with finite weights."""
    E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1)
    objective = T.objective
    monkeypatch.setattr(T, 'objective', lambda *a, **k: tuple(v * float('nan') for v in objective(*a, **k)))
    with pytest.raises(E.NonFiniteLossError, match=r'part 6b: the training loss is nan at epoch 2, batch 0 of the '
                                                    r'epoch, step 2') as err:
        E.run_part('6b', profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=2)
    assert 'holds epoch 1 + 0 batches' in str(err.value)
    ck = torch.load(tmp_path / 'smoke' / '6b' / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['step']) == (1, 2)
    assert all(torch.isfinite(v).all() for v in ck['models']['decoder']['state_dict'].values())


# ---------------------------------------------------------------------------------------------
# The whole homework, one command

def test_all_parts_end_to_end_and_reproduce_commands(tmp_path):
    results = tmp_path / 'results'
    run = subprocess.run([sys.executable, 'experiments.py', 'all', '--profile', 'smoke', '--results-dir', str(results),
                          '--no-progress'], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'all remaining parts' in run.stdout
    for part in E.PARTS:
        with open(results / 'smoke' / part / 'metrics.json') as fh:
            m = json.load(fh)
        assert m['profile'] == 'smoke' and m['device'] == 'cpu' and m['epochs'] == 2
        for name in ('samples', 'loss') + (('reconstructions', 'kl') if part != '6a' else ()):
            with open(m['figures'][name], 'rb') as fh:
                assert fh.read(8) == b'\x89PNG\r\n\x1a\n'
        assert os.path.exists(results / 'smoke' / part / 'model.pt')
        assert all(math.isfinite(v['value']) for v in m['values'].values())
    assert '| 6e-freebits |' in (results / 'smoke' / 'summary.md').read_text()
    rows = json.loads((results / 'smoke' / 'summary.json').read_text())
    assert {r['part'] for r in rows} == set(E.PARTS)
    keys = {'part', 'quantity', 'value', 'stderr', 'n_images', 'profile', 'device', 'epochs', 'train_seconds',
            'precision', 'model', 'reproduce'}
    assert all(keys <= set(r) for r in rows)
    quantities = {(r['part'], r['quantity']) for r in rows}
    assert {('5b', 'test_elbo'), ('5c', 'test_elbo_mc'), ('6a', 'test_nll'), ('6b', 'test_nll_is16'),
            ('6c', 'kl'), ('6e-weak', 'active_units')} <= quantities
    for part, quantity in (('6c', 'test_nll_is16'), ('5c', 'test_elbo')):
        row = next(r for r in rows if (r['part'], r['quantity']) == (part, quantity))
        argv = shlex.split(row['reproduce'])
        assert argv[0] == 'python'
        out = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert float(out.stdout.strip().splitlines()[-1]) == row['value']
    # `verify` runs the commands the same way and catches a reported number that no run produced
    checked = E.verify(str(results), parts=['6a'])
    assert checked and all(c['ok'] and c['reproduced'] == c['reported'] for c in checked)
    rows[[r['part'] for r in rows].index('6a')]['value'] += 1.0
    (results / 'smoke' / 'summary.json').write_text(json.dumps(rows))
    assert not E.verify(str(results), parts=['6a'])[0]['ok']


def test_fused_adam_takes_the_same_step_as_plain_adam():
    """experiments.adam (fused kernel) and torch.optim.Adam give the same parameters after a few steps."""
    torch.manual_seed(0)
    a = models.VAEEncoder(capacity=4, depth=1)
    b = models.VAEEncoder(capacity=4, depth=1)
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    opt_a, opt_b = T.adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    x = torch.rand(3, 1, 28, 28)
    eps = torch.randn(3, 1, 7, 7)
    for _ in range(3):
        for net, opt in ((a, opt_a), (b, opt_b)):
            z, logqzx, mu, logvar = net(x, eps)
            loss = (z.pow(2).sum(1) - logqzx).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(a.parameters(), start))  # every parameter moved


def test_gaussian_decoder_starts_at_the_mean_digit():
    """The engine starts the Gaussian decoder's output bias at logit(mean training image): with the
    trunk's own contribution zeroed, g(z) is the (clamped) mean digit for any z; binary decoders
    keep their bias at 0."""
    cfg = C.config('5b', 'smoke', init_output_bias=True)
    nets = T.build(C.model_spec(cfg), 'cpu')
    T.init_output_bias(nets, cfg, 'cpu')
    g = nets['decoder']
    with torch.no_grad():
        g.image.weight.zero_()
        g.image.bias.zero_()
    mean = T.load_data(cfg, train=True).mean(0, keepdim=True).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(g(torch.randn(3, 49)), mean.expand(3, 1, 28, 28), atol=1e-6, rtol=1e-5)
    for cfg in (C.config('6b', 'smoke', init_output_bias=True), C.config('5b', 'full')):  # not binary; not full
        nets = T.build(C.model_spec(cfg), 'cpu')
        T.init_output_bias(nets, cfg, 'cpu')
        assert nets['decoder'].bias.abs().max() == 0


# ---------------------------------------------------------------------------------------------
# Opt-in bfloat16 training

@pytest.mark.parametrize('part', ['6a', '5b', '6e-baseline'])
def test_bf16_training_objective_is_close_to_float32_and_keeps_float32_parameters(part):
    """--precision bf16 runs the networks under autocast and the losses in float32: the objective
    stays within bfloat16 rounding of the float32 one, every gradient is float32, and fp32 is
    plain float32 (no autocast: identical to calling the networks directly)."""
    cfg = C.config(part, 'smoke')
    torch.manual_seed(0)
    nets = T.build(C.model_spec(cfg), 'cpu')
    if cfg['autoregress']:
        nets['decoder'].autoregress = True
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(8, 49, generator=torch.Generator().manual_seed(1))
    conv = next(m for net in nets.values() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    full = T.objective(nets, cfg, x, eps)
    low = T.objective(nets, dict(cfg, precision='bf16'), x, eps)
    assert seen == [torch.float32, torch.bfloat16]   # the objective really runs the networks in bfloat16
    for a, b in zip(low, full):
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), rel=2e-2, abs=0.5)
    params = [p for net in nets.values() for p in net.parameters()]
    grads = torch.autograd.grad(low[0], params, allow_unused=True)
    assert all(g is None or (g.dtype == torch.float32 and torch.isfinite(g).all()) for g in grads)
    if part == '6a':
        assert torch.equal(full[0], losses.cross_entropy(nets['pixelcnn'](x), x))


def test_precision_setting_is_checked_and_older_checkpoints_still_match():
    with pytest.raises(ValueError, match='precision must be one of fp32, bf16'):
        C.config('6a', 'smoke', precision='fp16')
    cfg = C.config('6a', 'smoke')
    saved = {k: v for k, v in cfg.items() if k != 'precision'}  # a configuration saved before the setting existed
    assert C.settings_differ(saved, cfg) == []
    assert C.settings_differ(saved, dict(cfg, precision='bf16')) == ['precision']
    p, x = models.PixelCNN(capacity=4, depth=1), torch.zeros(2, 1, 28, 28)
    with T.low_precision('bf16', 'cpu'):
        assert p.embed(x).dtype == torch.bfloat16   # the convolutions really run in bfloat16
    with T.low_precision('fp32', 'cpu'):
        assert p.embed(x).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Compiled importance sampling

def test_compiled_importance_sampling_equals_eager_and_follows_weight_updates():
    """compile=True (torch.compile with freezing) computes the same estimate as eager on the same
    draws, also after the weights change in place (no stale frozen copy)."""
    f, g = tiny_vae(flows=2, autoregress=True, dtype=torch.float32)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, 12, 49, generator=torch.Generator().manual_seed(1))
    for scale in (1.0, 1.3):
        with torch.no_grad():
            for p in list(f.parameters()) + list(g.parameters()):
                p.mul_(scale)
        fast = V.importance_sampled_nll(f, g, x, samples=12, chunk=6, batch=2, eps=eps, compile=True)
        eager = V.importance_sampled_nll(f, g, x, samples=12, chunk=6, batch=2, eps=eps)
        torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-4)


def test_compile_failure_falls_back_to_eager_with_a_message(monkeypatch, capsys):
    monkeypatch.setattr(torch, 'compile', broken_compile)
    f, g = tiny_vae(dtype=torch.float32)
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 8, 49, generator=torch.Generator().manual_seed(1))
    fast = V.importance_sampled_nll(f, g, x, samples=8, chunk=4, batch=2, eps=eps, compile=True)
    assert torch.equal(fast, V.importance_sampled_nll(f, g, x, samples=8, chunk=4, batch=2, eps=eps))
    assert 'no C++ compiler' in capsys.readouterr().err
