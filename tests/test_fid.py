"""FID: the Fréchet distance against closed forms and an independent float64 computation,
the FID Inception architecture (key names, shapes, patched pools), the folder -> FID
pipeline with a randomly initialised network (plumbing only: no published weights here, so
those tests pass ``allow_other_weights=True``), and what makes a FID trustworthy: the weights'
hash check, the image counts and the warnings when a set is smaller than the limit, the file
types pytorch-fid reads, and (with pytorch-fid installed) agreement with pytorch-fid itself."""

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import blurdiff.cli.fid
from blurdiff import fid as fidmod
from blurdiff import inception as incmod
from blurdiff.atomic import file_sha256
from blurdiff.fid import (
    FIDReport,
    activation_statistics,
    fid_report,
    frechet_distance,
    load_statistics,
    load_statistics_with_count,
    save_statistics,
)
from blurdiff.images import IMAGE_EXTENSIONS, UndecodableDataError, list_image_files
from blurdiff.inception import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_SHA256_PREFIX,
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    InceptionA,
    InceptionE,
    UnpublishedWeightsError,
    check_weights_file,
    is_published_weights,
    load_fid_inception,
    random_fid_inception,
)

# --------------------------------------------------------------------------- Fréchet distance


def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d + 3))
    return a @ a.T / a.shape[1]


def _sqrtm_denman_beavers(a, iters=60):
    """Principal square root of a (non-symmetric) matrix with positive eigenvalues."""
    y, z = a.copy(), np.eye(a.shape[0])
    for _ in range(iters):
        y, z = 0.5 * (y + np.linalg.inv(z)), 0.5 * (z + np.linalg.inv(y))
    return y


def _fid_reference(mu1, s1, mu2, s2):
    """Textbook formula with sqrtm(S1 S2) from an independent iteration (no eigh)."""
    covmean = _sqrtm_denman_beavers(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_equal_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(0)
    d = 7
    s = _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    d = 9
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_singular_diagonal_covariances_closed_form():
    # Rank-deficient covariances (fewer samples than features) must not break the root.
    a = np.array([2.0, 0.0, 1.0, 0.0])
    b = np.array([0.5, 3.0, 0.0, 0.0])
    mu = np.zeros(4)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, np.diag(a), mu, np.diag(b)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [3, 16, 64])
def test_random_spd_against_independent_float64(d):
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ref = _fid_reference(mu1, s1, mu2, s2)
    # A second independent route: tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)) (real, >= 0).
    eig = np.linalg.eigvals(s1 @ s2)
    tr_root = np.sum(np.sqrt(eig.real))
    ref2 = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_root)
    assert ref == pytest.approx(ref2, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-10)


def test_symmetric_and_zero_on_identical():
    rng = np.random.default_rng(5)
    d = 12
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, rank=4)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # rank-deficient s2: sqrt of rounding-level eigenvalues limits agreement to ~1e-9 rel.
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-7)
    s2_full = _random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2_full) == pytest.approx(frechet_distance(mu2, s2_full, mu1, s1), rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) > 0.1


def test_frechet_distance_returns_python_float_from_float32_inputs():
    rng = np.random.default_rng(2)
    s = _random_spd(rng, 5).astype(np.float32)
    out = frechet_distance(np.zeros(5, np.float32), s, np.ones(5, np.float32), s)
    assert isinstance(out, float)
    assert out == pytest.approx(5.0, rel=1e-6)


def test_shape_errors_are_clear():
    s3, s4 = np.eye(3), np.eye(4)
    with pytest.raises(ValueError, match="different dimensions: 3 vs 4"):
        frechet_distance(np.zeros(3), s3, np.zeros(4), s4)
    with pytest.raises(ValueError, match=r"sigma1 must be \(3, 3\)"):
        frechet_distance(np.zeros(3), s4, np.zeros(3), s3)
    with pytest.raises(ValueError, match="mu2 must be a vector"):
        frechet_distance(np.zeros(3), s3, np.zeros((3, 1)), s3)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(3, np.nan), s3, np.zeros(3), s3)


# --------------------------------------------------------------------------- architecture


def test_state_dict_matches_torchvision_fid_layout():
    """Key names/shapes of pytorch-fid's file: torchvision Inception3 (aux_logits=False,
    1008 classes): 94 BasicConv2d (conv + bn with 5 entries each) plus fc."""
    sd = FIDInceptionV3().state_dict()
    assert len(sd) == 94 * 6 + 2
    n_params = sum(p.numel() for p in FIDInceptionV3().parameters())
    # torchvision's inception_v3 has 27,161,264 parameters (1000 classes, with AuxLogits
    # 3,326,696); without the aux head and with 1008 classes (+8 * 2049): 23,850,960.
    assert n_params == 27_161_264 - 3_326_696 + 8 * 2049
    expected_shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
        "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch3x3dbl_3a.bn.bias": (384,),
        "Mixed_7c.branch_pool.bn.num_batches_tracked": (),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("AuxLogits" in k for k in sd)
    bns = [m for m in FIDInceptionV3().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(m.eps == pytest.approx(1e-3) for m in bns)


def test_fid_patches_are_in_place():
    model = FIDInceptionV3()
    for name in ["Mixed_5b", "Mixed_5c", "Mixed_5d"]:
        assert isinstance(getattr(model, name), InceptionA)
    assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


def _identity_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_parameters()  # weight 1, bias 0, mean 0, var 1
            m.eps = 0.0


def test_inception_a_avg_pool_ignores_padding():
    """TF's average pool does not count the zero padding: a constant input stays constant."""
    block = InceptionA(4, pool_features=1).eval()
    _identity_bn(block)
    with torch.no_grad():
        block.branch_pool.conv.weight.fill_(0.25)
        out = block(torch.ones(1, 4, 6, 6))
    pool_branch = out[0, -1]
    assert torch.allclose(pool_branch, torch.ones_like(pool_branch), atol=1e-6)  # corners too


def test_inception_e_max_pool_patch():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 5)
    for pool, ref in [
        ("max", lambda t: F.max_pool2d(t, 3, 1, 1)),
        ("avg", lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)),
    ]:
        block = InceptionE(8, pool=pool).eval()
        with torch.no_grad():
            out = block(x)
            expected = block.branch_pool(ref(x))
        assert torch.allclose(out[:, -192:], expected, atol=1e-6), pool


def test_preprocess_matches_pytorch_fid():
    model = FIDInceptionV3()
    x = torch.rand(2, 3, 64, 64)
    expected = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.equal(model.preprocess(x), expected)
    assert model.preprocess(torch.zeros(1, 3, 8, 8)).eq(-1).all()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.preprocess(torch.rand(1, 1, 8, 8))


# --------------------------------------------------------------------------- plumbing


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A random FID Inception and its state dict saved under the published file name."""
    model = random_fid_inception(seed=3)
    folder = tmp_path_factory.mktemp("weights")
    path = folder / FID_WEIGHTS_FILENAME
    torch.save(model.state_dict(), path)
    return model, path


def _write_pngs(folder: Path, n: int, seed: int, kind: str = "noise", size: int = 32):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if kind == "noise":
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:  # smooth dark gradients
            ramp = np.linspace(0, 1, size)[None, :, None] * rng.uniform(20, 80, (1, 1, 3))
            arr = np.broadcast_to(ramp, (size, size, 3)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:03d}.png")
    return folder


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not any(s in k for s in skip):
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.plumbing
def test_state_dict_round_trip_strict(random_weights):
    """Checks wiring only: a random network's state dict reloads strictly through the loader."""
    model, path = random_weights
    loaded = load_fid_inception(weights=path, allow_other_weights=True)
    assert not loaded.training and loaded.input_resolution == 299
    assert not any(p.requires_grad for p in loaded.parameters())
    _assert_same_state(loaded, model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    assert out.shape == (1, 2048)
    assert torch.isfinite(out).all() and out.std() > 0
    assert torch.equal(out, ref)
    # A folder holding the file works too; a file missing a key fails loudly (strict).
    _assert_same_state(load_fid_inception(weights=path.parent, allow_other_weights=True), model)
    sd = torch.load(path, weights_only=True)
    del sd["Mixed_6c.branch7x7_2.conv.weight"]
    bad = path.parent / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(RuntimeError, match="Missing key.*Mixed_6c.branch7x7_2.conv.weight"):
        load_fid_inception(weights=bad)
    sd = torch.load(path, weights_only=True)
    sd["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    torch.save(sd, bad)
    with pytest.raises(RuntimeError, match="Unexpected key.*AuxLogits.fc.weight"):
        load_fid_inception(weights=bad)


@pytest.mark.plumbing
def test_state_dict_without_batchnorm_counters_loads(random_weights):
    """Checks wiring only: an old-style file (legacy non-zip serialisation, as files written
    before PyTorch 1.6 are, and no num_batches_tracked, as before 0.4.1) still loads."""
    model, path = random_weights
    sd = {k: v for k, v in torch.load(path, weights_only=True).items() if "num_batches" not in k}
    old = path.parent / "old.pth"
    torch.save(sd, old, _use_new_zipfile_serialization=False)
    assert old.read_bytes()[:2] != b"PK"  # not a zip archive
    _assert_same_state(load_fid_inception(weights=old, allow_other_weights=True), model, skip=("num_batches_tracked",))


@pytest.mark.plumbing
def test_mixed_image_sizes_are_fed_separately(tmp_path):
    """Checks wiring only: images of different sizes give the features each gives alone."""
    model = random_fid_inception(seed=1, input_resolution=75)
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate([16, 24, 16]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(files[-1])
    together = fidmod.compute_activations(files, model, batch_size=3)
    alone = np.concatenate([fidmod.compute_activations([f], model, batch_size=1) for f in files])
    assert together.shape == (3, 2048) and together.dtype == np.float64
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], together[2])


@pytest.mark.plumbing
def test_missing_weights_error_names_the_file(tmp_path, monkeypatch):
    """Checks wiring only: nothing is downloaded; the error says what, where and from where."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as info:
        load_fid_inception()
    msg = str(info.value)
    assert FID_WEIGHTS_FILENAME in msg
    assert FID_WEIGHTS_URL in msg
    assert str(tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME) in msg
    explicit = tmp_path / "elsewhere" / "w.pth"
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_FILENAME) as info:
        load_fid_inception(weights=explicit)
    assert str(explicit) in str(info.value)
    real = _write_pngs(tmp_path / "real", 2, 0)
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_FILENAME):
        fid_report(real, real, cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("*.pth"))


def test_list_image_files_top_level_sorted_filtered_limited(tmp_path):
    (tmp_path / "figures").mkdir()
    for name in ["figures/2.png", "b1.JPG", "a0.webp", "z.jpeg", "notes.txt", "x.npz"]:
        (tmp_path / name).write_bytes(b"")
    rel = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert rel == ["a0.webp", "b1.JPG", "z.jpeg"]  # not the sub-folder's figures
    for i in range(11):
        (tmp_path / f"n{i:02d}.png").write_bytes(b"")
    files = list_image_files(tmp_path, limit=4)
    allf = list_image_files(tmp_path)
    assert len(allf) == 14 and len(files) == 4
    assert files == [allf[0], allf[3], allf[7], allf[10]]  # evenly spaced, deterministic


def test_statistics_npz_round_trip_is_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), _random_spd(rng, 6)
    path = save_statistics(tmp_path / "s" / "stats.npz", mu, sigma, count=11)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["stats.npz"]
    m2, s2 = activation_statistics(path, None)
    assert np.array_equal(m2, mu) and np.array_equal(s2, sigma)
    assert int(np.load(path)["count"]) == 11
    with pytest.raises(ValueError, match=r"sigma must be \(6, 6\)"):
        save_statistics(tmp_path / "bad.npz", mu, np.eye(5))
    # A failure while writing leaves the old file intact and no temporary behind.
    monkeypatch.setattr(fidmod.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        save_statistics(path, mu + 1, sigma)
    assert np.array_equal(load_statistics(path)[0], mu)
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]


def test_damaged_statistics_file_is_a_value_error_naming_it(tmp_path):
    good = save_statistics(tmp_path / "good.npz", np.zeros(3), np.eye(3))
    for name, content in [("empty.npz", b""), ("cut.npz", good.read_bytes()[:-40]), ("text.npz", b"mu, sigma")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=str(tmp_path / name)):
            load_statistics(tmp_path / name)
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz is not an .npz of FID statistics: no \['mu', 'sigma'\]"):
        load_statistics(tmp_path / "other.npz")


@pytest.mark.parametrize("content", [b"", b"not a pickle", b"PK\x03\x04 a truncated zip"])
def test_a_file_that_is_not_the_weights_is_a_typed_error_naming_it(tmp_path, content):
    weights = tmp_path / "w.pth"
    weights.write_bytes(content)
    with pytest.raises(incmod.InceptionWeightsError, match=str(weights)) as info:
        load_fid_inception(weights=weights)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_folder_with_fewer_than_two_images_is_an_error(tmp_path, random_weights):
    _, weights = random_weights
    one = _write_pngs(tmp_path / "one", 1, 0)
    two = _write_pngs(tmp_path / "two", 2, 1)
    with pytest.raises(ValueError, match="1 image.*at least 2"):
        fid_report(one, two, weights=weights, cache_dir=tmp_path / "c", allow_other_weights=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="0 image.*at least 2"):
        activation_statistics(empty, None)


def _small_network(monkeypatch):
    """Load the (random) weights as usual but resize to 75x75 instead of 299x299: the same
    network ~16x cheaper on two CPU cores. The 299 path is covered by the round-trip test."""
    real_loader = fidmod.load_fid_inception

    def loader(*args, **kwargs):
        model = real_loader(*args, **kwargs)
        model.input_resolution = 75
        return model

    monkeypatch.setattr(fidmod, "load_fid_inception", loader)


@pytest.mark.plumbing
def test_fid_pipeline_end_to_end_and_cache(tmp_path, random_weights, monkeypatch):
    """Checks wiring only (random Inception weights, not a published FID): folders of PNGs ->
    features -> statistics -> FID; identical folders give ~0; the real set's statistics are
    cached in an .npz and reused; a changed real set invalidates the cache."""
    _, weights = random_weights
    _small_network(monkeypatch)
    real = _write_pngs(tmp_path / "real", 3, seed=0, kind="noise")
    same = tmp_path / "same"
    shutil.copytree(real, same)
    fake = _write_pngs(tmp_path / "fake", 3, seed=1, kind="smooth")
    cache = tmp_path / "cache"

    calls = []
    original = fidmod.compute_activations

    def counting(files, *args, **kwargs):
        calls.append((Path(files[0]).parent.name, len(files)))
        return original(files, *args, **kwargs)

    monkeypatch.setattr(fidmod, "compute_activations", counting)

    d_same = fid_report(real, same, weights=weights, batch_size=3, cache_dir=cache, allow_other_weights=True).fid
    assert calls == [("real", 3), ("same", 3)]
    assert abs(d_same) < 1e-6
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1 and cached[0].name.startswith("real-")
    mu_c, sigma_c = load_statistics(cached[0])
    assert mu_c.shape == (2048,) and sigma_c.shape == (2048, 2048)
    assert int(np.load(cached[0])["count"]) == 3

    # From here on record the statistics handed to the distance instead of running its
    # 2048-d eigendecompositions again (the distance is tested on its own above; FID is at
    # least the squared distance of the means, so a positive one means a positive FID).
    seen = []

    def recording(mu1, sigma1, mu2, sigma2):
        seen.append((mu1, sigma1, mu2, sigma2))
        return float(np.sum((mu1 - mu2) ** 2))

    monkeypatch.setattr(fidmod, "frechet_distance", recording)
    d_diff = fid_report(real, fake, weights=weights, batch_size=3, cache_dir=cache, allow_other_weights=True).fid
    assert calls[2:] == [("fake", 3)]  # real came from the cache
    assert d_diff > 1e3 * max(d_same, 1e-9)
    assert np.array_equal(seen[0][0], mu_c) and np.array_equal(seen[0][1], sigma_c)

    # With the extractor broken, only the cache can supply the real statistics.
    fake_npz = save_statistics(tmp_path / "fake_stats.npz", seen[0][2], seen[0][3])

    def broken(*args, **kwargs):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(fidmod, "compute_activations", broken)
    d_npz = fid_report(real, fake_npz, weights=weights, device="cpu", cache_dir=cache, allow_other_weights=True).fid
    assert d_npz == d_diff
    for x, y in zip(seen[1], seen[0]):
        assert np.array_equal(x, y)

    # Changing the real set (here a file's mtime) changes the key: no stale statistics.
    os.utime(real / "img_000.png", ns=(0, 10**18))
    with pytest.raises(AssertionError, match="recomputed"):
        fid_report(real, fake_npz, weights=weights, device="cpu", cache_dir=cache, allow_other_weights=True)
    # So does a limit that selects a different subset.
    monkeypatch.setattr(fidmod, "compute_activations", counting)
    fid_report(real, fake_npz, weights=weights, device="cpu", cache_dir=cache, limit=2, allow_other_weights=True)
    assert calls[-1] == ("real", 2)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not [p for p in cache.iterdir() if p.suffix != ".npz"]  # no temporaries left


@pytest.mark.plumbing
def test_fid_report_uses_hub_cache_and_prints_nothing(tmp_path, random_weights, monkeypatch, capsys):
    """Checks wiring only: fid_report finds the weights in the hub cache, returns a float, and
    the command line is FID-10K by default."""
    parser = argparse.ArgumentParser()
    blurdiff.cli.fid.add_arguments(parser)
    assert parser.get_default("limit") == fidmod.DEFAULT_LIMIT == 10000
    assert "FID-10K" in fidmod.__doc__ and "64x64" in fidmod.__doc__
    _, weights = random_weights
    _small_network(monkeypatch)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    shutil.copy(weights, hub / "checkpoints" / FID_WEIGHTS_FILENAME)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(fidmod, "DEFAULT_CACHE_DIR", tmp_path / "default_cache")
    real = _write_pngs(tmp_path / "r", 2, seed=4)
    fake = _write_pngs(tmp_path / "f", 2, seed=5, kind="smooth")
    seen = []

    def distance(mu1, sigma1, mu2, sigma2):  # the distance itself is tested above
        seen.append((mu1.shape, sigma1.shape, mu2.shape, sigma2.shape, float(np.sum(mu1 - mu2))))
        return 12.5

    monkeypatch.setattr(fidmod, "frechet_distance", distance)
    out = fid_report(real, fake, batch_size=2, device="cpu", allow_other_weights=True).fid
    assert out == 12.5
    assert seen[0][:4] == ((2048,), (2048, 2048), (2048,), (2048, 2048)) and seen[0][4] != 0
    assert len(list((tmp_path / "default_cache").glob("*.npz"))) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# --------------------------------------------------------------------------- trust: weights


def test_unpublished_weights_are_refused_naming_file_hash_and_override(random_weights):
    """The random weights saved under the published name are not the published file: its
    sha256 does not begin 6726825d, and the loader says so, and how to override."""
    _, path = random_weights
    sha = file_sha256(path)
    assert not sha.startswith(FID_WEIGHTS_SHA256_PREFIX) and not is_published_weights(sha)
    with pytest.raises(UnpublishedWeightsError) as info:
        load_fid_inception(weights=path)
    msg = str(info.value)
    assert isinstance(info.value, incmod.InceptionWeightsError) and isinstance(info.value, ValueError)
    for part in (str(path), sha[:8], FID_WEIGHTS_SHA256_PREFIX, "allow_other_weights=True", "--allow-other-weights"):
        assert part in msg, part
    assert "not comparable with published" in msg and "\n" not in msg
    assert check_weights_file(path, allow_other_weights=True) == sha


def test_published_hash_is_accepted(random_weights, monkeypatch):
    """Wiring of the check only: a file whose sha256 begins 6726825d loads without the override."""
    _, path = random_weights
    monkeypatch.setattr(incmod, "file_sha256", lambda p: FID_WEIGHTS_SHA256_PREFIX + "0" * 56)
    assert not load_fid_inception(weights=path).training
    assert is_published_weights("6726825D" + "f" * 56)


@pytest.mark.plumbing
def test_fid_refuses_unpublished_weights_even_on_a_cache_hit(tmp_path, random_weights, monkeypatch):
    """Checks wiring only: allowed once (which caches the real statistics), refused after: the
    cache must not let other weights through; nothing is computed before the refusal."""
    _, weights = random_weights
    _small_network(monkeypatch)
    monkeypatch.setattr(fidmod, "frechet_distance", lambda *a: 1.0)  # the distance is tested above
    real = _write_pngs(tmp_path / "real", 2, seed=0)
    fake = _write_pngs(tmp_path / "fake", 2, seed=1)
    cache = tmp_path / "cache"
    report = fid_report(real, fake, weights=weights, cache_dir=cache, allow_other_weights=True)
    assert report.published_weights is False and report.weights_sha256 == file_sha256(weights)
    fake_npz = save_statistics(tmp_path / "fake.npz", np.zeros(2048), np.eye(2048), count=2)

    def broken(*args, **kwargs):
        raise AssertionError("features computed with refused weights")

    monkeypatch.setattr(fidmod, "compute_activations", broken)
    for other in (fake, fake_npz):
        with pytest.raises(UnpublishedWeightsError, match="--allow-other-weights"):
            fid_report(real, other, weights=weights, cache_dir=cache)
    assert fid_report(real, fake_npz, weights=weights, cache_dir=cache, allow_other_weights=True).fid == 1.0


# --------------------------------------------------------------------------- trust: counts


def test_statistics_count_is_read_back_or_none(tmp_path):
    mu, sigma = np.zeros(3), np.eye(3)
    assert load_statistics_with_count(save_statistics(tmp_path / "c.npz", mu, sigma, count=7))[2] == 7
    assert load_statistics_with_count(save_statistics(tmp_path / "n.npz", mu, sigma))[2] is None
    np.savez(tmp_path / "bad.npz", mu=mu, sigma=sigma, count=np.array([1.5, 2]))
    with pytest.raises(ValueError, match=r"bad.npz: its 'count' must be the number of images"):
        load_statistics_with_count(tmp_path / "bad.npz")


@pytest.mark.plumbing
def test_report_counts_limit_warnings_and_cache_hit(tmp_path, random_weights, monkeypatch):
    """Checks wiring only: each side's image count (folder, cached folder, .npz with and
    without a count), and the warnings when a side has fewer images than the limit."""
    _, weights = random_weights
    _small_network(monkeypatch)
    monkeypatch.setattr(fidmod, "frechet_distance", lambda *a: 3.25)
    real = _write_pngs(tmp_path / "real", 4, seed=0)
    fake = _write_pngs(tmp_path / "fake", 3, seed=1, kind="smooth")
    cache = tmp_path / "cache"
    kw = dict(weights=weights, cache_dir=cache, allow_other_weights=True)

    report = fid_report(real, fake, limit=10000, **kw)
    assert isinstance(report, FIDReport) and report.fid == 3.25
    assert (report.real_count, report.fake_count, report.limit) == (4, 3, 10000)
    assert report.weights_sha256 == file_sha256(weights) and report.published_weights is False
    warnings = report.warnings()
    assert len(warnings) == 3
    assert "not comparable with published FIDs" in warnings[0] and str(weights) in warnings[0]
    assert str(real) in warnings[1] and "FID-4, not FID-10K" in warnings[1]
    assert str(fake) in warnings[2] and "FID-3, not FID-10K" in warnings[2]
    assert all("biased upwards" in w and "the paper's" in w for w in warnings[1:])

    # The cached real statistics keep their count; a limit of 2 takes 2 images of each set.
    def broken_for_real(files, *args, **kwargs):
        assert Path(files[0]).parent.name != "real", "real statistics recomputed although cached"
        return original(files, *args, **kwargs)

    original = fidmod.compute_activations
    monkeypatch.setattr(fidmod, "compute_activations", broken_for_real)
    again = fid_report(real, fake, limit=10000, **kw)
    assert (again.real_count, again.fake_count) == (4, 3)
    monkeypatch.setattr(fidmod, "compute_activations", original)  # a new subset: a new cache entry
    limited = fid_report(real, fake, limit=2, **kw)
    assert (limited.real_count, limited.fake_count) == (2, 2)
    assert [w for w in limited.warnings() if "fewer than the limit" in w] == []
    unlimited = fid_report(real, fake, **kw)  # the library's default: all images, no limit to miss
    assert unlimited.limit is None and len(unlimited.warnings()) == 1  # only the weights

    # .npz statistics: the stored count, or None (unknown) when the file stores none.
    with_count = save_statistics(tmp_path / "with.npz", np.zeros(2048), np.eye(2048), count=5000)
    without = save_statistics(tmp_path / "without.npz", np.zeros(2048), np.eye(2048))
    report = fid_report(with_count, without, limit=10000, **kw)
    assert (report.real_count, report.fake_count) == (5000, None)
    assert report.weights_sha256 is None and report.published_weights is None  # no network run
    (warning,) = report.warnings()
    assert "statistics of only 5000 images" in warning and "FID-5K, not FID-10K" in warning


@pytest.mark.plumbing
def test_cli_prints_fid_counts_and_warns_on_stderr(tmp_path, random_weights, monkeypatch, capsys):
    """Checks wiring only: `blurdiff fid` prints the FID and both counts on stdout; a set smaller
    than --limit and other weights are warned about on stderr, and flagged on the FID line;
    without --allow-other-weights the random weights are refused (exit 2, the flag named)."""
    from blurdiff.cli import main

    _, weights = random_weights
    _small_network(monkeypatch)
    monkeypatch.setattr(fidmod, "frechet_distance", lambda *a: 7.5)
    monkeypatch.setattr(fidmod, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    real = _write_pngs(tmp_path / "real", 3, seed=0)
    fake = _write_pngs(tmp_path / "fake", 2, seed=1, kind="smooth")
    argv = ["fid", "--real", str(real), "--fake", str(fake), "--inception-weights", str(weights), "--device", "cpu"]

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "blurdiff fid: error:" in err and "--allow-other-weights" in err and str(weights) in err

    assert main([*argv, "--allow-other-weights"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("FID: 7.5000 (NOT comparable with published FIDs")
    assert lines[1] == f"real: 3 images ({real})" and lines[2] == f"fake: 2 images ({fake})"
    assert "NOT the published pytorch-fid file" in lines[3] and file_sha256(weights)[:8] in lines[3]
    warnings = [ln for ln in err.splitlines() if ln.startswith("blurdiff fid: warning:")]
    assert len(warnings) == 3, err
    assert "not comparable with published FIDs" in warnings[0]
    assert "FID-3, not FID-10K" in warnings[1] and "FID-2, not FID-10K" in warnings[2]
    assert all("biased upwards" in w for w in warnings[1:])

    # With the published hash and enough images for --limit: no caveat, nothing on stderr.
    monkeypatch.setattr(incmod, "file_sha256", lambda p: FID_WEIGHTS_SHA256_PREFIX + "0" * 56)
    monkeypatch.setattr(fidmod, "check_weights_file", incmod.check_weights_file)
    assert main([*argv, "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "FID: 7.5000" and err == ""
    assert "(sha256 6726825d..., the published pytorch-fid file)" in out
    assert f"real: 2 images ({real})" in out


# --------------------------------------------------------------------------- trust: file types


def test_fid_reads_pytorch_fid_extensions():
    assert set(IMAGE_EXTENSIONS) >= {
        f".{e}" for e in ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
    }


def test_pgm_ppm_and_tiff_are_listed_and_read(tmp_path):
    """Files Pillow writes: grey and 16-bit PGM, RGB PPM, 8-bit RGB, 16-bit grey and float TIFF;
    each read as the 8-bit RGB image it holds (grey repeated, 16 bits scaled by 1/257, floats
    in [0, 1] by 255)."""
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    grey16 = grey.astype(np.uint16) * 257
    images = {
        "a_grey.pgm": (Image.fromarray(grey), grey),
        "b_grey16.pgm": (Image.fromarray(grey16), grey),
        "c_rgb.ppm": (Image.fromarray(rgb), rgb),
        "d_rgb.tif": (Image.fromarray(rgb), rgb),
        "e_grey16.tiff": (Image.fromarray(grey16), grey),
        "f_float01.tif": (Image.fromarray(grey.astype(np.float32) / 255.0), grey),
        "g_float255.TIF": (Image.fromarray(grey.astype(np.float32)), grey),
    }
    for name, (img, _) in images.items():
        img.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    files = list_image_files(tmp_path)
    assert [f.name for f in files] == sorted(images)
    with Image.open(tmp_path / "b_grey16.pgm") as im16, Image.open(tmp_path / "f_float01.tif") as imf:
        assert im16.mode.startswith("I") and imf.mode == "F"  # the modes the reader has to convert
    for f in files:
        expected = images[f.name][1]
        if expected.ndim == 2:
            expected = np.repeat(expected[..., None], 3, axis=2)
        got = fidmod.read_image(f)
        assert got.dtype == np.uint8 and got.shape == (6, 8, 3), f.name
        np.testing.assert_array_equal(got, expected, err_msg=f.name)


def test_float_tiff_of_unknown_range_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "hdr.tif"
    Image.fromarray(np.linspace(-1.0, 300.0, 12, dtype=np.float32).reshape(3, 4)).save(bad)
    with pytest.raises(UndecodableDataError, match=r"hdr.tif.*values in \[-1, 300\], neither \[0, 1\] nor \[0, 255\]"):
        fidmod.read_image(bad)


# --------------------------------------------------------------------------- pytorch-fid itself


@pytest.mark.slow
@pytest.mark.plumbing
# pytorch-fid's own sqrtm call: scipy deprecates its `disp` argument, and S1 S2 of 5 images is
# singular by construction (what the tolerance below is about).
@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_agrees_with_pytorch_fid(tmp_path, random_weights, monkeypatch):
    """Checks wiring only (random weights in both): pytorch-fid's own InceptionV3 and FID, fed
    the same weights file, give our pool3 features and our FID. Needs the `fid-check` extra
    (pip install "blurdiff[fid-check]"); ~30 s on one CPU core, mostly scipy's sqrtm.

    Tolerances: both run the same float32 convolutions, so the features agree to float32
    rounding (bitwise on this machine); 1e-4 of the largest feature still catches every real
    difference, e.g. an unpatched Mixed_7c pool changes them by ~20% and align_corners=True in
    the resize by ~1%. The FIDs come from the same features through two algorithms (scipy's
    Schur sqrtm of S1 S2 there, the eigenvalues of sqrt(S1) S2 sqrt(S1) here) on rank-deficient
    covariances (5 images, 2048 features); they agreed to 3e-8 relative, so 1e-5 is rounding,
    not a formula difference (a missing factor 2 on the trace term would be O(1))."""
    pytest.importorskip("pytorch_fid")
    import pytorch_fid.inception as pf_inception
    from pytorch_fid.fid_score import calculate_fid_given_paths

    model, weights = random_weights
    urls = []

    def from_our_file(url, *args, **kwargs):  # instead of downloading the published weights
        urls.append(url)
        return torch.load(weights, map_location="cpu", weights_only=True)

    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", from_our_file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # and nothing cached
    theirs = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    assert urls and all(u.endswith(FID_WEIGHTS_FILENAME) for u in urls)

    torch.manual_seed(0)
    for shape in [(3, 3, 32, 32), (2, 3, 64, 48)]:
        x = torch.rand(shape)
        with torch.no_grad():
            ref = theirs(x)[0].flatten(1)
            ours = model(x)
        assert ref.shape == ours.shape == (shape[0], 2048)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))

    real = _write_pngs(tmp_path / "real", 5, seed=0, kind="noise")
    fake = _write_pngs(tmp_path / "fake", 5, seed=1, kind="smooth")
    expected = calculate_fid_given_paths([str(real), str(fake)], 5, "cpu", 2048, num_workers=0)
    kw = dict(batch_size=5, device="cpu", cache_dir=tmp_path / "c", allow_other_weights=True)
    report = fid_report(real, fake, weights=weights, **kw)
    assert (report.real_count, report.fake_count) == (5, 5)
    assert expected > 1.0
    assert report.fid == pytest.approx(expected, rel=1e-5)
    assert not (tmp_path / "hub").exists()
