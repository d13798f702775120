"""One image reader and one folder listing for training data, FID and spectra: every mode
(8/16-bit, palette, grey, alpha) decodes to the same 8-bit RGB everywhere, and listing a folder
neither follows directory links into loops nor counts a file twice."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from blurdiff import data, fid, images


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _grey16() -> np.ndarray:
    """16-bit grey levels that are exact multiples of 257, so 8-bit is ``v // 257``."""
    return (np.arange(24, dtype=np.uint16).reshape(4, 6) * 10 * 257).astype(np.uint16)


def _every_reader(folder) -> list[np.ndarray]:
    """The image of a one-image folder as uint8 HWC, through training data, FID and spectra."""
    ds = data.ImageFolderDataset(folder, None)
    (f,) = images.list_image_files(folder)
    from_data = ((ds[(0, False)] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    from_spectrum = ((images.load_image_folder(folder)[0] + 1) * 127.5).round().to(torch.uint8)
    return [from_data, fid.read_image(f), from_spectrum.permute(1, 2, 0).numpy()]


def test_16bit_grey_png_is_scaled_not_clipped_by_every_reader(tmp_path):
    grey = _grey16()
    Image.fromarray(grey).save(tmp_path / "g16.png")  # mode I;16
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    expect = np.repeat((grey // 257).astype(np.uint8)[..., None], 3, axis=2)
    for got in _every_reader(tmp_path):
        np.testing.assert_array_equal(got, expect)


def test_16bit_rgb_png_reads_alike_everywhere(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png16_rgb(arr))
    got = _every_reader(tmp_path)
    # Pillow decodes 48-bit PNGs to 8 bits itself (the high byte): at most 1 from v / 257.
    assert np.abs(got[0].astype(int) - np.rint(arr / 257.0)).max() <= 1
    for other in got[1:]:
        np.testing.assert_array_equal(other, got[0])


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_to_rgb_scales_16bit_modes(mode):
    grey = _grey16()
    if mode == "I":
        img = Image.fromarray(grey.astype(np.int32))
    else:
        img = Image.frombytes(mode, grey.shape[::-1], grey.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert img.mode == mode
    rgb = images.to_rgb(img)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb)[..., 1], grey // 257)


def test_palette_grey_and_alpha_modes_read_alike(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, np.full((6, 8), 128, np.uint8)]))
    files = {
        "rgba.png": rgba,
        "la.png": Image.fromarray(rgb[..., 0]).convert("LA"),
        "l.png": Image.fromarray(rgb[..., 0]),
        "p.png": Image.fromarray(rgb).convert("P"),
        "p_transparent.png": Image.fromarray(rgb).convert("P"),
        "one_bit.bmp": Image.fromarray(rgb[..., 0] > 127),
    }
    for name, img in files.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        kwargs = {"transparency": 0} if name == "p_transparent.png" else {}
        img.save(folder / name, **kwargs)
        readings = _every_reader(folder)
        for got in readings:
            assert got.shape == (6, 8, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, readings[0])
        with Image.open(folder / name) as im:  # alpha is dropped, not composited
            np.testing.assert_array_equal(readings[0], np.asarray(im.convert("RGBA").convert("RGB")))


def test_one_extension_list_for_all_readers(tmp_path):
    assert fid.IMAGE_EXTENSIONS is images.IMAGE_EXTENSIONS
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.bmp")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b.PNG")
    assert [p.name for p in images.list_image_files(tmp_path)] == ["a.bmp", "b.PNG"]
    assert images.load_image_folder(tmp_path).shape == (2, 3, 4, 4)
    assert len(data.ImageFolderDataset(tmp_path, None)) == 2


def test_undecodable_file_is_a_typed_error_naming_it(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(images.UndecodableDataError, match=str(bad)):
        images.read_image(bad)
    good = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good, format="PNG")
    (tmp_path / "cut.png").write_bytes(good.getvalue()[:-30])  # truncated inside the data
    with pytest.raises(images.UndecodableDataError, match="cut.png"):
        images.read_image(tmp_path / "cut.png")


# --------------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------------


def _tree_with_links(root):
    """root/{a,c}.png, root/sub/b.png, root/sub/loop -> .. (a loop), root/dup.png -> a.png,
    root/ext -> ../outside (a link out of the tree, not a loop) holding e.png."""
    (root / "sub").mkdir(parents=True)
    (root.parent / "outside").mkdir()
    for i, rel in enumerate(["a.png", "c.png", "sub/b.png", "../outside/e.png"]):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(root / rel)
    os.symlink("..", root / "sub" / "loop")
    os.symlink("a.png", root / "dup.png")
    os.symlink(os.path.join("..", "outside"), root / "ext")


def test_symlink_loop_and_duplicate_files_are_listed_once(tmp_path):
    root = tmp_path / "imgs"
    _tree_with_links(root)
    ds = data.ImageFolderDataset(root, 4)
    assert [ds.key(i) for i in range(len(ds))] == ["a.png", "c.png", "ext/e.png", "sub/b.png"]
    assert [p.name for p in images.list_image_files(root)] == ["a.png", "c.png"]
    assert images.load_image_folder(root).shape[0] == 2
    assert images.list_images(root) == ["a.png", "c.png", "ext/e.png", "sub/b.png"]
    assert images.list_images(root, recursive=False) == ["a.png", "c.png"]


def test_listing_skips_broken_links_and_hidden_files(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    os.symlink("missing.png", tmp_path / "broken.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / ".hidden.png")
    assert [p.name for p in images.list_image_files(tmp_path)] == ["a.png"]
    assert images.list_images(tmp_path) == ["a.png"]
