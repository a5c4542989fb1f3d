"""Frame sampling, resize/crop and intrinsics: checked by re-projecting known 3D points."""

import numpy as np
import pytest

from vidllm.data.frames import (
    adjust_intrinsics,
    plan_resize_crop,
    resample_depth,
    resize_color,
    sample_frame_ids,
)


def test_sample_frame_ids_uniform_over_valid_frames():
    valid = np.array([0, 1, 2, 5, 6, 7, 8, 9, 12, 13])  # 3, 4, 10, 11 dropped (non-finite poses)
    ids = sample_frame_ids(valid, 4)
    assert ids.tolist() == [0, 5, 8, 13]  # positions 0, 3, 6, 9 of the valid list
    assert set(ids) <= set(valid)
    short = sample_frame_ids(np.array([4, 7]), 5)  # fewer valid frames than wanted: repeats, still 5
    assert short.tolist() == [4, 4, 4, 7, 7]
    assert len(short) == 5
    with pytest.raises(ValueError):
        sample_frame_ids(np.array([], dtype=int), 4)


@pytest.mark.parametrize("size, short, expected", [
    ((1296, 968), 518, (686, 518)),  # ScanNet colour at the paper's 518
    ((640, 480), 518, (686, 518)),
    ((80, 60), 56, (70, 56)),
    ((60, 80), 56, (56, 70)),  # portrait
])
def test_plan_gives_multiples_of_14(size, short, expected):
    plan = plan_resize_crop(size, short, 14)
    assert plan.out_size == expected
    assert min(plan.resized_size) == short
    assert all(s % 14 == 0 for s in plan.out_size)


def _project(k: np.ndarray, points: np.ndarray) -> np.ndarray:
    uvw = points @ k[:3, :3].T
    return uvw[:, :2] / uvw[:, 2:3]


def _blob_image(size: tuple[int, int], centre: np.ndarray, sigma: float) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    weight = np.where(weight > 8, weight, 0)  # drop quantisation noise of the far tail
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


@pytest.mark.parametrize("size, short", [((320, 240), 112), ((200, 300), 70), ((96, 72), 140)])
def test_resized_image_and_intrinsics_agree_on_reprojected_points(size, short):
    """A 3D point drawn as a blob lands, after resize+crop, where the new intrinsics project it."""
    rng = np.random.default_rng(0)
    w, h = size
    k = np.array([[0.9 * w, 0, 0.47 * w], [0, 0.95 * w, 0.53 * h], [0, 0, 1.0]])  # fx≠fy, off-centre
    plan = plan_resize_crop(size, short, 14)
    k_out = adjust_intrinsics(k, plan)
    out_w, out_h = plan.out_size
    checked = 0
    for _ in range(6):
        # A point in front of the camera that projects well inside both images.
        target = np.array([rng.uniform(0.3, 0.7) * out_w, rng.uniform(0.3, 0.7) * out_h])
        depth = rng.uniform(0.5, 4.0)
        ray = np.linalg.inv(k_out) @ np.array([target[0], target[1], 1.0])
        point = ray * depth
        uv_in = _project(k, point[None])[0]
        sigma = 0.04 * min(w, h)
        resized = resize_color(_blob_image(size, uv_in, sigma), plan)
        assert resized.shape == (out_h, out_w, 3)
        uv_out = _project(k_out, point[None])[0]
        np.testing.assert_allclose(_centroid(resized), uv_out, atol=0.15)
        checked += 1
    assert checked == 6


def test_depth_resampled_onto_colour_grid_with_its_own_intrinsics():
    """Depth camera with another resolution and centre: each 3D point's depth ends up at its projection."""
    rng = np.random.default_rng(1)
    k_color = np.array([[288.0, 0, 161.0], [0, 290.0, 118.0], [0, 0, 1]])  # 320x240 colour
    k_depth = np.array([[144.0, 0, 79.0], [0, 145.0, 61.0], [0, 0, 1]])  # 160x120 depth, shifted centre
    plan = plan_resize_crop((320, 240), 112, 14)
    k_out = adjust_intrinsics(k_color, plan)
    depth = np.zeros((120, 160), np.uint16)
    points = []
    for _ in range(20):
        uv = np.array([rng.uniform(0.2, 0.8) * plan.out_size[0], rng.uniform(0.2, 0.8) * plan.out_size[1]])
        z = rng.uniform(0.5, 5.0)
        point = np.linalg.inv(k_out) @ np.array([uv[0], uv[1], 1.0]) * z
        ud, vd = np.rint(_project(k_depth, point[None])[0]).astype(int)
        depth[vd - 2:vd + 3, ud - 2:ud + 3] = round(z * 1000)  # a 5x5 patch of depth z (mm)
        points.append((point, round(z * 1000)))
    out = resample_depth(depth, k_depth, k_out, plan.out_size)
    assert out.shape == (plan.out_size[1], plan.out_size[0]) and out.dtype == np.uint16
    for point, z_mm in points:
        u, v = np.rint(_project(k_out, point[None])[0]).astype(int)
        assert out[v, u] == z_mm
    # Nearest neighbour: no value appears that was not in the source.
    assert set(np.unique(out)) <= set(np.unique(depth))


def test_rays_outside_the_depth_image_are_invalid():
    k = np.array([[50.0, 0, 39.5], [0, 50.0, 29.5], [0, 0, 1]])
    depth = np.full((60, 80), 1234, np.uint16)
    k_wide = np.array([[25.0, 0, 39.5], [0, 25.0, 29.5], [0, 0, 1]])  # output sees twice the field of view
    out = resample_depth(depth, k, k_wide, (80, 60))
    assert out[30, 40] == 1234 and out[0, 0] == 0 and out[59, 79] == 0
