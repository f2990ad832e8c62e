"Images as a camera wrote them: EXIF orientation and PIL's pixel limit on every decoder (nbs 08, 08a) and pipeline."
from pathlib import Path

import numpy as np
import pytest
import torch
import PIL.Image
from PIL.Image import Transpose

from conftest import make_image_folder
import exp.nb_08a as nb08a
from exp.nb_08 import UnreadableImageError, compose, open_image
from exp.nb_08a import decode_rgb, image_aspects, image_tfms, _decode
from exp.nb_08b import BadImagesError, folder_databunch
from exp.nb_10a import _predict_tfms

# what a viewer does to the stored pixels for each EXIF orientation (the tag's definition)
TURN = {2: Transpose.FLIP_LEFT_RIGHT, 3: Transpose.ROTATE_180, 4: Transpose.FLIP_TOP_BOTTOM,
        5: Transpose.TRANSPOSE, 6: Transpose.ROTATE_270, 7: Transpose.TRANSVERSE, 8: Transpose.ROTATE_90}
UNDO = {**TURN, 6: Transpose.ROTATE_90, 8: Transpose.ROTATE_270}   # how a camera stores an upright scene
STATS = ([0.5] * 3, [0.25] * 3)


def scene(w=48, h=32):
    "A smooth picture with no symmetry: red grows rightwards, green downwards."
    y, x = np.mgrid[0:h, 0:w]
    return PIL.Image.fromarray(np.stack([x * 5, y * 7, 255 - x * 2 - y * 3], -1).astype(np.uint8))


def phone_pair(folder, orientation):
    "A JPEG of `scene()` stored unturned with EXIF `orientation`, and the picture turned for real as lossless PNG."
    folder.mkdir(parents=True, exist_ok=True)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    phone, upright = folder / 'phone.jpg', folder / 'upright.png'
    scene().transpose(UNDO[orientation]).save(phone, quality=95, exif=exif)
    with PIL.Image.open(phone) as stored: stored.transpose(TURN[orientation]).save(upright)   # the JPEG's own pixels
    return phone, upright


def as_int(x):
    "A PIL image, array or tensor as an int tensor laid out (c, h, w)."
    if isinstance(x, PIL.Image.Image): x = torch.from_numpy(np.array(x)).permute(2, 0, 1)
    return torch.as_tensor(x).double().round().int()


def same(a, b, tol=0):
    "Equal shapes and pixels within `tol` grey levels."
    a, b = as_int(a), as_int(b)
    return a.shape == b.shape and int((a - b).abs().max()) <= tol


@pytest.mark.parametrize('orientation', [2, 3, 4, 5, 6, 7, 8])
def test_every_decoder_turns_photos_upright(orientation, tmp_path, monkeypatch):
    "Each decoder gives a photo stored with EXIF orientation the pixels of the copy turned for real (same libjpeg: exact)."
    phone, upright = phone_pair(tmp_path, orientation)
    assert same(open_image(upright), scene(), tol=10)                       # the scene upright, within JPEG q95 noise (7)
    assert same(open_image(phone), open_image(upright))                      # notebook 08, per-item pipeline
    assert same(decode_rgb(phone), decode_rgb(upright))                      # 08a: torchvision's JPEG route
    for geometry in ('square', 'whole'):                                     # the fast pipeline's cache build
        assert same(_decode((phone, 16, geometry)), _decode((upright, 16, geometry)))
    torch.testing.assert_close(image_aspects([phone]), image_aspects([upright]))
    assert same(compose(open_image(phone), image_tfms(16)) * 255, compose(open_image(upright), image_tfms(16)) * 255)
    for pipeline in ('per-item', 'fast'):                                    # exp-predict: open_image, then these
        tfms = _predict_tfms(dict(pipeline=pipeline, size=16, val_zoom=1.14))
        assert same(compose(open_image(phone), tfms) * 255, compose(open_image(upright), tfms) * 255)
    monkeypatch.setattr(nb08a, 'decode_jpeg', None)                          # a torchvision without decode_jpeg
    assert same(decode_rgb(phone), decode_rgb(upright))


@pytest.mark.parametrize('pipeline', ['per-item', 'fast'])
def test_pipelines_serve_phone_photos_upright(pipeline, tmp_path):
    "A folder holding a phone photo and one holding its turned copy give the same validation batch on both pipelines."
    batches = []
    for name in ('phone.jpg', 'upright.png'):
        root = make_image_folder(tmp_path / name, ['a', 'b', 'c'], n_train=2, n_valid=1, shape=(32, 48))
        pic = phone_pair(tmp_path / f'pair-{name}', 6)[name != 'phone.jpg']
        (root / 'val' / 'a' / f'x{pic.suffix}').write_bytes(pic.read_bytes())
        data = folder_databunch(root, size=16, bs=2, num_workers=0, pipeline=pipeline, device='cpu', stats=STATS,
                                cache_dir=tmp_path / f'cache-{name}', progress=False)
        batches.append(next(iter(data.valid_dl))[0])
    assert same(batches[0] * 64, batches[1] * 64)                           # 1/std = 4: one grey level is 1/64


# ---------------------------------------------------------------------------------------------- over PIL's pixel limit
LIMIT = 1000   # stands in for PIL's 89 million pixels: a 40x40 image is over it, a 50x50 one over twice it


def huge_folder(root):
    "A 3-class folder of 16x16 images plus two over LIMIT pixels: (folder, the two files)."
    root = make_image_folder(root, ['a', 'b', 'c'], n_train=4, n_valid=2, shape=(16, 16))
    big = [root / 'train' / 'a' / 'huge.jpg', root / 'val' / 'b' / 'huger.png']
    PIL.Image.new('RGB', (40, 40), 'red').save(big[0])                     # 1,600 pixels: PIL would only warn
    PIL.Image.new('RGB', (50, 50), 'red').save(big[1])                     # 2,500 pixels: PIL refuses by itself
    return root, big


@pytest.fixture
def low_limit(monkeypatch): monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', LIMIT)


def test_decoders_refuse_images_over_the_limit(tmp_path, low_limit):
    "Every decoder raises UnreadableImageError naming the file and the limit; the aspect reader does not fail."
    _, (jpg, png) = huge_folder(tmp_path)
    for f in (jpg, png):
        for decode in (open_image, decode_rgb, lambda f: _decode((f, 8, 'square')), lambda f: _decode((f, 8, 'whole'))):
            with pytest.raises(UnreadableImageError, match='DecompressionBombError') as e: decode(f)
            assert e.value.path == f and f.name in str(e.value)
    with pytest.raises(UnreadableImageError, match=f"'{jpg}': DecompressionBombError: 40x40 pixels, over the limit of {LIMIT}"):
        decode_rgb(jpg)                                                      # refused from the header, before torchvision
    assert image_aspects([jpg, png]).tolist() == [1., 1.]


@pytest.mark.parametrize('pipeline,crop', [('per-item', 'square'), ('fast', 'square'), ('fast', 'whole')])
def test_skip_bad_skips_images_over_the_limit(pipeline, crop, tmp_path, low_limit):
    "skip_bad=True trains-loads without the oversized images and lists them in data.skipped."
    root, big = huge_folder(tmp_path / 'd')
    data = folder_databunch(root, size=8, bs=2, num_workers=0, pipeline=pipeline, device='cpu', crop=crop,
                            skip_bad=True, cache_dir=tmp_path / 'cache', progress=False)
    assert sorted(p for p, _ in data.skipped) == sorted(map(str, big))
    assert all('DecompressionBombError' in r for _, r in data.skipped)
    assert (data.n_train, data.n_valid) == (12, 6)
    assert sum(len(yb) for _, yb in data.train_dl) == 12 and sum(len(yb) for _, yb in data.valid_dl) == 6


@pytest.mark.parametrize('pipeline', ['per-item', 'fast'])
def test_without_skip_bad_the_error_names_the_image(pipeline, tmp_path, low_limit):
    "Without skip_bad an oversized image stops loading with an error naming it (the fast build lists both)."
    root, big = huge_folder(tmp_path / 'd')
    with pytest.raises(UnreadableImageError) as e:
        data = folder_databunch(root, size=8, bs=2, num_workers=0, pipeline=pipeline, device='cpu', stats=STATS,
                                cache_dir=tmp_path / 'cache', progress=False)
        for dl in (data.train_dl, data.valid_dl): list(dl)
    if pipeline == 'fast': assert isinstance(e.value, BadImagesError) and all(str(b) in str(e.value) for b in big)
    else: assert e.value.path == big[0] and f'40x40 pixels, over the limit of {LIMIT}' in str(e.value)
