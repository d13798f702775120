"""FID: the Fréchet distance against closed forms and an independent float64 computation,
the FID Inception architecture (key names, shapes, patched pools), and the folder -> FID
pipeline with a randomly initialised network (plumbing only: no published weights here)."""

import inspect
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blurdiff import fid as fidmod
from blurdiff import inception as incmod
from blurdiff.fid import (
    activation_statistics,
    fid_from_paths,
    fid_main,
    frechet_distance,
    list_image_files,
    load_statistics,
    save_statistics,
)
from blurdiff.inception import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    InceptionA,
    InceptionE,
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
    loaded = load_fid_inception(weights=path)
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
    _assert_same_state(load_fid_inception(weights=path.parent), model)
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
    _assert_same_state(load_fid_inception(weights=old), model, skip=("num_batches_tracked",))


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
        fid_from_paths(real, real, cache_dir=tmp_path / "cache")
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
        fid_from_paths(one, two, weights=weights, cache_dir=tmp_path / "c")
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

    d_same = fid_from_paths(real, same, weights=weights, batch_size=3, cache_dir=cache)
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
    d_diff = fid_from_paths(real, fake, weights=weights, batch_size=3, cache_dir=cache)
    assert calls[2:] == [("fake", 3)]  # real came from the cache
    assert d_diff > 1e3 * max(d_same, 1e-9)
    assert np.array_equal(seen[0][0], mu_c) and np.array_equal(seen[0][1], sigma_c)

    # With the extractor broken, only the cache can supply the real statistics.
    fake_npz = save_statistics(tmp_path / "fake_stats.npz", seen[0][2], seen[0][3])

    def broken(*args, **kwargs):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(fidmod, "compute_activations", broken)
    d_npz = fid_from_paths(real, fake_npz, weights=weights, device="cpu", cache_dir=cache)
    assert d_npz == d_diff
    for x, y in zip(seen[1], seen[0]):
        assert np.array_equal(x, y)

    # Changing the real set (here a file's mtime) changes the key: no stale statistics.
    os.utime(real / "img_000.png", ns=(0, 10**18))
    with pytest.raises(AssertionError, match="recomputed"):
        fid_from_paths(real, fake_npz, weights=weights, device="cpu", cache_dir=cache)
    # So does a limit that selects a different subset.
    monkeypatch.setattr(fidmod, "compute_activations", counting)
    fid_from_paths(real, fake_npz, weights=weights, device="cpu", cache_dir=cache, limit=2)
    assert calls[-1] == ("real", 2)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not [p for p in cache.iterdir() if p.suffix != ".npz"]  # no temporaries left


@pytest.mark.plumbing
def test_fid_main_uses_hub_cache_and_prints_nothing(tmp_path, random_weights, monkeypatch, capsys):
    """Checks wiring only: fid_main finds the weights in the hub cache, returns a float, and
    is FID-10K by default."""
    assert inspect.signature(fid_main).parameters["limit"].default == 10000
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
    out = fid_main(real, fake, batch_size=2, device="cpu")
    assert out == 12.5
    assert seen[0][:4] == ((2048,), (2048, 2048), (2048,), (2048, 2048)) and seen[0][4] != 0
    assert len(list((tmp_path / "default_cache").glob("*.npz"))) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
