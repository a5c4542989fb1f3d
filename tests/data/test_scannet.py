import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from sens_bytes import build_sens, intrinsic, pose, ramp_depth, smooth_image  # noqa: E402

from vidllm.data.scannet.meta import read_ply_mesh  # noqa: E402
from vidllm.data.scannet.scans import load_scene  # noqa: E402
from vidllm.errors import DataError  # noqa: E402

CH, CW, DH, DW = 48, 64, 24, 32
K_COLOR = intrinsic(58.0, 57.5, 31.5, 23.5)
K_DEPTH = intrinsic(29.0, 28.75, 15.75, 11.75)
# 90 degrees about z, then +(1, 2, 0): (x, y, z) -> (1 - y, 2 + x, z)
AXIS_ALIGN = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1]], float)


def _box_corners(lo, hi):
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


# Object 0 (chair): x 0..1, y 0..2, z 0..1 in two segments; object 1 (table): x 3..4, y 0..1, z 0..0.5;
# plus 4 unannotated floor vertices in segment 30.
VERTS = np.concatenate([
    _box_corners((0, 0, 0), (1, 1, 1)), _box_corners((0, 1, 0), (1, 2, 1)),
    _box_corners((3, 0, 0), (4, 1, 0.5)), [[-5, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]],
]).astype(np.float32)
SEGS = [10] * 8 + [11] * 8 + [20] * 8 + [30] * 4
# In the aligned world: chair centre (0, 2.5, 0.5) size (2, 1, 1); table centre (0.5, 5.5, 0.25) size (1, 1, .5)
CHAIR_BOX = [0.0, 2.5, 0.5, 2.0, 1.0, 1.0]
TABLE_BOX = [0.5, 5.5, 0.25, 1.0, 1.0, 0.5]


def ply_binary(verts: np.ndarray) -> bytes:
    faces = [(0, 1, 2), (3, 4, 5)]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment test\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    body = b"".join(struct.pack("<3f4B", *v, 10, 20, 30, 255) for v in verts)
    body += b"".join(struct.pack("<B3i", 3, *f) for f in faces)
    return header + body


def ply_ascii(verts: np.ndarray) -> bytes:
    lines = ["ply", "format ascii 1.0", f"element vertex {len(verts)}", "property float x",
             "property float y", "property float z", "property uchar red", "property uchar green",
             "property uchar blue", "element face 1", "property list uchar int vertex_indices", "end_header"]
    lines += [f"{x} {y} {z} 1 2 3" for x, y, z in verts] + ["3 0 1 2"]
    return ("\n".join(lines) + "\n").encode()


def make_raw_scan(root: Path, scene_id="scene0001_00", *, ply=ply_binary, with_axis=True,
                  n_frames=4, bad_pose_frames=(1,), objects=True, pose_overrides=None) -> Path:
    scan = root / scene_id
    scan.mkdir(parents=True)
    colors = [smooth_image(CH, CW, i) for i in range(n_frames)]
    depths = [ramp_depth(DH, DW, i) for i in range(n_frames)]
    poses = np.stack([pose(0.2 * i, 0, 1.4) for i in range(n_frames)])
    for i in bad_pose_frames:
        poses[i] = -np.inf
    for i, value in (pose_overrides or {}).items():
        poses[i] = value
    (scan / f"{scene_id}.sens").write_bytes(build_sens(colors, depths, poses, K_COLOR, K_DEPTH))
    info = [f"colorHeight = {CH}", f"colorWidth = {CW}", "sceneType = Bedroom / Hotel"]
    if with_axis:
        info.insert(0, "axisAlignment = " + " ".join(str(v) for v in AXIS_ALIGN.ravel()))
    (scan / f"{scene_id}.txt").write_text("\n".join(info) + "\n")
    if objects:
        (scan / f"{scene_id}_vh_clean_2.ply").write_bytes(ply(VERTS))
        (scan / f"{scene_id}_vh_clean_2.0.010000.segs.json").write_text(
            json.dumps({"params": {}, "sceneId": scene_id, "segIndices": SEGS}))
        (scan / f"{scene_id}.aggregation.json").write_text(json.dumps({
            "sceneId": f"scannet.{scene_id}", "appId": "Aggregator.v2",
            "segGroups": [
                {"id": 101, "objectId": 1, "segments": [20], "label": "table"},
                {"id": 100, "objectId": 0, "segments": [10, 11], "label": "office chair"},
            ]}))
    return scan


def test_raw_scan_folder(tmp_path):
    scan = make_raw_scan(tmp_path)
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("id\traw_category\tcategory\tcount\tnyu40id\tnyu40class\n"
                   "1\toffice chair\tchair\t5\t5\tchair\n2\tdesk\tdesk\t3\t14\tdesk\n")
    with load_scene(scan, label_map=tsv) as scene:
        assert scene.scene_id == "scene0001_00" and scene.layout == "sens"
        assert scene.num_frames == 4 and scene.dropped_frame_ids == [1]
        np.testing.assert_array_equal(scene.valid_frame_ids, [0, 2, 3])
        assert scene.camera_to_world.shape == (3, 4, 4)
        np.testing.assert_allclose(scene.camera_to_world[1], pose(0.4, 0, 1.4), atol=1e-6)
        np.testing.assert_allclose(scene.axis_alignment, AXIS_ALIGN)
        assert scene.color_size == (CW, CH) and scene.depth_size == (DW, DH)
        assert [o.object_id for o in scene.objects] == [0, 1]  # objectId, not id
        chair, table = scene.objects
        assert (chair.label, chair.nyu40_id, chair.num_vertices) == ("office chair", 5, 16)
        assert (table.label, table.nyu40_id) == ("table", None)  # not in the label map
        np.testing.assert_allclose(chair.box, CHAIR_BOX, atol=1e-6)
        np.testing.assert_allclose(table.box, TABLE_BOX, atol=1e-6)
        assert scene.object_mask(1).sum() == 8 and (scene.vertex_object_ids == -1).sum() == 4
        depth = scene.read_depth(2)
        assert depth.dtype == np.float32
        np.testing.assert_allclose(depth, ramp_depth(DH, DW, 2) / 1000.0, atol=1e-6)
        assert scene.read_color(3).shape == (CH, CW, 3)
        with pytest.raises(DataError, match="frame 1 has an invalid camera pose"):
            scene.read_color(1)


def test_all_zero_and_singular_poses_are_dropped_like_non_finite_ones(tmp_path):
    singular = pose(0.1, 0, 1.4)
    singular[:3, :3] = [[1, 0, 0], [0, 1e-4, 0], [0, 0, 1e-4]]  # |det| = 1e-8 < 1e-6
    scan = make_raw_scan(tmp_path, n_frames=5, bad_pose_frames=(4,), objects=False,
                         pose_overrides={1: np.zeros((4, 4)), 2: singular})
    with load_scene(scan) as scene:
        assert scene.num_frames == 5 and scene.dropped_frame_ids == [1, 2, 4]
        np.testing.assert_array_equal(scene.valid_frame_ids, [0, 3])
        assert scene.camera_to_world.shape == (2, 4, 4)
        for frame in (1, 2, 4):
            with pytest.raises(DataError, match=f"frame {frame} has an invalid camera pose"):
                scene.read_color(frame)
        assert scene.read_color(3).shape == (CH, CW, 3)


def test_valid_pose_mask():
    from vidllm.data.scannet.scans import valid_pose_mask

    good = pose(1.0, 2.0, 3.0, yaw=0.3)
    nan = good.copy()
    nan[0, 3] = np.nan
    rank2 = good.copy()
    rank2[:3, 2] = rank2[:3, 0]  # two equal columns: det 0
    tiny = np.diag([1e-2, 1e-2, 1e-3, 1.0])  # det 1e-7
    mask = valid_pose_mask(np.stack([good, np.full((4, 4), -np.inf), nan, np.zeros((4, 4)), rank2, tiny,
                                     np.diag([2.0, 2.0, 2.0, 1.0])]))
    assert mask.tolist() == [True, False, False, False, False, False, True]


def test_ascii_ply_no_axis_alignment_and_sens_file_path(tmp_path):
    scan = make_raw_scan(tmp_path, ply=ply_ascii, with_axis=False, bad_pose_frames=())
    mesh = read_ply_mesh(scan / "scene0001_00_vh_clean_2.ply")
    np.testing.assert_allclose(mesh.vertices, VERTS)
    assert mesh.num_faces == 1 and mesh.colors[0].tolist() == [1, 2, 3]
    with load_scene(scan / "scene0001_00.sens") as scene:
        np.testing.assert_array_equal(scene.axis_alignment, np.eye(4))
        assert scene.dropped_frame_ids == [] and len(scene.valid_frame_ids) == 4
        np.testing.assert_allclose(scene.objects[1].box, [3.5, 0.5, 0.25, 1, 1, 0.5], atol=1e-6)


def test_binary_big_endian_ply(tmp_path):
    header = (f"ply\nformat binary_big_endian 1.0\nelement vertex {len(VERTS)}\n"
              "property double x\nproperty double y\nproperty double z\nend_header\n").encode()
    path = tmp_path / "m.ply"
    path.write_bytes(header + VERTS.astype(">f8").tobytes())
    np.testing.assert_allclose(read_ply_mesh(path).vertices, VERTS)


def test_missing_annotation_file_means_no_objects(tmp_path):
    scan = make_raw_scan(tmp_path)
    (scan / "scene0001_00_vh_clean_2.0.010000.segs.json").unlink()
    with load_scene(scan) as scene:
        assert scene.objects == [] and "missing segs" in scene.warnings[0]


@pytest.mark.parametrize(
    "payload, problem",
    [
        ('{"segGroups": [', "malformed aggregation JSON"),
        ('{"groups": []}', "aggregation JSON has no 'segGroups' list"),
        ('{"segGroups": [{"objectId": 0, "label": "x", "segments": "10"}]}',
         r"segGroups\[0\] \(objectId 0\) 'segments' must be a list of integers"),
        ('{"segGroups": [{"label": "x", "segments": [10]}]}', r"segGroups\[0\] has no valid non-negative integer 'objectId'"),
    ],
)
def test_malformed_aggregation(tmp_path, payload, problem):
    scan = make_raw_scan(tmp_path)
    (scan / "scene0001_00.aggregation.json").write_text(payload)
    with pytest.raises(DataError, match=r"scene0001_00\.aggregation\.json: " + problem):
        load_scene(scan)


def test_segs_vertex_count_mismatch_and_bad_axis(tmp_path):
    scan = make_raw_scan(tmp_path)
    (scan / "scene0001_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": SEGS[:-1]}))
    with pytest.raises(DataError, match=r"segs\.json: segIndices has 27 entries but the mesh has 28 vertices"):
        load_scene(scan)
    (scan / "scene0001_00.txt").write_text("axisAlignment = 1 0 0\n")
    with pytest.raises(DataError, match=r"scene0001_00\.txt: axisAlignment has 3 values, expected 16"):
        load_scene(scan)


def test_truncated_ply(tmp_path):
    scan = make_raw_scan(tmp_path)
    ply = scan / "scene0001_00_vh_clean_2.ply"
    ply.write_bytes(ply.read_bytes()[:300])
    with pytest.raises(DataError, match=r"_vh_clean_2\.ply: truncated PLY: element 'vertex'"):
        load_scene(scan)


def _save_depth_png(path: Path, depth: np.ndarray) -> None:
    Image.fromarray(depth.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")


def _write_matrix(path: Path, m: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(str(v) for v in row) for row in m) + "\n")


def make_official_export(folder: Path, frame_ids=(0, 1, 2), bad=(1,)) -> None:
    for sub in ("color", "depth", "pose", "intrinsic"):
        (folder / sub).mkdir(parents=True)
    for i in frame_ids:
        Image.fromarray(smooth_image(CH, CW, i)).save(folder / "color" / f"{i}.jpg")
        _save_depth_png(folder / "depth" / f"{i}.png", ramp_depth(DH, DW, i))
        m = np.full((4, 4), -np.inf) if i in bad else pose(0.1 * i, 0, 1)
        _write_matrix(folder / "pose" / f"{i}.txt", m)
    _write_matrix(folder / "intrinsic" / "intrinsic_color.txt", K_COLOR)
    _write_matrix(folder / "intrinsic" / "intrinsic_depth.txt", K_DEPTH)
    _write_matrix(folder / "intrinsic" / "extrinsic_color.txt", np.eye(4))


def test_official_export_layout(tmp_path):
    folder = tmp_path / "scene0002_00"
    make_official_export(folder, frame_ids=(0, 1, 2, 10))
    with load_scene(folder) as scene:
        assert scene.layout == "official export" and scene.scene_id == "scene0002_00"
        assert scene.num_frames == 4 and scene.dropped_frame_ids == [1]
        np.testing.assert_array_equal(scene.valid_frame_ids, [0, 2, 10])  # numeric, not lexical order
        np.testing.assert_allclose(scene.camera_to_world[2], pose(1.0, 0, 1))
        np.testing.assert_allclose(scene.intrinsic_depth, K_DEPTH)
        assert scene.color_size == (CW, CH) and scene.depth_size == (DW, DH) and scene.depth_shift == 1000
        np.testing.assert_allclose(scene.read_depth(10), ramp_depth(DH, DW, 10) / 1000.0, atol=1e-6)
        assert np.abs(scene.read_color(2).astype(int) - smooth_image(CH, CW, 2)).mean() < 3
        assert scene.objects == []


def test_official_export_missing_pose(tmp_path):
    folder = tmp_path / "scene0002_00"
    make_official_export(folder)
    (folder / "pose" / "2.txt").unlink()
    with pytest.raises(DataError, match=r"pose/2\.txt: missing pose file for colour frame 2"):
        load_scene(folder)


def test_official_export_malformed_pose(tmp_path):
    folder = tmp_path / "scene0002_00"
    make_official_export(folder)
    (folder / "pose" / "0.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(DataError, match=r"pose/0\.txt: pose file has 6 numbers, expected 16"):
        load_scene(folder)


def test_posed_images_layout(tmp_path):
    folder = tmp_path / "posed_images" / "scene0003_00"
    folder.mkdir(parents=True)
    for i in (0, 10, 20):
        Image.fromarray(smooth_image(CH, CW, i)).save(folder / f"{i:05d}.jpg")
        _save_depth_png(folder / f"{i:05d}.png", ramp_depth(DH, DW, i))
        _write_matrix(folder / f"{i:05d}.txt", np.full((4, 4), -np.inf) if i == 20 else pose(0, 0.1 * i, 1))
    _write_matrix(folder / "intrinsic.txt", K_COLOR)
    _write_matrix(folder / "depth_intrinsic.txt", K_DEPTH)
    with load_scene(folder) as scene:
        assert scene.layout == "posed_images" and scene.scene_id == "scene0003_00"
        np.testing.assert_array_equal(scene.valid_frame_ids, [0, 10])
        assert scene.dropped_frame_ids == [20]
        np.testing.assert_allclose(scene.intrinsic_color, K_COLOR)
        np.testing.assert_allclose(scene.read_depth(10), ramp_depth(DH, DW, 10) / 1000.0, atol=1e-6)
    (folder / "00010.txt").unlink()
    with pytest.raises(DataError, match=r"00010\.txt: missing pose file for colour frame 10"):
        load_scene(folder)


def test_not_a_scene(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a ScanNet scene"):
        load_scene(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        load_scene(tmp_path / "nope")


def test_reads_synthetic_writers_output(tmp_path):
    """The SYNTH helper's published-format writers and these readers must meet."""
    writers = pytest.importorskip("vidllm.data.scannet.writers")
    scan = make_raw_scan(tmp_path, objects=False)
    sid = "scene0001_00"
    writers.write_scene_info(scan / f"{sid}.txt", axis_alignment=AXIS_ALIGN, intrinsic_color=K_COLOR,
                             intrinsic_depth=K_DEPTH, color_size=(CW, CH), depth_size=(DW, DH), num_frames=4)
    writers.write_ply_mesh(scan / f"{sid}_vh_clean_2.ply", VERTS, np.zeros((len(VERTS), 3), np.uint8),
                           np.array([[0, 1, 2]]))
    writers.write_segs(scan / f"{sid}_vh_clean_2.0.010000.segs.json", sid, np.array(SEGS))
    writers.write_aggregation(scan / f"{sid}.aggregation.json", sid, [(0, "chair", [10, 11]), (1, "table", [20])])
    with load_scene(scan) as scene:
        np.testing.assert_allclose(scene.axis_alignment, AXIS_ALIGN)
        np.testing.assert_allclose(scene.objects[0].box, CHAIR_BOX, atol=1e-6)
        np.testing.assert_allclose(scene.objects[1].box, TABLE_BOX, atol=1e-6)


def test_a_scene_without_valid_frames_fails_in_prepare_with_one_line_naming_its_file(tmp_path):
    from vidllm.config import PrepConfig
    from vidllm.data.prepare import _process_scene_row

    scan = make_raw_scan(tmp_path, n_frames=3, bad_pose_frames=(0, 1, 2), objects=False)
    row = {"scene_id": scan.name, "scene_uri": str(scan), "annotations_json": "[]", "source_digest": "",
           "input_digest": ""}
    result = _process_scene_row(row, PrepConfig(frames=2, short_side=28).model_dump_json(), None, str(tmp_path))
    error = result["error"]
    assert error == f"{scan}: no valid frames: all 3 camera poses are invalid " \
                    "(-inf/NaN, all-zero or singular)"
    assert "\n" not in error and not result["names"]
