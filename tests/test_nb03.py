"Fast checks of the names exported by notebooks 02 and 03 (synthetic data only; no dataset needed)."
import math
import pytest
import torch
import torch.nn.functional as TF
from exp.nb_03 import (normalize, mse, nn, F, optim, DataLoader, SequentialSampler, RandomSampler, accuracy,
                        Dataset, get_dls, log_softmax, logsumexp, nll, cross_entropy, fit)
# the notebooks' test helpers, renamed so that pytest does not collect them as tests
from exp.nb_03 import test_close as check_close, test_eq as check_eq


def test_chain_reexports():
    import exp.nb_03 as m
    for name in ['test_close', 'hardware_info', 'load_fashion_mnist', 'FMNIST_CLASSES', 'get_data', 'normalize',
                 'mse', 'nn', 'init', 'F', 'optim', 'DataLoader', 'SequentialSampler',
                 'RandomSampler', 'accuracy', 'Dataset', 'get_dls', 'log_softmax', 'logsumexp', 'nll',
                 'cross_entropy', 'fit']:
        assert name in m.__all__, name


def test_normalize():
    x = torch.rand(100, 7) * 3 + 2
    xn = normalize(x, x.mean(), x.std())
    check_close(xn.mean(), 0., eps=1e-3)
    check_close(xn.std(), 1., eps=1e-3)
    with pytest.raises(AssertionError): check_close(0.01, 0., eps=1e-3)


def test_mse_refuses_broadcasting():
    p, t = torch.randn(6, 1), torch.randn(6)
    check_close(mse(p, t), TF.mse_loss(p.squeeze(-1), t))
    with pytest.raises(ValueError, match='shape'): mse(torch.randn(6, 2), t)
    with pytest.raises(ValueError, match='shape'): mse(torch.randn(5, 1), t)


def test_logsumexp_log_softmax_stable():
    x = torch.randn(4, 3, 10) * 50
    check_close(logsumexp(x), x.logsumexp(-1), eps=1e-4)
    big = torch.tensor([[1e4, 1e4 - 1, -1e4]])
    assert torch.isfinite(logsumexp(big)).all()
    check_close(log_softmax(big), TF.log_softmax(big, -1))
    edge = torch.tensor([[-math.inf, -math.inf], [math.inf, 0.], [-math.inf, 3.]])
    check_eq(logsumexp(edge), edge.logsumexp(-1))


def test_nll_cross_entropy_vs_torch():
    logits, targ = torch.randn(32, 10) * 5, torch.randint(0, 10, (32,))
    check_close(nll(TF.log_softmax(logits, -1), targ), TF.nll_loss(TF.log_softmax(logits, -1), targ))
    check_close(cross_entropy(logits, targ), TF.cross_entropy(logits, targ))


def test_accuracy():
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    acc = accuracy(out, torch.tensor([1, 1, 1, 0]))
    check_eq(acc, torch.tensor(0.75))
    assert acc.dtype == torch.float32


def test_dataset_and_get_dls():
    x, y = torch.randn(50, 3), torch.arange(50)
    ds = Dataset(x, y)
    assert len(ds) == 50
    xb, yb = ds[torch.tensor([3, 7])]
    check_eq(yb, torch.tensor([3, 7]))
    check_eq(xb, x[[3, 7]])
    tdl, vdl = get_dls(ds, ds, 8)
    assert tdl.batch_size == 8 and vdl.batch_size == 16
    assert isinstance(tdl.sampler, RandomSampler) and isinstance(vdl.sampler, SequentialSampler)
    check_eq(torch.cat([yb for _, yb in vdl]), y)
    check_eq(torch.cat([yb for _, yb in tdl]).sort()[0], y)


def test_fit_learns_and_weights_by_batch_size(capsys):
    torch.manual_seed(0)
    # two well separated Gaussian blobs; 101 validation rows so the last batch holds a single row
    def blobs(n):
        y = torch.randint(0, 2, (n,))
        return torch.randn(n, 2) + (y[:, None] * 2 - 1) * 3., y
    train_ds, valid_ds = Dataset(*blobs(400)), Dataset(*blobs(101))
    tdl, vdl = get_dls(train_ds, valid_ds, 25)          # valid batches: 50, 50, 1
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss, acc = fit(3, model, F.cross_entropy, opt, tdl, vdl)
    assert 'epoch 3/3' in capsys.readouterr().out
    with torch.no_grad(): pred = model(valid_ds.x)
    check_close(loss, F.cross_entropy(pred, valid_ds.y), eps=1e-5)
    check_close(acc, accuracy(pred, valid_ds.y), eps=1e-6)
    assert acc > 0.95
