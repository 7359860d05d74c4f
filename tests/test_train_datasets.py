"""Training datasets, the enlarged sampler, progressive crops and mixup (docs/training.md)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from mair.evaluate.noise import add_test_noise
from mair.experiments import DatasetRef, Experiment, load
from mair.experiments.spec import Augmentation, Patch
from mair.train.datasets import (
    ColorDenoiseTrainDataset,
    DatasetError,
    ImagePair,
    PatchSizeError,
    SRTrainDataset,
    UNetTrainDataset,
    ValidationDataset,
    build_train_dataset,
    build_val_dataset,
    check_patch_sizes,
    dataset_folder,
    dihedral,
    list_pairs,
    reflect_pad,
    sample_rng,
)
from mair.train.progressive import mixup, progressive_crop, step_rng
from mair.train.sampler import EnlargedSampler


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _mark(folder: Path) -> None:
    (folder / ".prepared.json").write_text(json.dumps({"counts": {}}))


def _rand(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A paper-scope data root with tiny SR, colour-DN, U-Net and hazy sets in the contract layouts."""
    root = tmp_path / "data"
    sr = root / "prepared" / "df2k"
    for i, name in enumerate(["b.png", "a.png", "c.png"]):  # written unsorted on purpose
        lr = _rand(12, 14, i)
        _png(sr / "LR_bicubic" / "X2" / name, lr)
        _png(sr / "HR" / name, np.repeat(np.repeat(lr, 2, axis=0), 2, axis=1))  # nearest x2
    _mark(sr)
    dn = root / "prepared" / "dfwb"
    for i in range(2):
        _png(dn / "HR" / f"{i}.png", _rand(20, 24, 10 + i))
    _mark(dn)
    sidd = root / "prepared" / "sidd_medium"
    for i in range(2):
        _png(sidd / "train" / "target_crops" / f"{i}.png", _rand(20, 20, 20 + i))
        _png(sidd / "train" / "input_crops" / f"{i}.png", _rand(20, 20, 30 + i))
    _mark(sidd)
    its = root / "prepared" / "reside_its"
    for gid in (1, 2):
        _png(its / "train" / "gt" / f"{gid}.png", _rand(16, 16, 40 + gid))
        for j in range(2):
            _png(its / "train" / "hazy" / f"{gid}_{j + 1}_0.{8 + j}.png", _rand(16, 16, 50 + gid * 2 + j))
    _mark(its)
    s14 = root / "prepared" / "set14"
    lr = _rand(9, 11, 60)
    _png(s14 / "LR_bicubic" / "X2" / "x.png", lr)
    _png(s14 / "HR" / "x.png", _rand(19, 23, 61))  # odd HR: cropped to 18x22
    _mark(s14)
    mc = root / "prepared" / "mcmaster"
    _png(mc / "HR" / "m.png", _rand(10, 12, 70))
    _mark(mc)
    return root


#: A real experiment of each task, whose training section the tests replace.
_OF_TASK = {"sr_classic": "sr_classic_x2", "dn_color": "dn_color_s15", "dn_real": "dn_real", "dehaze": "dehaze_its"}


def _exp(task: str, **train: Any) -> Experiment:
    """The experiment of ``task`` with seed 7, every augmentation, an 8/4 patch and the given training values
    (``datasets`` and ``patch`` as the file writes them)."""
    values: dict[str, Any] = {
        "seed": 7,
        "augmentation": Augmentation(hflip=True, rot=True, geometric_augs=True),
        "patch": Patch(gt_size=8, lq_size=4),
        "noise_sigma": None,
    }
    for key, value in train.items():
        if key == "datasets":
            value = tuple(DatasetRef(**d) for d in value)
        elif key == "patch":
            value = Patch(**value)
        values[key] = value
    real = load(_OF_TASK[task])
    return replace(real, id="t", train=replace(real.train, **values))


# ------------------------------------------------------------------------------------------------ pairing


def test_sr_pairs_sorted_and_crops_correspond(data_root: Path) -> None:
    exp = _exp("sr_classic", datasets=[{"id": "df2k", "gt": "HR", "lq": "LR_bicubic/X2", "pairing": "same_name"}])
    ds = build_train_dataset(exp, "paper", data_root)
    assert isinstance(ds, SRTrainDataset)
    assert [p.name for p in ds.pairs] == ["a.png", "b.png", "c.png"]
    seen = set()
    for k in range(40):
        item = ds[(3, k)]
        lq, gt = item["lq"], item["gt"]
        assert lq.shape == (3, 4, 4) and gt.shape == (3, 8, 8) and lq.dtype == torch.float32
        # HR is the nearest x2 of LR, and flips/transposes commute with that, so the crops must match exactly
        assert torch.equal(gt, lq.repeat_interleave(2, 1).repeat_interleave(2, 2))
        seen.add(tuple(lq.flatten()[:6].tolist()))
    assert len(seen) > 20  # crops and flips vary with k
    assert torch.equal(ds[(3, 5)]["lq"], ds[(3, 5)]["lq"])  # same key, same sample
    assert not torch.equal(ds[(3, 5)]["lq"], ds[(4, 5)]["lq"])  # another epoch, another crop


def test_sr_sample_is_rgb_of_the_bgr_file(data_root: Path) -> None:
    pair = ImagePair("a.png", data_root / "prepared/df2k/LR_bicubic/X2/a.png", data_root / "prepared/df2k/HR/a.png")
    ds = SRTrainDataset([pair], lq_patch=12, scale=2, seed=0, hflip=False, rot=False)
    lr = cv2.imread(str(pair.lq))
    want = torch.from_numpy(lr[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / 255.0)
    lq = ds[0]["lq"]
    assert lq.shape == (3, 12, 12)  # 12x14 LR: the crop starts at row 0 and one of columns 0..2
    assert any(torch.equal(lq, want[:, :, c : c + 12]) for c in range(3))


def test_color_denoise_noise_on_whole_image_before_crop(data_root: Path) -> None:
    pairs = list_pairs(DatasetRef("dfwb", "HR", None, "synthetic_noise"), data_root / "prepared" / "dfwb", "paper")
    assert all(p.lq is None for p in pairs)
    ds = ColorDenoiseTrainDataset(pairs, patch=8, sigma=25, seed=3, hflip=False, rot=False)
    key = (2, 11)
    item = ds[key]
    full = cv2.imread(str(pairs[11 % 2].gt)).astype(np.float32) / 255.0  # BGR
    gt_patch = item["gt"].numpy().transpose(1, 2, 0)[..., ::-1]  # back to BGR HWC
    hits = [
        (t, c)
        for t in range(full.shape[0] - 7)
        for c in range(full.shape[1] - 7)
        if np.array_equal(full[t : t + 8, c : c + 8], gt_patch)
    ]
    assert len(hits) == 1
    t, c = hits[0]
    # the first draws of the sample's generator are the noise of the WHOLE image, in BGR HWC order
    noise = sample_rng(3, key).normal(0.0, 25 / 255.0, full.shape)
    got = (item["lq"] - item["gt"]).numpy().transpose(1, 2, 0)[..., ::-1]
    assert np.allclose(got, noise[t : t + 8, c : c + 8], atol=1e-6)
    assert abs(float(got.std()) - 25 / 255) < 0.03


def test_unet_padding_crop_and_dihedral(data_root: Path) -> None:
    exp = _exp(
        "dn_real",
        datasets=[{"id": "sidd_medium", "gt": "train/target_crops", "lq": "train/input_crops", "pairing": "same_name"}],
        patch={"gt_size": 32, "lq_size": 32},
    )
    ds = build_train_dataset(exp, "paper", data_root)
    assert isinstance(ds, UNetTrainDataset)
    item = ds[(0, 3)]
    assert item["lq"].shape == (3, 32, 32) and item["gt"].shape == (3, 32, 32)
    plain = UNetTrainDataset(ds.pairs, patch=32, seed=7, geometric_augs=False)
    img = cv2.imread(str(ds.pairs[0].lq)).astype(np.float32) / 255.0
    lq = plain[0]["lq"].numpy().transpose(1, 2, 0)[..., ::-1]
    assert np.allclose(lq[:20, :20], img)  # 20x20 padded to 32: the crop must start at 0
    assert np.allclose(lq[20, :20], img[19]) and np.allclose(lq[:20, 20], img[:, 19])  # BORDER_REFLECT
    # every one of the 8 transforms is reachable, and pairs stay aligned
    modes = {int(sample_rng(7, (0, k)).integers(0, 8)) for k in range(64)}
    assert modes == set(range(8))


def test_dihedral_modes() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    outs = [dihedral(x, m) for m in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    assert np.array_equal(outs[0], x)
    assert np.array_equal(outs[1], np.flipud(x))
    assert np.array_equal(outs[3], np.flipud(np.rot90(x)))
    assert np.array_equal(outs[6], np.rot90(x, 3))
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_reflect_pad_only_when_smaller() -> None:
    a = np.ones((10, 12, 3), np.float32)
    gt, lq = reflect_pad(a, a, 8)
    assert gt is a and lq is a
    gt, lq = reflect_pad(a, a * 2, 16)
    assert gt.shape == (16, 16, 3) and lq.shape == (16, 16, 3)


def test_hazy_pairing(data_root: Path) -> None:
    exp = _exp(
        "dehaze",
        datasets=[{"id": "reside_its", "gt": "train/gt", "lq": "train/hazy", "pairing": "hazy_prefix"}],
        patch={"gt_size": 16, "lq_size": 16},
    )
    ds = build_train_dataset(exp, "paper", data_root)
    assert [(p.lq.name, p.gt.name) for p in ds.pairs] == [
        ("1_1_0.8.png", "1.png"),
        ("1_2_0.9.png", "1.png"),
        ("2_1_0.8.png", "2.png"),
        ("2_2_0.9.png", "2.png"),
    ]
    (data_root / "prepared/reside_its/train/gt/2.png").unlink()
    with pytest.raises(DatasetError, match=r"no clear image .*2\.png for hazy image"):
        build_train_dataset(exp, "paper", data_root)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_and_unprepared_dataset_messages(data_root: Path) -> None:
    with pytest.raises(DatasetError) as info:
        dataset_folder("div2k", "paper", data_root)
    text = str(info.value)
    assert "'div2k'" in text and str(data_root / "prepared" / "div2k") in text and "mair data prepare div2k" in text
    with pytest.raises(DatasetError, match="mair data demo"):
        dataset_folder("div2k", "demo", data_root)
    (data_root / "prepared/df2k/.prepared.json").unlink()
    with pytest.raises(DatasetError, match=r"'df2k' \(paper scope\) is not prepared.*mair data prepare df2k"):
        dataset_folder("df2k", "paper", data_root)


def test_image_smaller_than_patch(data_root: Path) -> None:
    exp = _exp(
        "sr_classic",
        datasets=[{"id": "df2k", "gt": "HR", "lq": "LR_bicubic/X2", "pairing": "same_name"}],
        patch={"gt_size": 32, "lq_size": 16},
    )
    ds = build_train_dataset(exp, "paper", data_root)
    with pytest.raises(PatchSizeError) as info:
        check_patch_sizes(ds)
    text = str(info.value)
    assert "a.png" in text and "12x14" in text and "16x16" in text
    with pytest.raises(PatchSizeError, match="12x14 is smaller than the training patch 16x16"):
        ds[0]
    dn = build_train_dataset(
        _exp(
            "dn_color",
            datasets=[{"id": "dfwb", "gt": "HR", "lq": None, "pairing": "synthetic_noise"}],
            patch={"gt_size": 21, "lq_size": 21},
            noise_sigma=15,
        ),
        "paper",
        data_root,
    )
    with pytest.raises(PatchSizeError, match=r"0\.png: image 20x24 is smaller than the training patch 21x21"):
        check_patch_sizes(dn)
    # U-Net images smaller than the patch are padded, not refused
    unet = build_train_dataset(
        _exp(
            "dn_real",
            datasets=[
                {"id": "sidd_medium", "gt": "train/target_crops", "lq": "train/input_crops", "pairing": "same_name"}
            ],
            patch={"gt_size": 64, "lq_size": 64},
        ),
        "paper",
        data_root,
    )
    assert check_patch_sizes(unet) == 2


def test_scale_mismatch_and_missing_lr(data_root: Path) -> None:
    _png(data_root / "prepared/df2k/HR/a.png", _rand(25, 28, 0))
    exp = _exp("sr_classic", datasets=[{"id": "df2k", "gt": "HR", "lq": "LR_bicubic/X2", "pairing": "same_name"}])
    with pytest.raises(PatchSizeError, match=r"target 25x28 is not x2 of input"):
        check_patch_sizes(build_train_dataset(exp, "paper", data_root))
    (data_root / "prepared/df2k/LR_bicubic/X2/c.png").unlink()
    with pytest.raises(DatasetError, match=r"has no input for c\.png"):
        build_train_dataset(exp, "paper", data_root)


# ------------------------------------------------------------------------------------------------ validation


def test_validation_sets(data_root: Path) -> None:
    sr = load("sr_classic_x2")
    exp = replace(sr, val=replace(sr.val, dataset=DatasetRef("set14", "HR", "LR_bicubic/X2", "same_name")))
    item = build_val_dataset(exp, "paper", data_root)[0]
    assert item["lq"].shape == (3, 9, 11) and item["gt"].shape == (18, 22, 3) and item["gt"].dtype == np.uint8
    dn = load("dn_color_s25")
    assert dn.scale == 1 and dn.val.noise is not None and dn.val.noise.sigma == 25 and dn.val.noise.seed == 0
    exp = replace(dn, val=replace(dn.val, dataset=DatasetRef("mcmaster", "HR", None, "synthetic_noise")))
    val = build_val_dataset(exp, "paper", data_root)
    assert isinstance(val, ValidationDataset)
    item = val[0]
    expected = add_test_noise(item["gt"], 25, seed=0).astype(np.float32)
    assert np.array_equal(item["lq"].numpy().transpose(1, 2, 0), expected)
    for change in ({"clip": True}, {"channel_order": "rgb"}, {"reseed_per_image": False}):  # not implemented
        other = replace(exp, val=replace(exp.val, noise=replace(exp.val.noise, **change)))
        with pytest.raises(DatasetError, match="'mcmaster': only the official test noise is implemented"):
            build_val_dataset(other, "paper", data_root)


# ------------------------------------------------------------------------------------------------ sampler


def test_enlarged_sampler_partitions_and_resumes() -> None:
    s0, s1 = EnlargedSampler(5, 2, 0, ratio=3), EnlargedSampler(5, 2, 1, ratio=3)
    assert s0.num_samples == 8 and s0.total_size == 16 and len(s0) == 8
    for s in (s0, s1):
        s.set_epoch(4)
    k0, k1 = [k for _, k in s0], [k for _, k in s1]
    assert sorted(k0 + k1) == list(range(16))  # every enlarged index once per epoch
    gen = torch.Generator()
    gen.manual_seed(4)
    perm = torch.randperm(16, generator=gen).tolist()
    assert k0 == perm[0::2] and k1 == perm[1::2]  # the official permutation and striding
    assert all(e == 4 for e, _ in s0)
    s0.set_position(3)
    assert [k for _, k in s0] == k0[3:] and len(s0) == 5
    s0.set_epoch(5)
    assert [k for _, k in s0] != k0
    state = s0.state_dict()
    s2 = EnlargedSampler(5, 2, 0, ratio=3)
    s2.load_state_dict({**state, "position": 2})
    assert [k for _, k in s2] == [k for _, k in s0][2:]


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        EnlargedSampler(0)
    with pytest.raises(ValueError):
        EnlargedSampler(3, 2, 2)


# ------------------------------------------------------------------------------------------------ progressive


def test_progressive_crop_minibatch_and_shared_offset() -> None:
    lq = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).reshape(4, 3, 16, 16)
    gt = lq * 2
    out_lq, out_gt = progressive_crop(lq, gt, mini_batch=2, patch=8, rng=step_rng(1, 0, 5))
    ref = random.Random()
    ref.setstate(step_rng(1, 0, 5).getstate())
    idx = ref.sample(range(4), 2)
    x0, y0 = int(8 * ref.random()), int(8 * ref.random())
    assert out_lq.shape == (2, 3, 8, 8)
    assert torch.equal(out_lq, lq[idx][..., x0 : x0 + 8, y0 : y0 + 8])
    assert torch.equal(out_gt, out_lq * 2)
    same_lq, same_gt = progressive_crop(lq, gt, mini_batch=4, patch=16, rng=step_rng(1, 0, 5))
    assert same_lq is lq and same_gt is gt


def test_mixup_beta_identity_and_single_sample() -> None:
    a = torch.rand(4, 3, 4, 4)
    b = a + 1
    identity, mixed = 0, 0
    for it in range(60):
        rng = step_rng(0, 0, it)
        out_a, out_b = mixup(a, b, 1.2, True, rng)
        if out_a is a:
            identity += 1
            continue
        mixed += 1
        ref = step_rng(0, 0, it)
        assert ref.randint(0, 1) == 0
        lam = ref.betavariate(1.2, 1.2)
        perm = ref.sample(range(4), 4)
        assert torch.allclose(out_a, lam * a + (1 - lam) * a[perm])
        assert torch.allclose(out_b - out_a, torch.ones_like(a))  # the same lam and perm for lq and gt
    assert identity > 10 and mixed > 10
    one = torch.rand(1, 3, 4, 4)
    out, _ = mixup(one, one, 1.2, False, step_rng(0, 0, 1))
    assert torch.allclose(out, one)  # mini-batch 1: no-op
