"Tests of notebooks 06 (devices, hooks, CNN init) and 07 (batch norm and relatives, LSUV), on small synthetic data."
import re, subprocess, sys, tempfile
from pathlib import Path
import pytest
import numpy as np, torch
from torch import nn, optim
import torch.nn.functional as F
from functools import partial
from exp.nb_07 import (DataBunch, Dataset, get_dls, Callback, get_runner, get_learn_run, conv_layer, DeviceCallback, CudaCallback,
                       BatchTransformXCallback, view_tfm, default_device, Hook, Hooks, ListContainer, append_stats, BatchNorm,
                       LayerNorm, InstanceNorm, RunningBatchNorm, get_batch, find_modules, is_lin_layer, lsuv_module,
                       model_summary, _lsuv_shift)
from exp.nb_07 import test_close as assert_close      # imported under another name so that pytest does not collect it

ROOT = Path(__file__).resolve().parents[1]

def synthetic_data(n=512, bs=64, seed=0):
    "A learnable 10-class problem on 784 features: the label is the argmax of a fixed random projection."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    return DataBunch(*get_dls(Dataset(x[:n - 128], y[:n - 128]), Dataset(x[n - 128:], y[n - 128:]), bs), c_in=1, c_out=10)

CBFS = [DeviceCallback, partial(BatchTransformXCallback, view_tfm(1, 28, 28))]

def valid_loss(learn):
    learn.model.eval()
    dev = next(learn.model.parameters()).device
    with torch.no_grad():
        return sum(F.cross_entropy(learn.model(xb.to(dev).view(-1, 1, 28, 28)), yb.to(dev), reduction='sum').item()
                   for xb, yb in learn.data.valid_dl) / len(learn.data.valid_ds)

class Interrupt(Callback):
    order = 10
    def after_backward(self):
        if self.run.n_iter == 2: raise KeyboardInterrupt()

@pytest.mark.parametrize('layer', [partial(conv_layer, bn=False), conv_layer])
def test_hooks_removed_after_keyboard_interrupt(layer):
    torch.manual_seed(0)
    data = synthetic_data()
    learn, run = get_learn_run(data, [8, 16], layer, 0.05, cbs=CBFS + [Interrupt], leak=0.1, sub=0.4)
    with pytest.raises(KeyboardInterrupt):
        with Hooks(learn.model, append_stats) as hooks: run.fit(2, learn)
    assert len(hooks[0].stats[0]) == 3                      # interrupted in the third batch, after its forward pass
    assert all(len(m._forward_hooks) == 0 for m in learn.model.modules())
    before = valid_loss(learn)
    _, run2 = get_runner(learn.model, data, cbs=CBFS)
    learn.opt = optim.SGD(learn.model.parameters(), lr=0.05, momentum=0.9)
    run2.fit(3, learn)
    assert valid_loss(learn) < before                        # the model still trains

def test_hook_context_manager_and_del():
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with Hooks(m, append_stats) as hs:
        assert sum(len(o._forward_hooks) for o in m.modules()) == 2
        del hs[0]
        assert len(m[0]._forward_hooks) == 0 and len(m[1]._forward_hooks) == 1
    assert len(m[1]._forward_hooks) == 0

def test_list_container_indexing():
    t = ListContainer(list('abcdef'))
    assert t[[True, False, True, False, False, True]] == ['a', 'c', 'f']
    assert t[np.array([False] * 5 + [True])] == ['f']
    assert t[[0, 2, 5]] == ['a', 'c', 'f'] and t[torch.tensor([1, 1])] == ['b', 'b']
    assert t[1] == 'b' and t[-1] == 'f' and t[1:3] == ['b', 'c'] and t[[]] == []
    with pytest.raises(ValueError): t[[True, False]]                 # a mask needs one entry per item
    with pytest.raises(IndexError): t[[0, 9]]
    assert repr(ListContainer(range(12))).endswith('9, ...]')

def test_device_callback_default_and_alias():
    assert CudaCallback is DeviceCallback
    dev = default_device()
    assert DeviceCallback().device == dev
    expected = 'cuda' if torch.cuda.is_available() else ('mps' if torch.backends.mps.is_available() else 'cpu')
    assert dev.type == expected
    assert DeviceCallback('cpu').device == torch.device('cpu')

def test_to_device_nested_and_device_callback_moves_batches():
    from exp.nb_06 import to_device, Learner, Runner
    b = to_device((torch.zeros(2), [torch.ones(3)], {'y': torch.arange(3)}, 'label'), 'cpu')
    assert torch.equal(b[1][0], torch.ones(3)) and torch.equal(b[2]['y'], torch.arange(3)) and b[3] == 'label'
    class Seen(Callback):
        order = 10
        def after_pred(self): self.seen = (self.run.xb.device.type, next(self.run.model.parameters()).device.type)
    model, seen = nn.Linear(784, 10), Seen()
    learn = Learner(model, optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, synthetic_data())
    Runner(cbs=[DeviceCallback('cpu'), seen]).fit(1, learn)
    assert seen.seen == ('cpu', 'cpu')

def test_list_container_setitem_delitem():
    t = ListContainer(range(10))
    t[0] = 'a'
    del t[1]
    assert (len(t), t[0], t[1]) == (9, 'a', 2)

def test_get_runner_callback_factories_and_opt_func():
    learn, run = get_runner(nn.Linear(2, 2), synthetic_data(), opt_func=partial(optim.SGD, momentum=0.9),
                            cbs=[partial(BatchTransformXCallback, view_tfm(2, 392))])
    assert learn.opt.param_groups[0]["momentum"] == 0.9
    assert any(isinstance(c, BatchTransformXCallback) for c in run.cbs)

def test_append_stats_histogram_counts_values_in_range():
    lin = nn.Linear(784, 10)
    x = torch.randn(64, 784) * 20
    with Hook(lin, append_stats) as h: out = lin(x)
    assert h.stats[2][0].sum().item() == ((out >= -7) & (out <= 7)).sum().item()

def test_init_cnn_reaches_nested_convs():
    from exp.nb_06 import _init_cnn
    nested = nn.Sequential(nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3))), nn.Conv2d(4, 4, 3))
    _init_cnn(nested, lambda w, a: w.data.fill_(a))
    assert (nested[0][0][0].weight == 0.1).all() and (nested[1].weight == 0.1).all()
    assert (nested[1].bias == 0).all()

def test_no_cuda_calls_in_exported_code():
    for f in ('nb_06.py', 'nb_07.py'):
        assert not re.search(r'\.cuda\(', (ROOT / 'exp' / f).read_text()), f

def test_get_learn_run_argument_order():
    data = synthetic_data()
    learn, run = get_learn_run(data, [4, 8], conv_layer, 0.3, None, partial(optim.SGD, momentum=0.5), True, leak=0.1)
    assert learn.opt.param_groups[0]['lr'] == 0.3 and learn.opt.param_groups[0]['momentum'] == 0.5
    assert learn.model[0][1].leak == 0.1 and isinstance(learn.model[0][2], nn.BatchNorm2d)

def test_batchnorm_matches_pytorch_train_and_eval():
    torch.manual_seed(1)
    ref, bn = nn.BatchNorm2d(5, momentum=0.1, eps=1e-5), BatchNorm(5, mom=0.1, eps=1e-5)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2)
        ref.bias.uniform_(-1, 1)
    bn.load_state_dict(ref.state_dict())
    for step in range(6):
        x = torch.randn(4, 5, 3, 3) * (1 + step) - step
        assert_close(bn(x), ref(x), eps=1e-4)
    assert_close(bn.running_mean, ref.running_mean)
    assert_close(bn.running_var, ref.running_var)
    bn.eval()
    ref.eval()
    x = torch.randn(2, 5, 3, 3) * 4 + 1
    assert_close(bn(x), ref(x), eps=1e-4)
    other_mom = BatchNorm(5, mom=0.5)
    other_mom(torch.randn(4, 5, 3, 3) + 10)
    assert 4 < other_mom.running_mean.mean() < 6            # momentum = weight of the new batch, as in PyTorch

def test_layernorm_instancenorm_numerics():
    x = torch.randn(3, 4, 5, 5) * 2 + 1
    assert_close(LayerNorm()(x), F.layer_norm(x, x.shape[1:], eps=1e-5), eps=1e-4)
    inorm = InstanceNorm(4)
    with torch.no_grad():
        inorm.weight.uniform_(0.5, 1.5)
        inorm.bias.uniform_(-1, 1)
    assert_close(inorm(x), F.instance_norm(x, weight=inorm.weight, bias=inorm.bias, eps=1e-5), eps=1e-4)
    ref = nn.InstanceNorm2d(4, affine=True)
    ref.load_state_dict(inorm.state_dict())      # same parameter names as PyTorch's
    assert_close(inorm(x), ref(x), eps=1e-4)

def test_running_batchnorm_repeated_batch_is_batchnorm():
    rbn, x = RunningBatchNorm(3), torch.randn(16, 3, 4, 4) * 3 + 2
    expected = F.batch_norm(x, None, None, training=True, eps=1e-5)
    for _ in range(4): assert_close(rbn(x), expected, eps=1e-4)
    rbn.eval()
    assert_close(rbn(x), expected, eps=1e-4)

def test_running_batchnorm_untrained_and_momentum():
    x = torch.randn(2, 6, 4, 4)
    assert_close(RunningBatchNorm(6).eval()(x), x, eps=1e-4)   # before any training: the identity
    assert_close(RunningBatchNorm(6).batch_mom(2), 0.1)
    assert RunningBatchNorm(6).batch_mom(256) > 0.9

def test_running_batchnorm_gradients_flow():
    rbn, x = RunningBatchNorm(6), torch.randn(2, 6, 4, 4, requires_grad=True)
    rbn(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and rbn.weight.grad is not None and torch.isfinite(x.grad).all()

def test_is_lin_layer():
    from exp.nb_07 import GeneralRelu
    layers = nn.Conv1d(1, 1, 1), nn.Conv3d(1, 1, 1), nn.Linear(2, 2), GeneralRelu(), nn.BatchNorm2d(2)
    assert [is_lin_layer(l) for l in layers] == [True, True, True, False, False]

def test_batchnorm_needs_two_values_per_channel():
    with pytest.raises(ValueError, match='1 value per channel'): BatchNorm(6).train()(torch.randn(1, 6, 1, 1))

def test_conv_layer_without_bn():
    l = conv_layer(8, 16, bn=False)
    assert len(l) == 2 and l[0].bias is not None

def test_lsuv_bias_free_and_bounded():
    torch.manual_seed(0)
    data = synthetic_data()
    learn, run = get_learn_run(data, [8, 16], conv_layer, 0.1, cbs=CBFS, leak=0.1, sub=0.4)
    xb, _ = get_batch(data.train_dl, run)
    calls = []
    with Hook(learn.model, lambda h, m, i, o: calls.append(1)):
        mean, std = lsuv_module(learn.model[0][0], xb, learn.model, tol=1e-12, max_iters=3)   # tol unreachable
    assert len(calls) <= 3 + 1 and learn.model[0][0].bias is None
    for m in find_modules(learn.model, is_lin_layer):
        mean, std = lsuv_module(m, xb, learn.model)
        assert abs(std - 1) < 1e-2
        if isinstance(m, nn.Linear): assert abs(mean) < 1e-2   # the head has a bias to shift

def test_lsuv_shift_choice_and_dead_layer():
    l = conv_layer(1, 4, bn=False, sub=0.4)
    _lsuv_shift(l, l[0])(0.1)
    assert_close(l[1].sub, 0.5)                                   # shifts the GeneralRelu
    l = conv_layer(1, 4)
    assert _lsuv_shift(l, l[0]) is None and _lsuv_shift(l[0], l[0]) is None   # no bias
    lin = nn.Linear(2, 2)
    b = lin.bias.detach().clone()
    _lsuv_shift(lin, lin)(0.5)
    assert_close(lin.bias, b - 0.5)
    dead = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    dead[0].weight.data.zero_()
    dead[0].bias.data.fill_(-1.)
    with pytest.raises(ValueError, match='dead'): lsuv_module(dead, torch.randn(2, 1, 8, 8), dead)

def test_get_batch_restores_the_runner_and_find_modules_stops_at_a_match():
    data = synthetic_data()
    learn, run = get_learn_run(data, [4, 8], conv_layer, 0.3, cbs=CBFS)
    xb, _ = get_batch(data.train_dl, run)
    assert xb.shape == (64, 1, 28, 28) and xb.device.type == default_device().type
    assert run.in_train is False and run.xb is None
    assert find_modules(learn.model, lambda o: isinstance(o, nn.Sequential)) == [learn.model]

def test_model_summary_keeps_mode_and_batchnorm_stats(capsys):
    data = synthetic_data()
    learn, run = get_learn_run(data, [4, 8], conv_layer, 0.1, cbs=CBFS)
    bn = learn.model[0][2]
    before = bn.running_mean.clone()
    shapes = model_summary(run, learn, data)
    assert learn.model.training and torch.equal(bn.running_mean, before.to(bn.running_mean.device))
    assert shapes[-1] == (128, 10) and '->' in capsys.readouterr().out

def test_lsuv_from_fresh_interpreter():
    code = '''
from exp.nb_07 import *
x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
data = DataBunch(*get_dls(Dataset(x, y), Dataset(x[:64], y[:64]), 64), c_in=1, c_out=10)
learn, run = get_learn_run(data, [8, 16], partial(conv_layer, bn=False), 0.1,
                           cbs=[DeviceCallback, partial(BatchTransformXCallback, view_tfm(1, 28, 28))], leak=0.1, sub=0.4)
xb, yb = get_batch(data.train_dl, run)
res = [lsuv_module(m, xb, learn.model) for m in learn.model[:2]]
assert all(abs(s - 1) < 1e-2 and abs(m) < 1e-2 for m, s in res), res
print('ok')
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == 'ok'
