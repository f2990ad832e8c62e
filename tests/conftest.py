"Helpers shared by the test modules (one definition each; pytest puts tests/ on sys.path, so modules import them from here)."
import http.server, io, math, re, socket, tarfile, threading
from pathlib import Path

import pytest

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim
from PIL import Image
import PIL.Image


def make_image_folder(root, classes, n_train=8, n_valid=4, shape=(40, 48), seed=0, ext='.jpg'):
    "An ImageNet-style folder train/<class>/*, val/<class>/* of small random images, each class its own dominant colour."
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_valid)):
        for c, cls in enumerate(classes):
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 60, (*shape, 3), dtype=np.uint8)
                a[..., c % 3] += 150
                Image.fromarray(a).save(d / f'{i}{ext}', **({'quality': 90} if ext == '.jpg' else {}))
    return Path(root)


# ---------------------------------------------------------------------------------------------- Runner helpers
from exp.nb_05 import EVENTS, Callback, DataBunch, Dataset, Learner, get_dls


class EventLog(Callback):
    "Record the name of every event (first in order, so it also sees the event in which another callback raises)."
    order = -100
    def __init__(self): self.events = []
for _e in EVENTS: setattr(EventLog, _e, lambda self, e=_e: self.events.append(e))


class Raiser(Callback):
    "Raise `exc` at `event` in epoch `epoch`, batch `it` (None: any), in training (train=True) or validation."
    def __init__(self, exc, event, epoch, it=None, train=True):
        self.exc, self.ev, self.ep, self.it, self.train = exc, event, epoch, it, train
    def check(self, ev):
        r = self.run
        if ev == self.ev and r.epoch == self.ep and r.in_train == self.train and self.it in (None, r.iter): raise self.exc()
for _e in EVENTS: setattr(Raiser, _e, lambda self, e=_e: self.check(e))


def tiny_learner(lr=0.1, seed=0):
    "Linear model on random data: 3 training batches of 4 items, 2 validation batches of 8."
    torch.manual_seed(seed)
    x, y = torch.randn(28, 5), torch.randint(0, 3, (28,))
    d = DataBunch(*get_dls(Dataset(x[:12], y[:12]), Dataset(x[12:], y[12:]), 4), c_out=3)
    m = nn.Linear(5, 3)
    return Learner(m, optim.SGD(m.parameters(), lr=lr), F.cross_entropy, d)


def loss_going_bad(at_call, value=math.nan):
    "Cross-entropy that returns `value` on call number `at_call` (0-based)."
    calls = [0]
    def loss_func(pred, yb):
        loss = F.cross_entropy(pred, yb); calls[0] += 1
        return loss * value if calls[0] - 1 == at_call else loss
    return loss_func


# ---------------------------------------------------------------------------------------------- data helpers
import exp.nb_00a as nb00a
import exp.nb_00b as nb00b
SHARED = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
FM = SHARED / 'fashion-mnist'


def closed_port():
    "A local port with nothing listening."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Handler(http.server.BaseHTTPRequestHandler):
    "Serves files of `root`; honours `Range: bytes=N-` unless told otherwise; can cut a transfer short."
    root, log, truncate, ignore_range = None, None, None, None
    no_length = ()                                                      # names sent without a Content-Length header

    def log_message(self, *args): pass

    def do_GET(self):
        name = self.path.lstrip('/')
        self.log.append((name, self.headers.get('Range')))
        f = Path(self.root) / name
        if not f.is_file(): return self.send_error(404)
        data, start = f.read_bytes(), 0
        m = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
        if m and name not in self.ignore_range:
            start = int(m[1])
            if start >= len(data): return self.send_error(416)
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else: self.send_response(200)
        if name not in self.no_length: self.send_header('Content-Length', str(len(data) - start))   # the full length, even when we cut short
        self.end_headers()
        body = data[start:]
        if name in self.truncate: body = body[:len(body) // 2]          # then the connection closes
        self.wfile.write(body)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    "Own data folder, no mirror, cwd in tmp (default run folders land there), public URLs that cannot reach the internet."
    monkeypatch.setenv('EXP_DATA', str(tmp_path / 'data'))
    monkeypatch.delenv('EXP_DATA_MIRROR', raising=False)
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    monkeypatch.setattr(nb00a.URLs, 'FASHION_MNIST', f'http://127.0.0.1:{port}/fashion-mnist/')
    monkeypatch.setattr(nb00a.URLs, 'IMAGENETTE_160', f'http://127.0.0.1:{port}/imagenette2-160.tgz')
    monkeypatch.setattr(nb00b, 'FMNIST_SYSTEM_PATH', tmp_path / 'no-system-copy')


@pytest.fixture
def server(tmp_path):
    "A 127.0.0.1 server over a tmp folder holding links to the shared files; yields (base_url, folder, handler)."
    root = tmp_path / 'site'
    (root / 'fashion-mnist').mkdir(parents=True)
    if FM.is_dir():
        for f in FM.iterdir(): (root / 'fashion-mnist' / f.name).symlink_to(f)
    h = type('H', (Handler,), dict(root=str(root), log=[], truncate=set(), ignore_range=set()))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/', root, h
    finally:
        srv.shutdown(); srv.server_close()


def make_tar(fname, members):
    "Write a .tgz: (name, bytes) for files, (name, '->x') symlink, (name, '=>x') hardlink, (name, 'dev') device."
    with tarfile.open(fname, 'w:gz') as tf:
        for name, content in members:
            ti, data = tarfile.TarInfo(name), None
            if content == 'dev': ti.type = tarfile.CHRTYPE
            elif isinstance(content, str):
                ti.type = tarfile.SYMTYPE if content.startswith('->') else tarfile.LNKTYPE
                ti.linkname = content[2:]
            else: ti.size, data = len(content), io.BytesIO(content)
            tf.addfile(ti, data)
    return Path(fname)


def leftovers(folder):
    "Temporary or partial files left in `folder` (must be none after any failure)."
    folder = Path(folder)
    if not folder.exists(): return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(('.tmp', '.part')) or '.old-' in p.name)


def jpeg_bytes(size=(24, 16), color=(200, 30, 60)):
    "A small valid JPEG file's bytes, with some texture so it is not trivially short."
    a = np.zeros((size[1], size[0], 3), np.uint8); a[...] = color
    a[::2, ::3] = 255 - a[::2, ::3]
    buf = io.BytesIO(); PIL.Image.fromarray(a).save(buf, format='JPEG', quality=90); return buf.getvalue()


def pytest_configure(config):
    "pytest resets warning filters per test: keep silencing torchvision's decoder deprecation, as exp.nb_08a does at import."
    config.addinivalue_line('filterwarnings', 'ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning')
