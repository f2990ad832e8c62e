"Tests for exp.nb_08 (the data block API): synthetic images in tmp folders, plus Imagenette when it is available."
import io, os, pickle, subprocess, sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import matplotlib
matplotlib.use('Agg')
import PIL.Image, PIL.features

from exp.nb_08 import (image_extensions, setify, get_files, compose, ItemList, ImageList, Transform, make_rgb,
                       ResizeFixed, to_byte_tensor, to_float_tensor, grandparent_splitter, split_by_func, SplitData,
                       uniqueify, Processor, CategoryProcessor, CategoryProcesser, parent_labeler, label_by_func,
                       LabeledData, normalize_chan, imagenette_stats, norm_imagenette, show_image,
                       show_batch, open_image, default_num_workers, UnreadableImageError)

from conftest import jpeg_bytes


def pixel(im): return make_rgb(im).getpixel((0, 0))

# ---------------------------------------------------------------- files
def test_image_extensions_explicit():
    assert {'.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff'} <= image_extensions
    assert all(e.startswith('.') and e == e.lower() for e in image_extensions)

def test_setify():
    assert setify(None) == set() and setify('ab') == {'ab'} and setify(['a', 'a', 'b']) == {'a', 'b'}
    assert setify(Path('x')) == {Path('x')} and setify(5) == {5}

@pytest.fixture
def tree(tmp_path):
    for f in ['a.jpg', 'b.PNG', 'c.txt', '.hidden.jpg', 'sub/d.jpeg', 'sub/.e.jpg', 'other/f.webp', '.git/g.jpg',
              'sub/deep/h.JPG', 'sub/.ipynb_checkpoints/i.jpg']:
        (tmp_path/f).parent.mkdir(parents=True, exist_ok=True); (tmp_path/f).write_bytes(b'')
    return tmp_path

def rel(fs, root): return [f.relative_to(root).as_posix() for f in fs]

def test_get_files_flat_and_extensions(tree):
    assert rel(get_files(tree), tree) == ['a.jpg', 'b.PNG', 'c.txt']
    assert rel(get_files(tree, image_extensions), tree) == ['a.jpg', 'b.PNG']
    assert rel(get_files(tree, ['TXT']), tree) == ['c.txt']
    assert rel(get_files(tree, '.png'), tree) == ['b.PNG']

def test_get_files_recurse_hidden_include(tree):
    assert rel(get_files(tree, image_extensions, recurse=True), tree) == \
        ['a.jpg', 'b.PNG', 'other/f.webp', 'sub/d.jpeg', 'sub/deep/h.JPG']
    assert rel(get_files(tree, image_extensions, recurse=True, include=['sub']), tree) == \
        ['a.jpg', 'b.PNG', 'sub/d.jpeg', 'sub/deep/h.JPG']
    fs = get_files(tree, recurse=True)
    assert fs == sorted(fs) and all(isinstance(f, Path) for f in fs)
    assert not any(p.startswith('.') for f in fs for p in f.relative_to(tree).parts)

def test_get_files_errors(tree):
    with pytest.raises(FileNotFoundError, match='nope'): get_files(tree/'nope')

def test_get_files_follows_folder_links_once(tree, tmp_path_factory):
    ext = tmp_path_factory.mktemp('elsewhere')                 # a class folder that links to images elsewhere
    (ext/'i.jpg').write_bytes(b'')
    (tree/'linked').symlink_to(ext, target_is_directory=True)
    (tree/'sub'/'loop').symlink_to(tree, target_is_directory=True)   # and a link back up the tree
    with pytest.warns(UserWarning, match='loop') as w:
        fs = get_files(tree, image_extensions, recurse=True)
    assert rel(fs, tree) == ['a.jpg', 'b.PNG', 'linked/i.jpg', 'other/f.webp', 'sub/d.jpeg', 'sub/deep/h.JPG']
    assert [str(o.message).split("'")[1] for o in w] == [str(tree/'sub'/'loop')]

# ---------------------------------------------------------------- lists and transforms
def test_compose_sorts_by_order():
    f = lambda x: x + 1
    g = lambda x: x * 2; g.order = 5
    assert compose(3, [g, f]) == 8 and compose(3, [f, g]) == 8 and compose(3, None) == 3
    class T(Transform):
        order = -1
        def __call__(self, x): return x - 10
    assert compose(3, [g, T(), f]) == -12

def test_itemlist_indexing():
    il = ItemList([1, 2, 3], path='/p', tfms=lambda x: x * 10)
    assert il[0] == 10 and il[np.int64(2)] == 30 and il[torch.tensor(1)] == 20
    assert il[1:] == [20, 30] and il[[0, 2]] == [10, 30] and list(il) == [10, 20, 30]
    assert il.items == [1, 2, 3] and il.new([4]).path == Path('/p') and il.new([4])[0] == 40
    with pytest.raises(TypeError): Transform()(1)                           # a subclass defines __call__

@pytest.mark.parametrize('im,expected', [
    (PIL.Image.new('L', (3, 3), 100), (100, 100, 100)),
    (PIL.Image.new('1', (3, 3), 1), (255, 255, 255)),
    (PIL.Image.new('RGBA', (3, 3), (200, 10, 10, 255)), (200, 10, 10)),
    (PIL.Image.new('RGBA', (3, 3), (200, 10, 10, 0)), (255, 255, 255)),
    (PIL.Image.new('LA', (3, 3), (60, 255)), (60, 60, 60)),
    (PIL.Image.new('CMYK', (3, 3), (0, 255, 255, 0)), (255, 0, 0)),
    (PIL.Image.fromarray(np.full((3, 3), 40000, np.uint16)), (156, 156, 156)),
    (PIL.Image.new('I', (3, 3), 65535), (255, 255, 255)),
    (PIL.Image.new('I', (3, 3), 0), (0, 0, 0)),
], ids=['L', '1', 'RGBA-opaque', 'RGBA-transparent', 'LA', 'CMYK', 'I;16', 'I-max', 'I-zero'])
def test_make_rgb_modes(im, expected):
    out = make_rgb(im)
    assert out.mode == 'RGB' and out.size == im.size and out.getpixel((0, 0)) == expected

def test_make_rgb_palette_and_files():
    pal = PIL.Image.new('P', (3, 3), 1); pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert pixel(pal) == (10, 200, 30)
    pal.info['transparency'] = 1
    assert pixel(pal) == (255, 255, 255)
    buf = io.BytesIO(); PIL.Image.fromarray(np.full((3, 3), 40000, np.uint16)).save(buf, format='PNG'); buf.seek(0)
    png16 = PIL.Image.open(buf)
    assert png16.mode.startswith('I') and pixel(png16) == (156, 156, 156)   # plain convert('RGB') would give 255
    buf = io.BytesIO(); PIL.Image.new('CMYK', (3, 3), (0, 0, 0, 0)).save(buf, format='JPEG'); buf.seek(0)
    assert make_rgb(PIL.Image.open(buf)).mode == 'RGB'
    rgb = PIL.Image.new('RGB', (2, 2)); assert make_rgb(rgb) is rgb
    assert make_rgb.order == 0

def test_resize_and_tensors():
    im = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    assert ResizeFixed(16)(im).size == (16, 16) and ResizeFixed((20, 10))(im).size == (20, 10)
    assert ResizeFixed(16).order == 10 and to_byte_tensor.order == 20 and to_float_tensor.order == 30
    t = to_byte_tensor(im)
    assert t.shape == (3, 30, 50) and t.dtype == torch.uint8 and t.is_contiguous()
    assert t[:, 4, 7].tolist() == list(im.getpixel((7, 4)))
    assert to_byte_tensor(im.convert('L')).shape == (1, 30, 50)
    f = to_float_tensor(t)
    assert f.dtype == torch.float32 and torch.allclose(f * 255, t.float(), atol=1e-4)
    out = compose(im, [to_float_tensor, to_byte_tensor, ResizeFixed(8), make_rgb])   # list order does not matter
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32

@pytest.mark.skipif(not PIL.features.check('webp'), reason='Pillow built without WebP')
def test_webp_files_are_found_and_read(tmp_path):
    PIL.Image.new('RGB', (10, 8), (1, 2, 3)).save(tmp_path/'a.WEBP', format='WEBP', lossless=True)
    il = ImageList.from_files(tmp_path, tfms=[make_rgb, to_byte_tensor])
    assert [f.name for f in il.items] == ['a.WEBP'] and il[0].shape == (3, 8, 10) and il[0][:, 0, 0].tolist() == [1, 2, 3]

# ---------------------------------------------------------------- bad files
@pytest.fixture
def bad_dir(tmp_path):
    jpg = jpeg_bytes((64, 48))
    (tmp_path/'good.jpg').write_bytes(jpg)
    (tmp_path/'empty.jpg').write_bytes(b'')
    (tmp_path/'text.jpg').write_text('<html>404 Not Found</html>')
    (tmp_path/'truncated.jpg').write_bytes(jpg[:len(jpg) // 2])
    return tmp_path

@pytest.mark.parametrize('name', ['empty.jpg', 'text.jpg', 'truncated.jpg'])
def test_bad_file_error_names_file(bad_dir, name):
    il = ImageList.from_files(bad_dir)
    with pytest.raises(ValueError, match=name): il[il.items.index(bad_dir/name)]
    with pytest.raises(ValueError, match="Replace or delete the file"): open_image(bad_dir/name)
    with pytest.raises(UnreadableImageError) as e: open_image(bad_dir/name)
    assert e.value.path == bad_dir/name and e.value.reason and e.value.reason in str(e.value)
    again = pickle.loads(pickle.dumps(e.value))                  # crosses process boundaries (a Pool) whole
    assert (type(again), again.path, again.reason, str(again)) == (UnreadableImageError, e.value.path, e.value.reason, str(e.value))

def test_unreadable_error_from_a_dataloader_worker_keeps_its_type(bad_dir):
    "A worker's error comes back as exc_type(text): the type survives, the path is unknown (None) there."
    il = ImageList([bad_dir/'empty.jpg'])
    dl = torch.utils.data.DataLoader(il, batch_size=1, num_workers=1, collate_fn=lambda b: b)
    with pytest.raises(UnreadableImageError, match='empty.jpg') as e: next(iter(dl))
    assert e.value.path is None and 'Caught UnreadableImageError in DataLoader worker' in str(e.value)

def test_no_files_and_missing_file(bad_dir):
    with pytest.raises(FileNotFoundError, match='No files'): ImageList.from_files(bad_dir, extensions='.png')
    with pytest.raises(FileNotFoundError): open_image(bad_dir/'missing.jpg')

# ---------------------------------------------------------------- split and label
def test_split():
    sp = partial(grandparent_splitter, valid_name='val')
    assert (sp('/d/val/a/1.jpg'), sp('/d/train/a/1.jpg'), sp('/d/test/a/1.jpg')) == (True, False, None)
    assert grandparent_splitter('/d/valid/a/1.jpg') is True
    items = ['train/a/1', 'val/a/2', 'x/a/3', 'train/b/4']
    assert split_by_func(items, sp) == (['train/a/1', 'train/b/4'], ['val/a/2'])
    sd = SplitData.split_by_func(ItemList(items, path='/root'), sp)
    assert sd.train.items == ['train/a/1', 'train/b/4'] and sd.path == Path('/root')
    with pytest.raises(AttributeError): sd.no_such_attribute

def test_category_processor_shared_vocab_and_unknown_label():
    assert uniqueify([3, 1, 3, 2]) == [3, 1, 2] and uniqueify([3, 1, 3, 2], sort=True) == [1, 2, 3]
    assert Processor()([1, 2]) == [1, 2] and CategoryProcesser is CategoryProcessor
    cp = CategoryProcessor()
    assert cp(['dog', 'cat', 'dog']) == [1, 0, 1] and cp.vocab == ['cat', 'dog']
    assert cp(['cat']) == [0] and cp.deprocess([1, 0]) == ['dog', 'cat'] and cp.deproc1(torch.tensor(1)) == 'dog'
    with pytest.raises(ValueError, match="'bird'"): cp(['bird'])

def make_image_tree(root, n=6, classes=('cat', 'dog', 'eel')):
    "train/val folders of small PNG/JPEG images in mixed modes (RGB, L, RGBA, P); returns root."
    modes = ['RGB', 'L', 'RGBA', 'P']
    for split in ('train', 'val'):
        for ci, c in enumerate(classes):
            (root/split/c).mkdir(parents=True)
            for i in range(n):
                im = PIL.Image.new('RGB', (20 + i, 16), (40 * ci, 20 * i, 100)).convert(modes[i % len(modes)])
                im.save(root/split/c/f'{i}.{"jpg" if im.mode in ("RGB", "L") else "png"}')
    return root

def imagenette_like_data(root, bs=4, **kwargs):
    tfms = [make_rgb, ResizeFixed(12), to_byte_tensor, to_float_tensor]
    il = ImageList.from_files(make_image_tree(root), tfms=tfms)
    sd = SplitData.split_by_func(il, partial(grandparent_splitter, valid_name='val'))
    ll = label_by_func(sd, parent_labeler, proc_y=CategoryProcessor())
    return ll, ll.to_databunch(bs, **kwargs)

def test_label_by_func_and_labeled_data(tmp_path):
    ll, data = imagenette_like_data(tmp_path, num_workers=0)
    assert ll.train.proc_y is ll.valid.proc_y and ll.train.proc_y.vocab == ['cat', 'dog', 'eel']
    assert (len(ll.train), len(ll.valid)) == (18, 18) and (data.c_in, data.c_out) == (3, 3)
    x, y = ll.valid[7]
    assert x.shape == (3, 12, 12) and ll.valid.y_obj(7) == parent_labeler(ll.valid.x.items[7]) == ll.train.proc_y.vocab[y]
    assert ll.train.y_obj([0, 17]) == ['cat', 'eel']
    sd = SplitData.split_by_func(ImageList.from_files(tmp_path), partial(grandparent_splitter, valid_name='val'))
    odd = lambda fn: 'mystery' if 'val' in Path(fn).parts else parent_labeler(fn)
    with pytest.raises(ValueError, match="'mystery'"): label_by_func(sd, odd, proc_y=CategoryProcessor())

def test_labeled_data_pickles(tmp_path):
    ll, _ = imagenette_like_data(tmp_path, num_workers=0)
    ll2 = pickle.loads(pickle.dumps(ll))
    assert ll2.valid.proc_y.vocab == ll.valid.proc_y.vocab and ll2.train.y.items == ll.train.y.items
    assert torch.equal(ll2.train[5][0], ll.train[5][0]) and ll2.train.x.path == ll.train.x.path

@pytest.mark.parametrize('ctx', [None, 'spawn'])
def test_loading_with_two_workers(tmp_path, ctx):
    "A full pass with 2 worker processes; 'spawn' sends the pickled dataset to fresh interpreters."
    kw = {} if ctx is None else dict(multiprocessing_context=ctx)
    ll, data = imagenette_like_data(tmp_path, bs=4, num_workers=2, **kw)
    assert data.train_dl.num_workers == 2
    ys = []
    for xb, yb in data.valid_dl:
        assert xb.shape[1:] == (3, 12, 12) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        ys += yb.tolist()
    assert ys == ll.valid.y.items                        # validation order is kept
    if ctx is None: assert sum(len(xb) for xb, _ in data.train_dl) == len(ll.train)  # spawn is slow: valid only
    assert default_num_workers() >= 1

# ---------------------------------------------------------------- normalization and display
def test_normalize_chan():
    x = torch.rand(2, 3, 4, 5)
    m, s = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4])
    out = normalize_chan(x, m, s)
    assert torch.allclose(out[:, 2], (x[:, 2] - 0.9) / 0.4)
    assert torch.allclose(normalize_chan(x[0], [0.1, 0.5, 0.9], (0.2, 0.3, 0.4)), out[0])
    assert normalize_chan(x.double(), m, s).dtype == torch.float64

def test_imagenette_stats_and_norm_on_cpu():
    (mean, std) = imagenette_stats
    assert len(mean) == len(std) == 3
    assert all(0.35 < v < 0.55 for v in mean) and all(0.2 < v < 0.35 for v in std)
    assert norm_imagenette.keywords['mean'].device.type == 'cpu'
    x = torch.tensor(mean)[:, None, None].expand(3, 4, 4).clone()
    assert norm_imagenette(x).abs().max() < 1e-6

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_norm_imagenette_follows_cuda_batch():
    x = torch.rand(2, 3, 8, 8, device='cuda')
    out = norm_imagenette(x)
    assert out.device == x.device
    assert torch.allclose(out.cpu(), norm_imagenette(x.cpu()), atol=1e-6)

def test_import_does_not_touch_gpu():
    code = 'import torch, exp.nb_08; print(torch.cuda.is_initialized())'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == 'False'

def test_show_image_and_batch():
    import matplotlib.pyplot as plt
    x = torch.rand(5, 3, 8, 8)
    ax = show_image(x[0], title='one')
    assert ax.get_title() == 'one' and ax.get_images()[0].get_array().shape == (8, 8, 3)
    show_image(PIL.Image.new('L', (6, 4)))
    axs = show_batch(x, c=3, labels=list('abcde'))
    assert axs.shape == (2, 3) and [a.get_title() for a in axs.flat][:5] == list('abcde')
    assert sum(1 for a in axs.flat if a.get_images()) == 5
    plt.close('all')

# ---------------------------------------------------------------- the real dataset (skipped when unavailable)
def imagenette_path():
    from exp.nb_08 import datasets
    mirror = os.environ.get('EXP_DATA_MIRROR')
    if not (mirror and (Path(mirror)/'imagenette2-160.tgz').exists()): pytest.skip('set EXP_DATA_MIRROR to a folder with imagenette2-160.tgz')
    return datasets.untar_data(datasets.URLs.IMAGENETTE_160)

def test_imagenette_end_to_end():
    path = imagenette_path()
    il = ImageList.from_files(path, tfms=[make_rgb, ResizeFixed(64), to_byte_tensor, to_float_tensor])
    sd = SplitData.split_by_func(il, partial(grandparent_splitter, valid_name='val'))
    assert (len(sd.train), len(sd.valid)) == (9469, 3925)
    sub = SplitData(sd.train.new(sd.train.items[::95]), sd.valid.new(sd.valid.items[::40]))
    ll = label_by_func(sub, parent_labeler, proc_y=CategoryProcessor())
    assert len(ll.train.proc_y.vocab) == 10
    data = ll.to_databunch(16, num_workers=0)
    xb, yb = next(iter(data.valid_dl))
    assert xb.shape == (32, 3, 64, 64) and (data.c_in, data.c_out) == (3, 10)
    # ~100 training images agree with the exported statistics (measured on all of them)
    x = torch.stack([ll.train.x[i] for i in range(len(ll.train))]).double()
    mean, std = x.mean((0, 2, 3)), x.transpose(0, 1).reshape(3, -1).std(1)
    assert torch.allclose(mean.float(), torch.tensor(imagenette_stats[0]), atol=0.04), mean
    assert torch.allclose(std.float(), torch.tensor(imagenette_stats[1]), atol=0.03), std
