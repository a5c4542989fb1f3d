"""Synthetic scenes: written files read back through the real ScanNet readers match the
generator's own ground truth, and the annotations' answers follow from the scene."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidllm.cli import main as vidllm_main
from vidllm.config import SynthConfig
from vidllm.data.frames import sample_frame_ids
from vidllm.data.scannet.annotations import load_annotations
from vidllm.data.scannet.meta import read_ply_mesh, read_segs
from vidllm.data.scannet.scans import load_scene
from vidllm.data.synthetic.generate import generate_dataset, intrinsic_matrix
from vidllm.data.synthetic.questions import generate_instructions
from vidllm.data.synthetic.raycast import ROOM_FACES, cast_view
from vidllm.data.synthetic.room_layout import COLORS, look_at


@pytest.fixture(scope="module")
def dataset_with_lost_frames(tmp_path_factory):
    cfg = SynthConfig(scenes=2, frames=8, width=64, height=48, depth_width=48, depth_height=36,
                      invalid_pose_fraction=0.25, clip_frames=3, seed=3)
    return generate_dataset(tmp_path_factory.mktemp("synth_lost"), cfg, progress=False)


def _round_trip(dataset) -> None:
    for truth in dataset.scenes:
        with load_scene(truth.path, label_map=dataset.label_map) as scene:
            finite = np.isfinite(truth.camera_to_world).reshape(len(truth.camera_to_world), -1).all(1)
            assert scene.num_frames == len(truth.camera_to_world)
            assert scene.dropped_frame_ids == truth.invalid_frame_ids == np.flatnonzero(~finite).tolist()
            np.testing.assert_array_equal(scene.valid_frame_ids, np.flatnonzero(finite))
            np.testing.assert_allclose(scene.camera_to_world, truth.camera_to_world[finite], atol=1e-5)
            np.testing.assert_allclose(scene.intrinsic_color, truth.intrinsic_color, atol=1e-4)
            np.testing.assert_allclose(scene.intrinsic_depth, truth.intrinsic_depth, atol=1e-4)
            np.testing.assert_allclose(scene.axis_alignment, truth.axis_alignment, atol=1e-9)
            assert not np.allclose(scene.axis_alignment, np.eye(4)), "world frame must differ from the aligned one"
            for frame_id in scene.valid_frame_ids:
                depth = scene.read_depth(int(frame_id))
                assert depth.shape == truth.depths_m[frame_id].shape
                assert np.abs(depth - truth.depths_m[frame_id]).max() <= 1e-3
            assert [o.object_id for o in scene.objects] == [o.object_id for o in truth.objects]
            for loaded, expected in zip(scene.objects, truth.objects):
                assert loaded.label == expected.label
                assert loaded.nyu40_id is not None
                np.testing.assert_allclose(loaded.box, expected.box, atol=1e-4)


def test_round_trip_through_scannet_reader(synthetic_dataset):
    assert len(synthetic_dataset.scenes) == 2
    _round_trip(synthetic_dataset)


def test_round_trip_with_lost_tracking_and_separate_depth_size(dataset_with_lost_frames):
    assert all(len(s.invalid_frame_ids) == 2 for s in dataset_with_lost_frames.scenes)
    _round_trip(dataset_with_lost_frames)


def test_depth_and_poses_place_every_object_where_its_box_is(synthetic_dataset):
    """Back-project the stored depth with the stored poses: each object's box receives points
    (so it is visible), and all points lie inside the room."""
    for truth in synthetic_dataset.scenes:
        with load_scene(truth.path) as scene:
            k = scene.intrinsic_depth
            w, h = scene.depth_size
            u, v = np.meshgrid(np.arange(w), np.arange(h))
            points = []
            for frame_id, pose in zip(scene.valid_frame_ids, scene.camera_to_world):
                z = scene.read_depth(int(frame_id)).ravel()
                cam = np.stack([(u.ravel() - k[0, 2]) / k[0, 0] * z, (v.ravel() - k[1, 2]) / k[1, 1] * z, z, np.ones_like(z)])
                points.append(((scene.axis_alignment @ pose) @ cam)[:3].T)
            points = np.concatenate(points)
            assert np.all(points > -0.01) and np.all(points < truth.room_size + 0.01)
            for obj in truth.objects:
                lo, hi = obj.box[:3] - obj.box[3:] / 2 - 0.01, obj.box[:3] + obj.box[3:] / 2 + 0.01
                assert np.all((points > lo) & (points < hi), axis=1).sum() >= 4, f"{obj} never seen"


def test_every_object_is_visible_in_the_sampled_clip(dataset_with_lost_frames):
    """Counting and referring answers need every object on screen in the frames `prepare` keeps:
    `clip_frames` frames spread over the valid (finite-pose) frames, away from the crop border."""
    for truth in dataset_with_lost_frames.scenes:
        with load_scene(truth.path) as scene:
            clip = sample_frame_ids(scene.valid_frame_ids, 3)
            assert not set(clip.tolist()) & set(truth.invalid_frame_ids)
            lo = np.array([o.box[:3] - o.box[3:] / 2 for o in truth.objects], dtype=np.float32)
            hi = np.array([o.box[:3] + o.box[3:] / 2 for o in truth.objects], dtype=np.float32)
            w, h = scene.color_size
            seen = np.zeros(len(truth.objects), dtype=int)
            for frame_id in clip:
                hits = cast_view(truth.axis_alignment @ scene.pose(int(frame_id)), scene.intrinsic_color, w, h,
                                 np.zeros(3, np.float32), truth.room_size.astype(np.float32), lo, hi)
                inner = hits.surface[h // 20 + 1:-(h // 20 + 1), w // 20 + 1:-(w // 20 + 1)]
                seen += np.bincount(inner.ravel(), minlength=len(truth.objects) + 6)[:len(truth.objects)]
            assert truth.objects and (seen >= 4).all(), seen


def test_colour_frames_show_the_named_colours(synthetic_dataset):
    """Pixels that ray casting says belong to an object decode to roughly its named colour."""
    truth = synthetic_dataset.scenes[0]
    with load_scene(truth.path) as scene:
        align = truth.axis_alignment
        lo = np.array([o.box[:3] - o.box[3:] / 2 for o in truth.objects], dtype=np.float32)
        hi = np.array([o.box[:3] + o.box[3:] / 2 for o in truth.objects], dtype=np.float32)
        w, h = scene.color_size
        checked = 0
        for frame_id, pose in zip(scene.valid_frame_ids, scene.camera_to_world):
            hits = cast_view(align @ pose, scene.intrinsic_color, w, h, np.zeros(3, np.float32),
                             truth.room_size.astype(np.float32), lo, hi)
            color = scene.read_color(int(frame_id)).astype(np.float32) / 255
            for index, obj in enumerate(truth.objects):
                mask = hits.surface == index
                if mask.sum() < 20:
                    continue
                mean = np.median(color[mask], axis=0)
                # Nearest named colour after normalising away the shading.
                names = list(COLORS)
                ref = np.array([COLORS[n] for n in names])
                scale = np.clip((ref @ mean) / (ref * ref).sum(1), 0.55, 1.0)
                nearest = names[int(np.argmin(np.linalg.norm(ref * scale[:, None] - mean, axis=1)))]
                assert nearest == obj.color_name
                checked += 1
        assert checked > 0


def test_ray_caster_against_hand_computed_depths():
    k = intrinsic_matrix(9, 7)
    pose = look_at(np.array([1.0, 2.0, 1.0]), np.array([5.0, 2.0, 1.0]))  # looking along +x
    room_lo, room_hi = np.zeros(3, np.float32), np.array([6.0, 4.0, 3.0], np.float32)
    box_lo, box_hi = np.array([[3.0, 1.5, 0.0]], np.float32), np.array([[3.5, 2.5, 2.0]], np.float32)
    hits = cast_view(pose, k, 9, 7, room_lo, room_hi, box_lo, box_hi)
    assert hits.surface[3, 4] == 0 and hits.depth[3, 4] == pytest.approx(2.0, abs=1e-5)
    np.testing.assert_allclose(hits.normal[3, 4], [-1, 0, 0])
    empty = cast_view(pose, k, 9, 7, room_lo, room_hi, box_lo[:0], box_hi[:0])
    assert empty.surface[3, 4] == ROOM_FACES.index("wall_x1")  # no furniture: room faces start at 0
    assert empty.depth[3, 4] == pytest.approx(5.0, abs=1e-5)
    # z-depth is constant across a fronto-parallel wall.
    np.testing.assert_allclose(empty.depth[2:5, 2:7], 5.0, atol=1e-4)
    assert np.all(np.isfinite(empty.depth)) and np.all(empty.depth > 0)


def test_mesh_files_follow_the_scannet_format(synthetic_dataset):
    truth = synthetic_dataset.scenes[0]
    ply = truth.path / f"{truth.scene_id}_vh_clean_2.ply"
    header = ply.read_bytes()[:400].decode("ascii", errors="replace")
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")
    for line in ("property float x", "property uchar red", "property uchar alpha", "property list uchar int vertex_indices"):
        assert line in header
    mesh = read_ply_mesh(ply)
    segs = read_segs(truth.path / f"{truth.scene_id}_vh_clean_2.0.010000.segs.json")
    assert len(segs) == len(mesh.vertices)
    aggregation = json.loads((truth.path / f"{truth.scene_id}.aggregation.json").read_text())
    assert [g["objectId"] for g in aggregation["segGroups"]] == list(range(len(truth.objects)))
    info = (truth.path / f"{truth.scene_id}.txt").read_text()
    assert "axisAlignment = " in info and f"numColorFrames = {len(truth.camera_to_world)}" in info


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path):
    cfg = SynthConfig(scenes=1, frames=3, width=32, height=24, depth_width=32, depth_height=24, seed=11)
    a = generate_dataset(tmp_path / "a", cfg, progress=False)
    b = generate_dataset(tmp_path / "b", cfg, progress=False)
    c = generate_dataset(tmp_path / "c", cfg.model_copy(update={"seed": 12}), progress=False)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    sens = "scans/scene0000_00/scene0000_00.sens"
    assert (a.root / sens).read_bytes() != (c.root / sens).read_bytes()


def test_annotations_load_back_and_answers_follow_from_the_scene(synthetic_dataset):
    ds = synthetic_dataset
    objects = {s.scene_id: s.objects for s in ds.scenes}
    # What the generator produced (same seeds as generate_dataset) survives writing + loading.
    generated: dict[str, list] = {}
    for index, scene in enumerate(ds.scenes):
        for task, items in generate_instructions(scene, np.random.default_rng([0, index, 1])).items():
            generated.setdefault(task, []).extend(items)
    for task, made in generated.items():
        loaded = [i for split in ds.splits for i in load_annotations(task, ds.annotations_dir, split=split)]
        # Sr3D rows have no id column: the loader names them scan|target|csv row.
        skip = {"extra", "id"} if task == "sr3d" else {"extra"}
        core = lambda i: {k: v for k, v in i.to_dict().items() if k not in skip}  # noqa: E731
        assert sorted(map(str, map(core, loaded))) == sorted(map(str, map(core, made))), task
        assert [i.to_dict() for i in ds.instructions[task]] == [i.to_dict() for i in loaded]
        assert made, f"no {task} instructions"
    for made, loaded in zip(generated["sr3d"], ds.instructions["sr3d"]):
        assert loaded.extra["anchor_ids"] == made.extra["anchor_ids"]
        assert loaded.extra["distractor_ids"] == made.extra["distractor_ids"]
    for q in ds.instructions["scanqa"]:
        objs = objects[q.scene_id]
        if q.text.startswith("How many"):
            label = next(o.label for o in objs if o.object_id == q.target_object_ids[0])
            assert int(q.answers[1]) == sum(o.label == label for o in objs) == len(q.target_object_ids)
        if q.text.startswith("What color"):
            assert q.answers == [objs[q.target_object_ids[0]].color_name]
    for r in ds.instructions["scanrefer"]:
        target = objects[r.scene_id][r.target_object_ids[0]]
        assert r.object_name == target.label and target.color_name in r.text
        same = sum(o.label == target.label for o in objects[r.scene_id])
        assert r.eval_subgroup["unique"] == (same == 1)
    types = {m.eval_subgroup["eval_type"] for m in ds.instructions["multi3drefer"]}
    assert {"st_wo_d", "zt_w_d", "mt"} <= types or {"st_w_d", "zt_w_d", "mt"} <= types
    for m in ds.instructions["multi3drefer"]:
        objs = objects[m.scene_id]
        if m.eval_subgroup["eval_type"] == "zt_w_d":  # "the purple chair" when no chair is purple
            color = m.text.split()[1]
            assert not any(o.label == m.object_name and o.color_name == color for o in objs)
            assert any(o.label == m.object_name for o in objs)
        if m.eval_subgroup["eval_type"] == "mt":
            assert all(objs[i].label == m.object_name for i in m.target_object_ids)
    for s in ds.instructions["sr3d"]:
        objs = objects[s.scene_id]
        target, anchor = objs[s.target_object_ids[0]], objs[s.extra["anchor_ids"][0]]
        dist = {o.object_id: np.linalg.norm(o.box[:2] - anchor.box[:2]) for o in objs if o.label == target.label}
        pick = min if s.extra["reference_type"] == "closest" else max
        assert pick(dist, key=dist.get) == target.object_id
    for n in ds.instructions["nr3d"]:
        assert n.eval_subgroup["hard"] == (sum(o.label == n.object_name for o in objects[n.scene_id]) > 2)
    assert all(len(c.answers) == 2 for c in ds.instructions["scan2cap"])


def test_sqa3d_answers_match_the_situation(synthetic_dataset):
    for q in synthetic_dataset.instructions["sqa3d"]:
        scene = synthetic_dataset.scene(q.scene_id)
        pos = np.array([q.extra["position"]["x"], q.extra["position"]["y"]])
        yaw = 2 * np.arctan2(q.extra["rotation"]["_z"], q.extra["rotation"]["_w"])
        forward, left = np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])
        if q.text.endswith("on my left or on my right?"):
            phrase = q.text[len("Is "):-len(" on my left or on my right?")]
            words = phrase.split()[1:]  # "the [colour] label"
            matches = [o for o in scene.objects if " ".join(words) in (o.label, f"{o.color_name} {o.label}")]
            assert len(matches) >= 1
            side = (matches[0].box[:2] - pos) @ left
            assert q.answers == ["left" if side > 0 else "right"]
        if q.text.startswith("How many") and q.text.endswith("in front of me?"):
            assert q.answers[0] in ("zero", "one", "two", "three", "four", "five", "six", "seven")
        assert q.eval_subgroup["question_type"] in ("what", "is", "how", "can", "which", "others")
        assert np.isclose(np.linalg.norm(forward), 1.0)


def test_synth_cli_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "synth"
    code = vidllm_main(["synth", "--out", str(out), "--scenes", "2", "--frames", "3", "--width", "32",
                        "--height", "24", "--seed", "5", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenes"] == 2 and summary["frames"] == 6 and summary["depth_size"] == [32, 24]
    assert summary["instructions"]["scanrefer"] and summary["objects"] >= 2
    with load_scene(out / "scans" / "scene0001_00") as scene:
        assert scene.color_size == (32, 24) and scene.num_frames == 3
    # A second run refuses to write into the now non-empty folder; the error is one line.
    assert vidllm_main(["synth", "--out", str(out), "--scenes", "1", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert vidllm_main(["synth", "--out", str(tmp_path / "bad"), "--scenes", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data.synth.scenes" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_synth_cli_config_file_overrides_and_flags(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("recipe: tiny\ndata:\n  synth:\n    scenes: 1\n    frames: 3\n    seed: 9\n")
    out = tmp_path / "synth"
    code = vidllm_main(["synth", "--out", str(out), "--config", str(params), "--set", "data.synth.width=40",
                        "--set", "data.synth.seed=2", "--seed", "4", "--height", "30", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    # YAML over the recipe, --set over YAML, flags over --set; depth follows the colour size.
    assert summary["scenes"] == 1 and summary["frames"] == 3
    assert summary["color_size"] == [40, 30] == summary["depth_size"]
    assert summary["clip_frames"] == 4  # the tiny recipe's data.prep.frames
    assert vidllm_main(["synth", "--out", str(tmp_path / "x"), "--set", "data.synth.colour=red"]) == 2
    assert "unknown config key 'data.synth.colour'" in capsys.readouterr().err
