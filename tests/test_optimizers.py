"""Tests for exp.nb_09 (optimizers): each optimizer against torch.optim (or the LAMB paper), over several steps."""
import io
from functools import partial
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
import exp.nb_09 as E   # module alias: a star import would make pytest collect the test_* helpers as tests

N_STEPS = 12

def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))

def tiny_batches(n=N_STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]

def train(model, opt, batches, before_step=None):
    for xb, yb in batches:
        F.cross_entropy(model(xb), yb).backward()
        if before_step is not None: before_step(model)
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]

def check_vs(make_ours, make_ref, before_ref_step=None, n=N_STEPS):
    "Identical MLPs, identical batches: our optimizer and the reference must end with the same weights."
    m1, m2 = tiny_model(), tiny_model()
    start = [p.detach().clone() for p in m1.parameters()]
    bs = tiny_batches(n)
    ours, ref = train(m1, make_ours(m1.parameters()), bs), train(m2, make_ref(m2.parameters()), bs, before_ref_step)
    for a, b, s in zip(ours, ref, start):
        assert not torch.equal(a, s)
        E.test_close(a, b)

def decay(lr, wd):
    def _inner(model):
        with torch.no_grad():
            for p in model.parameters(): p.mul_(1 - lr*wd)
    return _inner

def two_groups(ps):
    ps = list(ps)
    return [{'params': ps[:2], 'lr': 0.3}, {'params': ps[2:]}]

adam_stats = E.adam_stats

# ---------------------------------------------------------------- numerical checks against torch.optim
def test_sgd_vs_torch():
    check_vs(lambda ps: E.sgd_opt(ps, lr=0.1), lambda ps: optim.SGD(ps, lr=0.1))

def test_sgd_decoupled_wd_vs_formula():
    check_vs(lambda ps: E.sgd_opt(ps, lr=0.1, wd=0.05), lambda ps: optim.SGD(ps, lr=0.1), decay(0.1, 0.05))

def test_sgd_momentum_l2_vs_torch_weight_decay():
    check_vs(lambda ps: E.StatefulOptimizer(ps, [E.l2_reg, E.momentum_step], E.AverageGrad(), lr=0.1, mom=0.9, wd=0.05),
             lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05))

def test_sgd_momentum_decoupled_wd_vs_formula():
    check_vs(lambda ps: E.sgd_mom_opt(ps, lr=0.1, mom=0.9, wd=0.05),
             lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), decay(0.1, 0.05))

def test_adam_l2_vs_torch_adam():
    check_vs(lambda ps: E.StatefulOptimizer(ps, [E.l2_reg, E.adam_step], adam_stats(), lr=1e-2, mom=0.9, sqr_mom=0.999,
                                            eps=1e-8, wd=0.05),
             lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05))

def test_adamw_vs_torch_adamw():
    check_vs(lambda ps: E.adam_opt(mom=0.9, sqr_mom=0.999, eps=1e-8, wd=0.05)(ps, lr=1e-2),
             lambda ps: optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05))

def test_adam_debias_with_course_defaults():
    # our defaults (sqr_mom=0.99, eps=1e-5) passed to torch explicitly
    check_vs(lambda ps: E.adam_opt()(ps, lr=3e-3), lambda ps: optim.AdamW(ps, lr=3e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.))

def test_per_group_hypers_vs_torch():
    check_vs(lambda ps: E.sgd_mom_opt(two_groups(ps), lr=0.05, mom=0.8), lambda ps: optim.SGD(two_groups(ps), lr=0.05, momentum=0.8))
    check_vs(lambda ps: E.adam_opt(sqr_mom=0.999, eps=1e-8, wd=0.01)(two_groups(ps), lr=1e-2),
             lambda ps: optim.AdamW(two_groups(ps), lr=1e-2, eps=1e-8, weight_decay=0.01))

class RefLamb:
    "LAMB, Algorithm 2 of You et al. 2019, per weight tensor, with norms; phi = clip to 10, ratio 1 when a norm is 0."
    def __init__(self, params, lr, b1, b2, eps, wd):
        self.ps, self.lr, self.b1, self.b2, self.eps, self.wd = list(params), lr, b1, b2, eps, wd
        self.m = [torch.zeros_like(p) for p in self.ps]
        self.v = [torch.zeros_like(p) for p in self.ps]
        self.t = 0
    @torch.no_grad()
    def step(self):
        self.t += 1
        for p, m, v in zip(self.ps, self.m, self.v):
            g = p.grad
            m.copy_(self.b1*m + (1 - self.b1)*g)
            v.copy_(self.b2*v + (1 - self.b2)*g*g)
            r = (m/(1 - self.b1**self.t)) / ((v/(1 - self.b2**self.t)).sqrt() + self.eps) + self.wd*p
            wn, rn = torch.linalg.norm(p), torch.linalg.norm(r)
            ratio = min((wn/rn).item(), 10.) if wn > 0 and rn > 0 else 1.
            p.sub_(self.lr*ratio*r)
    def zero_grad(self):
        for p in self.ps: p.grad = None

def test_lamb_vs_paper():
    check_vs(lambda ps: E.lamb(ps, lr=1e-2, mom=0.9, sqr_mom=0.999, eps=1e-6, wd=0.01),
             lambda ps: RefLamb(ps, 1e-2, 0.9, 0.999, 1e-6, 0.01))

def test_lamb_zero_weights_and_clipping():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([1., -2., 3.])
    E.lamb([p], lr=0.1).step()
    E.test_close(p.detach(), -0.1*torch.tensor([1., -1., 1.]), eps=1e-4)
    p = torch.full((4,), 100., requires_grad=True)
    p.grad = torch.ones(4)
    E.lamb([p], lr=0.01).step()
    E.test_close(p.detach(), torch.full((4,), 99.9), eps=1e-3)

def test_radam_vs_torch():
    # 12 steps with sqr_mom=0.99: the first five are un-adapted (rho_t <= 5), the rest rectified Adam steps
    check_vs(lambda ps: E.StatefulOptimizer(ps, [E.weight_decay, E.radam_step], adam_stats(), lr=1e-2, mom=0.9, sqr_mom=0.99,
                                            eps=1e-8, wd=0.05),
             lambda ps: optim.RAdam(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05, decoupled_weight_decay=True))

def radam_torch(ps):
    return optim.RAdam(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05, decoupled_weight_decay=True)

def test_ranger_vs_lookahead_around_torch_radam():
    check_vs(lambda ps: E.ranger(ps, lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-8, wd=0.05, k=3, alpha=0.5),
             lambda ps: E.Lookahead(radam_torch(ps), k=3, alpha=0.5))

@pytest.mark.parametrize('form', ['stepper', 'wrapper'])
def test_lookahead_by_hand(form):
    # f(p) = p**2/2, SGD lr 0.5, k=2, alpha=0.5: fast 1 -> .5 -> .25, slow .625; fast .3125 -> .15625, slow .390625
    p = torch.ones(1, requires_grad=True)
    o = (E.Lookahead(optim.SGD([p], lr=0.5), k=2, alpha=0.5) if form == 'wrapper' else
         E.StatefulOptimizer([p], [E.sgd_step, E.lookahead_step], [E.StepCount(), E.SlowWeights()], lr=0.5, k=2, alpha=0.5))
    seen = []
    for _ in range(4):
        (p**2 / 2).sum().backward()
        o.step()
        o.zero_grad()
        seen.append(p.item())
    E.test_close(torch.tensor(seen), torch.tensor([0.5, 0.625, 0.3125, 0.390625]))

def test_lookahead_round_trip():
    bs = tiny_batches(10)
    m1 = tiny_model()
    o1 = E.Lookahead(radam_torch(m1.parameters()), k=3)
    train(m1, o1, bs[:4])
    buf = io.BytesIO()
    torch.save(o1.state_dict(), buf)
    buf.seek(0)
    m2 = tiny_model(seed=5)
    m2.load_state_dict(m1.state_dict())
    o2 = E.Lookahead(radam_torch(m2.parameters()), k=3).load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(train(m1, o1, bs[4:]), train(m2, o2, bs[4:])))

# ---------------------------------------------------------------- building blocks
def test_steppers_and_defaults():
    p = torch.tensor([1., -2.], requires_grad=True)
    p.grad = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        q = p.detach().clone()
        q.grad = p.grad.clone()
        E.l2_reg(q, lr=0.1, wd=0.5)
        E.test_close(q.grad, torch.tensor([1.0, -0.5]))
        E.test_close(E.weight_decay(p.detach().clone(), lr=0.1, wd=0.5), torch.tensor([0.95, -1.9]))
    d = {'wd': 0.3}
    E.maybe_update([E.weight_decay, E.adam_step], d, E.get_defaults)
    assert d == {'wd': 0.3, 'eps': 1e-5}
    assert E.get_defaults(E.sgd_step) == {}

def test_lin_comb_debias():
    E.test_close(E.lin_comb(torch.tensor(1.), torch.tensor(3.), 0.25), torch.tensor(2.5))
    avg = 0.
    for i in range(1, 8):
        avg = E.lin_comb(avg, 3.0, 0.9)
        assert abs(avg / E.debias(0.9, 0.1, i) - 3.0) < 1e-6

def hypers(opt):
    return [{k: v for k, v in pg.items() if k != 'params'} for pg in opt.param_groups]

def test_param_groups_and_hypers():
    ps = list(tiny_model().parameters())
    opt = E.sgd_opt([{'params': ps[:2], 'lr': 0.3}, {'params': ps[2:]}], lr=0.1, wd=0.01)
    assert [len(pg['params']) for pg in opt.param_groups] == [2, 2]
    assert hypers(opt) == [{'lr': 0.3, 'wd': 0.01}, {'lr': 0.1, 'wd': 0.01}]
    opt.param_groups[1]['lr'] = 0.5                                   # what ParamScheduler writes
    assert hypers(opt)[1]['lr'] == 0.5
    opt = E.sgd_opt(iter(ps), lr=0.1)
    assert len(opt.param_groups) == 1 and all(a is b for a, b in zip(opt.param_groups[0]['params'], ps))

def test_zero_grad_and_skip_missing_grads():
    m = tiny_model()
    opt = E.sgd_opt(m.parameters(), lr=0.1)
    m(torch.randn(4, 10)).sum().backward()
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))

# ---------------------------------------------------------------- checkpoints
def test_state_dict_round_trip():
    bs = tiny_batches(10)
    for make in (lambda ps: E.adam_opt(wd=0.01)(ps, lr=1e-2), lambda ps: E.sgd_mom_opt(two_groups(ps), lr=0.05, mom=0.9),
                 lambda ps: E.lamb(ps, lr=1e-2, wd=0.01), lambda ps: E.ranger(ps, lr=1e-2, k=3)):
        m1 = tiny_model()
        o1 = make(m1.parameters())
        train(m1, o1, bs[:4])
        buf = io.BytesIO()
        torch.save({'model': m1.state_dict(), 'opt': o1.state_dict()}, buf)
        buf.seek(0)
        ck = torch.load(buf)
        m2 = tiny_model(seed=3)
        m2.load_state_dict(ck['model'])
        o2 = make(m2.parameters())
        for pg in o2.param_groups: pg['lr'] = 1.0                   # must be overwritten by the checkpoint
        o2.load_state_dict(ck['opt'])
        assert hypers(o2) == hypers(o1)
        assert all(torch.equal(a, b) for a, b in zip(train(m1, o1, bs[4:]), train(m2, o2, bs[4:])))
    with pytest.raises(ValueError, match='sizes'):
        E.adam_opt()(list(tiny_model().parameters())[:2], lr=1e-2).load_state_dict(ck['opt'])

def test_checkpoint_layout():
    ps = list(tiny_model().parameters())
    sd = E.sgd_mom_opt(two_groups(ps), lr=0.1, mom=0.9).state_dict()
    assert sd == {'state': {}, 'param_groups': [{'lr': 0.3, 'mom': 0.9, 'wd': 0., 'params': [0, 1]},
                                                {'lr': 0.1, 'mom': 0.9, 'wd': 0., 'params': [2, 3]}]}

# ---------------------------------------------------------------- chapter 05's callbacks, with ours and torch's optimizers
def blob_data(n=320, seed=0, bs=32):
    g = torch.Generator().manual_seed(seed)
    centers = 0.8*torch.randn(3, 10, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    x = centers[y] + torch.randn(n, 10, generator=g)
    return E.DataBunch(*E.get_dls(E.Dataset(x[:256], y[:256]), E.Dataset(x[256:], y[256:]), bs), c_in=10, c_out=3)

OPT_FUNCS = {'sgd_opt': E.sgd_opt, 'sgd_mom_opt': E.sgd_mom_opt, 'adam_opt': E.adam_opt(), 'lamb': E.lamb,
             'torch_sgd': optim.SGD, 'torch_adamw': optim.AdamW}

@pytest.mark.parametrize('name', list(OPT_FUNCS))
def test_recorder_and_param_scheduler(name):
    data, sched = blob_data(), E.sched_cos(0.2, 0.01)
    learn, run = E.get_runner(tiny_model(), data, lr=0.5, opt_func=OPT_FUNCS[name],
                              cbs=[E.Recorder, partial(E.ParamScheduler, 'lr', sched)])
    run.logger = lambda *a, **k: None
    run.fit(2, learn)
    lrs = run.recorder.lrs[0]
    n = len(lrs)
    assert n == 2*len(data.train_dl) == len(run.recorder.losses)
    E.test_close(lrs, [sched(i/n) for i in range(n)])
    E.test_close(learn.opt.param_groups[0]['lr'], lrs[-1])

def test_schedule_momentum():
    data = blob_data()
    for opt_func, pname in [(E.sgd_mom_opt, 'mom'), (partial(optim.SGD, momentum=0.9), 'momentum')]:
        learn, run = E.get_runner(tiny_model(), data, lr=0.1, opt_func=opt_func,
                                  cbs=[partial(E.ParamScheduler, pname, E.sched_lin(0.95, 0.85))])
        run.logger = lambda *a, **k: None
        run.fit(1, learn)
        n = len(data.train_dl)
        E.test_close(learn.opt.param_groups[0][pname], E.sched_lin(0.95, 0.85)((n - 1)/n))

@pytest.mark.parametrize('name', ['adam_opt', 'lamb', 'torch_adamw'])
def test_lr_find(name):
    m = tiny_model()
    start = [p.detach().clone() for p in m.parameters()]
    learn, run = E.get_runner(m, blob_data(), lr=1e-3, opt_func=OPT_FUNCS[name], cbs=[partial(E.LR_Find, max_iter=30), E.Recorder])
    run.logger = lambda *a, **k: None
    run.fit(5, learn)
    lrs = run.recorder.lrs[0]
    E.test_close(lrs[0], 1e-6)
    assert 2 < len(lrs) <= 30 and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert learn.opt.param_groups[0]['lr'] == 1e-3                       # LR_Find restores the optimizer ...
    assert all(torch.equal(a, b) for a, b in zip(start, m.parameters()))  # ... and the model

# ---------------------------------------------------------------- edge cases moved from notebook 09
def test_average_grad_dampened_is_ema():
    p, ag = torch.zeros(2, requires_grad=True), E.AverageGrad(dampening=True)
    st = ag.init_state(p)
    for g in ([1., 2.], [3., 4.]):
        p.grad = torch.tensor(g)
        st = ag.update(p, st, mom=0.5)
    E.test_close(st['grad_avg'], torch.tensor([0.5*0.5*1 + 0.5*3, 0.5*0.5*2 + 0.5*4]))
    assert st['mom_damp'] == 0.5
    E.test_close(E.momentum_step(torch.ones(2), lr=0.1, grad_avg=torch.tensor([1., -1.])),
                 torch.tensor([0.9, 1.1]))

def test_sqr_avg_debiased():
    p, s2, sc = torch.zeros(2, requires_grad=True), E.AverageSqrGrad(), E.StepCount()
    st = {**s2.init_state(p), **sc.init_state(p)}
    for g in ([1., 2.], [3., 4.]):
        p.grad = torch.tensor(g)
        st = sc.update(p, s2.update(p, st, sqr_mom=0.9))
    E.test_close(st['sqr_avg'] / E.debias(0.9, st['sqr_damp'], st['step']),
                 torch.tensor([(0.9*1 + 9)/1.9, (0.9*4 + 16)/1.9]))
    E.test_close(E.debias(0.9, 0.1, 3), 1 - 0.9**3)

def test_default_hypers():
    ps = list(tiny_model().parameters())
    opt = E.adam_opt(wd=0.1, mom=0.8)(ps, lr=1e-3)
    assert hypers(opt) == [{'lr': 1e-3, 'wd': 0.1, 'eps': 1e-5, 'mom': 0.8, 'sqr_mom': 0.99}]
    assert hypers(E.lamb(ps, lr=0.01)) == [dict(lr=0.01, eps=1e-6, wd=0., mom=0.9, sqr_mom=0.99)]
    assert hypers(E.ranger(ps, lr=1e-3)) == [{'lr': 1e-3, 'wd': 0., 'mom': 0.9, 'sqr_mom': 0.99,
                                              'eps': 1e-6, 'k': 6, 'alpha': 0.5}]

def test_radam_first_step_is_momentum_sgd():
    # rho_t <= 5: a step along the debiased gradient average; with one gradient p moves by lr * grad
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([1., -3.])
    E.StatefulOptimizer([p], E.radam_step, adam_stats(), lr=0.1).step()
    E.test_close(p.detach(), torch.tensor([-0.1, 0.3]))

def test_lookahead_shares_inner_param_groups():
    la = E.Lookahead(optim.SGD(tiny_model().parameters(), lr=0.1))
    la.param_groups[0]['lr'] = 0.2
    assert la.opt.param_groups[0]['lr'] == 0.2          # schedulers write to the inner optimizer
    assert la.state is la.opt.state

def test_lookahead_load_copies_slow_weights():
    bs = tiny_batches(6)
    m1, m2 = tiny_model(), tiny_model()
    o1 = E.Lookahead(optim.SGD(m1.parameters(), lr=0.1), k=2)
    train(m1, o1, bs[:3])
    o2 = E.Lookahead(optim.SGD(m2.parameters(), lr=0.1), k=2).load_state_dict(o1.state_dict())
    slow1 = [s.clone() for s in o1.slow]
    train(m2, o2, bs[3:])
    assert all(torch.equal(a, b) for a, b in zip(slow1, o1.slow))    # o2 did not write into o1's
    assert E.Lookahead(optim.SGD(m2.parameters(), lr=0.1)).load_state_dict(
        E.Lookahead(optim.SGD(m1.parameters(), lr=0.1)).state_dict()).slow is None

def test_adam_checkpoint_layout():
    m = tiny_model()
    opt = E.adam_opt(wd=0.01)(two_groups(m.parameters()), lr=1e-2)
    train(m, opt, tiny_batches(4))
    sd = opt.state_dict()
    assert sd['param_groups'][0] == {'lr': 0.3, 'wd': 0.01, 'eps': 1e-5, 'mom': 0.9,
                                     'sqr_mom': 0.99, 'params': [0, 1]}
    assert sd['param_groups'][1]['params'] == [2, 3]
    assert sorted(sd['state']) == [0, 1, 2, 3] and sd['state'][3]['step'] == 4

@pytest.mark.parametrize('name', list(OPT_FUNCS))
def test_blobs_train(name):
    cbs = [partial(E.ParamScheduler, 'lr', E.sched_cos(0.2, 0.01)),
           E.AvgStatsCallback([E.accuracy])]
    learn, run = E.get_runner(tiny_model(), blob_data(n=640), lr=0.2, opt_func=OPT_FUNCS[name],
                              cbs=cbs)
    run.logger = lambda *a, **k: None
    run.fit(2, learn)
    assert run.avg_stats.valid_stats.avg_stats[1] > 0.8
