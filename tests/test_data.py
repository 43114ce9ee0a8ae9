"""Images and labels: load_image conversions, load_dataset labels and errors, ClassTable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adv2.data import (ClassTable, imagenet_classes, list_images, load_dataset, load_image,
                       to_tensor, to_uint8)


def _check(arr: np.ndarray, size: int = 224) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == (size, size, 3)


def _halves(w: int, h: int, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2:] = right
    return Image.fromarray(arr)


# ------------------------------------------------------------------------------- load_image


def test_load_image_grayscale(tmp_path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (300, 260), 100).save(path)
    arr = load_image(path)
    _check(arr)
    assert (arr == 100).all()


def test_load_image_16bit_grayscale_is_scaled(tmp_path) -> None:
    ramp = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    arr = load_image(path, size=256, resize=None)
    _check(arr, 256)
    # the ramp from black to white survives (top rows dark, bottom rows bright)
    assert arr[:20].mean() < 30 and arr[-20:].mean() > 225


def test_load_image_rgba_is_composited_on_white(tmp_path) -> None:
    im = Image.new("RGBA", (240, 240), (0, 0, 0, 0))  # fully transparent black
    im.paste((255, 0, 0, 255), (0, 0, 120, 240))  # opaque red on the left
    path = tmp_path / "rgba.png"
    im.save(path)
    arr = load_image(path, resize=None)
    _check(arr)
    assert (arr[:, :100] == [255, 0, 0]).all()
    assert (arr[:, 130:] == 255).all()  # transparent → white, not black


def test_load_image_la_is_composited_on_white(tmp_path) -> None:
    path = tmp_path / "la.png"
    Image.new("LA", (230, 230), (0, 0)).save(path)
    arr = load_image(path)
    _check(arr)
    assert (arr == 255).all()


def test_load_image_palette(tmp_path) -> None:
    im = _halves(300, 300, left=(0, 128, 0), right=(0, 0, 255)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert im.mode == "P"
    path = tmp_path / "pal.png"
    im.save(path)
    arr = load_image(path)
    _check(arr)
    assert (arr[:, :100] == [0, 128, 0]).all()
    assert (arr[:, 130:] == [0, 0, 255]).all()


def test_load_image_palette_with_transparency(tmp_path) -> None:
    im = Image.new("P", (240, 240), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (0, 0, 120, 240))
    path = tmp_path / "palt.png"
    im.save(path, transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    arr = load_image(path, resize=None)
    _check(arr)
    assert (arr[:, :100] == [255, 0, 0]).all()
    assert (arr[:, 130:] == 255).all()


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_load_image_cmyk(tmp_path, suffix) -> None:
    im = Image.new("CMYK", (300, 300), (0, 0, 0, 0))  # white
    im.paste((255, 0, 0, 0), (0, 0, 150, 300))  # cyan on the left
    path = tmp_path / f"cmyk{suffix}"
    im.save(path)
    assert Image.open(path).mode == "CMYK"
    arr = load_image(path)
    _check(arr)
    tol = 6 if suffix == ".jpg" else 0
    assert np.abs(arr[:, :90].astype(int) - [0, 255, 255]).max() <= tol
    assert np.abs(arr[:, 140:].astype(int) - 255).max() <= tol


def test_load_image_resize_and_centre_crop(tmp_path) -> None:
    # 600×300 (w×h): shorter side → 256 gives 512×256, centre crop 224 keeps x ∈ [144, 368)
    arr = np.zeros((300, 600, 3), dtype=np.uint8)
    arr[:, :300] = [255, 0, 0]
    arr[:, 300:] = [0, 0, 255]
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png")
    _check(out)
    assert (out[:, :100] == [255, 0, 0]).all()
    assert (out[:, 124:] == [0, 0, 255]).all()
    # a tall image is cropped vertically
    tall = np.zeros((500, 250, 3), dtype=np.uint8)
    tall[:250] = 50
    tall[250:] = 200
    Image.fromarray(tall).save(tmp_path / "tall.png")
    out = load_image(tmp_path / "tall.png", size=64, resize=None)
    _check(out, 64)
    assert (out[:28] == 50).all() and (out[36:] == 200).all()
    # a tiny image is upscaled
    Image.new("RGB", (40, 56), (10, 20, 30)).save(tmp_path / "tiny.png")
    out = load_image(tmp_path / "tiny.png")
    _check(out)
    assert (out == [10, 20, 30]).all()


def test_load_image_applies_exif_orientation(tmp_path) -> None:
    im = _halves(300, 240)  # red left, blue right; stored landscape
    exif = im.getexif()
    exif[0x0112] = 6  # display rotated 90° clockwise: left → top
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif, quality=95)
    out = load_image(path)
    _check(out)
    out = out.astype(int)
    assert np.abs(out[:80] - [255, 0, 0]).max() < 40
    assert np.abs(out[-80:] - [0, 0, 255]).max() < 40


def test_to_tensor_and_to_uint8_roundtrip() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    x = to_tensor(imgs)
    assert x.shape == (3, 3, 5, 7) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[1, 2], torch.from_numpy(imgs[1, :, :, 2]).float() / 255)
    assert np.array_equal(to_uint8(x), imgs)
    assert to_tensor(imgs[0]).shape == (1, 3, 5, 7)  # a single image
    assert to_tensor(list(imgs)).shape == (3, 3, 5, 7)  # a list
    # to_uint8 rounds and clamps
    y = torch.tensor([-0.5, 0.0, 0.5 / 255 + 1e-4, 1.0, 1.5]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(y)[0, 0, :, 0].tolist() == [0, 0, 1, 255, 255]


# ------------------------------------------------------------------------------ load_dataset


def _load(*args, **kwargs):
    data = load_dataset(*args, **kwargs)
    return data.samples, data.errors


def _save(path: Path, color=(120, 60, 30), size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_load_dataset_skips_corrupt_file_and_names_it(tmp_path) -> None:
    _save(tmp_path / "a.png", (10, 10, 10))
    (tmp_path / "bad.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    _save(tmp_path / "c.png", (200, 200, 200))
    (tmp_path / "notes.txt").write_text("not an image")
    samples, errors = _load(tmp_path)
    assert [s.name for s in samples] == ["a.png", "c.png"]
    assert len(errors) == 1
    file, message = errors[0]
    assert Path(file).name == "bad.jpg"
    assert message  # the reason is kept
    assert (samples[0].image == 10).all() and (samples[1].image == 200).all()
    assert all(s.label is None for s in samples)
    assert samples[0].path == tmp_path / "a.png"


def test_load_dataset_truncated_file_is_an_error(tmp_path) -> None:
    _save(tmp_path / "good.png")
    whole = tmp_path / "whole.jpg"
    _save(whole, size=(400, 400))
    (tmp_path / "trunc.jpg").write_bytes(whole.read_bytes()[:200])
    whole.unlink()
    samples, errors = _load(tmp_path)
    assert [s.name for s in samples] == ["good.png"]
    assert [Path(f).name for f, _ in errors] == ["trunc.jpg"]


def test_labels_from_imagenet_file_names(tmp_path) -> None:
    _save(tmp_path / "n01440764_tench.JPEG")
    _save(tmp_path / "n01484850_great_white_shark.JPEG")
    _save(tmp_path / "n99999999_unknown.JPEG")
    _save(tmp_path / "holiday.jpg")
    samples, errors = _load(tmp_path)
    assert not errors
    labels = {s.name: s.label for s in samples}
    assert labels == {"n01440764_tench.JPEG": 0, "n01484850_great_white_shark.JPEG": 2,
                      "n99999999_unknown.JPEG": None, "holiday.jpg": None}


def test_labels_from_class_subfolders(tmp_path) -> None:
    _save(tmp_path / "n01443537" / "x.png")  # synset → 1
    _save(tmp_path / "tench" / "y.png")  # class name → 0
    _save(tmp_path / "207" / "z.png")  # index
    _save(tmp_path / "misc" / "w.png")  # not a class
    samples, errors = _load(tmp_path)
    assert not errors
    assert {s.name: s.label for s in samples} == {
        "207/z.png": 207, "misc/w.png": None, "n01443537/x.png": 1, "tench/y.png": 0}


def test_labels_from_multiword_class_subfolder(tmp_path) -> None:
    _save(tmp_path / "great_white_shark" / "x.png")
    samples = load_dataset(tmp_path).samples
    assert samples[0].label == 2


def test_labels_from_csv(tmp_path) -> None:
    for name in ("a.png", "b.png", "c.png", "sub/d.png", "n01440764_e.png"):
        _save(tmp_path / name)
    csv_path = tmp_path.parent / f"{tmp_path.name}_labels.csv"
    csv_path.write_text(
        "path,label\n"
        "a.png,207\n"  # index
        "b.png,n01443537\n"  # synset
        "# a comment line\n"
        "c.png,Tench\n"  # class name, any case
        "sub/d.png,goldfish\n"  # relative path in a subfolder
        f"{tmp_path / 'n01440764_e.png'},5\n"  # absolute path; the CSV beats the file name
    )
    samples, errors = _load(tmp_path, labels_csv=csv_path)
    assert not errors
    assert {s.name: s.label for s in samples} == {
        "a.png": 207, "b.png": 1, "c.png": 0, "sub/d.png": 1, "n01440764_e.png": 5}


def test_csv_errors_name_the_line(tmp_path) -> None:
    _save(tmp_path / "a.png")
    bad = tmp_path.parent / "bad_labels.csv"
    bad.write_text("path,label\na.png,not_a_class\n")
    with pytest.raises(ValueError, match=r"bad_labels\.csv:2.*not_a_class"):
        load_dataset(tmp_path, labels_csv=bad)
    short = tmp_path.parent / "short_labels.csv"
    short.write_text("a.png\n")
    with pytest.raises(ValueError, match=r"short_labels\.csv:1"):
        load_dataset(tmp_path, labels_csv=short)


def test_load_dataset_limit_single_file_and_missing(tmp_path) -> None:
    for i in range(4):
        _save(tmp_path / f"img{i}.png")
    (tmp_path / "a_bad.png").write_bytes(b"garbage")
    samples, errors = _load(tmp_path, limit=2)
    assert [s.name for s in samples] == ["img0.png", "img1.png"]  # the limit counts loaded
    assert len(errors) == 1
    samples, errors = _load(tmp_path / "img3.png")
    assert [s.name for s in samples] == ["img3.png"] and not errors
    assert list_images(tmp_path / "img3.png") == [tmp_path / "img3.png"]
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing")
    samples = load_dataset(tmp_path, size=32).samples
    assert samples[0].image.shape == (32, 32, 3)


# -------------------------------------------------------------------------------- ClassTable


def test_imagenet_class_table() -> None:
    classes = imagenet_classes()
    assert isinstance(classes, ClassTable)
    assert len(classes.synsets) == len(classes.names) == 1000
    assert len(set(classes.synsets)) == 1000
    assert classes.synsets[0] == "n01440764" and classes.names[0] == "tench"


def test_class_table_index() -> None:
    classes = imagenet_classes()
    assert classes.index("0") == 0
    assert classes.index("999") == 999
    assert classes.index(" 207 ") == 207
    assert classes.index("n01484850") == 2
    assert classes.index("goldfish") == 1
    assert classes.index("GOLDFISH") == 1
    for bad in ("1000", "n00000000", "not a class", ""):
        with pytest.raises(ValueError, match="unknown class label"):
            classes.index(bad)
    table = ClassTable(("s0", "s1"), ("red fox", "cat"))
    assert table.index("red_fox") == 0
    assert table.index("Red Fox") == 0
    assert table.index("1") == 1
    with pytest.raises(ValueError):
        table.index("2")


@pytest.mark.parametrize("name", ["great_white_shark", "great white shark"])
def test_class_table_index_multiword_names(name) -> None:
    assert imagenet_classes().index(name) == 2


def test_labels_csv_paths_match_however_written_and_a_bom_is_no_label(tmp_path) -> None:
    for name in ("a.png", "sub/b.png", "c.png"):
        _save(tmp_path / name)
    csv_path = tmp_path.parent / f"{tmp_path.name}_bom.csv"
    csv_path.write_text("path,label\n./a.png,207\nsub//b.png,n01443537\n"
                        f"{tmp_path}/./c.png,5\n", encoding="utf-8-sig")
    samples, errors = _load(tmp_path, labels_csv=csv_path)
    assert not errors
    assert {s.name: s.label for s in samples} == {"a.png": 207, "sub/b.png": 1, "c.png": 5}


def test_a_class_name_two_classes_share_is_refused(tmp_path) -> None:
    classes = imagenet_classes()
    with pytest.raises(ValueError, match=r"'crane' names classes 134 and 517"):
        classes.index("crane")
    _save(tmp_path / "crane" / "x.png")  # not a class folder: the prediction labels it
    _save(tmp_path / "goldfish" / "y.png")
    samples, _ = _load(tmp_path)
    assert {s.name: s.label for s in samples} == {"crane/x.png": None, "goldfish/y.png": 1}


def test_a_folder_two_links_reach_keeps_the_first_name_in_sorted_order(tmp_path) -> None:
    _save(tmp_path / "real" / "im.png")
    for link in ("zlink", "mlink", "blink"):
        (tmp_path / link).symlink_to(tmp_path / "real", target_is_directory=True)
    names = [s.name for s in _load(tmp_path)[0]]
    assert names == ["blink/im.png"]
