"""Stage-1/2 batch assembly from real shard samples."""

from __future__ import annotations

import numpy as np
import torch

from vidllm.data.scannet.annotations import grounding_tasks
from vidllm.data.shards.format import ShardDataset
from vidllm.tokenizer import GROUND, IMAGE, LOCATE, train_tokenizer
from vidllm.train.batches import NO_TARGET_ANSWER, stage2_batch, train_instructions


def test_stage2_batch_rows_labels_and_scene_frame_boxes(train_shards):
    samples = list(ShardDataset(str(train_shards)))
    tokenizer = train_tokenizer(vocab_size=512)
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE, GROUND)}
    batch = stage2_batch(samples, tokenizer, instructions_per_scene=50, max_text_tokens=48, max_proposals=16,
                         pad_id=tokenizer.pad_token_id, seed=0, step=0)
    images = batch["images"]
    assert images.shape[:3] == (len(samples), 4, 3) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    rows = batch["input_ids"].shape[0]
    train_counts = [min(50, len(train_instructions(s))) for s in samples]
    assert rows == sum(train_counts) > 0
    assert torch.equal(torch.bincount(batch["scene_index"], minlength=len(samples)), torch.tensor(train_counts))
    # One <image> per row; prompt positions (up to "ASSISTANT:") never supervised; eos always is.
    assert ((batch["input_ids"] == special[IMAGE]).sum(1) == 1).all()
    for r in range(rows):
        n = int(batch["attention_mask"][r].sum())
        labels = batch["labels"][r, :n]
        image_pos = int((batch["input_ids"][r] == special[IMAGE]).nonzero())
        assert labels[image_pos] == -100 and labels[-1] == tokenizer.eos_token_id
        assert (batch["labels"][r, n:] == -100).all()
        assert n <= 48 and batch["input_ids"][r, n - 1] == tokenizer.eos_token_id  # long rows are cut, eos kept
    # Grounding rows: <ground> is supervised, and the box target is the object's box moved to the
    # first camera centre (the scene frame `predict` maps back).
    ground_rows = (batch["input_ids"] == special[GROUND]).any(1)
    assert ground_rows.any()
    assert torch.equal(ground_rows, batch["has_box"])
    # Grounding requests, and only they, open with the LOCATE instruction: answered with <ground>, or
    # with the no-target answer (Multi3DRefer); every other row is answered in words.
    for i in range(rows):
        prompt = tokenizer.decode(batch["input_ids"][i][batch["labels"][i] == -100])
        answer = tokenizer.decode(batch["labels"][i][batch["labels"][i] != -100], skip_special_tokens=True).strip()
        if f"USER: {LOCATE} " in prompt:
            assert ground_rows[i] or answer == NO_TARGET_ANSWER, (prompt, answer)
        else:
            assert not ground_rows[i], prompt
    r = int(ground_rows.nonzero()[0])
    # The answer is the bare <ground> token(s) then eos: no " " token in front of them.
    answer = batch["labels"][r][batch["labels"][r] != -100]
    assert (answer[:-1] == special[GROUND]).all() and len(answer) >= 2
    b = int(batch["scene_index"][r])
    meta = samples[b]["meta"]
    alignment = np.asarray(meta["axis_alignment"])
    centre = (alignment @ samples[b]["camera_to_world"][0].double().numpy())[:3, 3]
    boxes = {int(o["object_id"]): np.asarray(o["box"]) for o in meta["objects"]}
    # One target per <ground>, each a scene object moved to the scene frame and found, at its
    # target_proposals index, among the row's proposals.
    assert int(batch["target_mask"][r].sum()) == len(answer) - 1
    for t in batch["target_mask"][r].nonzero().flatten().tolist():
        target = batch["box_targets"][r, t].double().numpy()
        matches = [i for i, box in boxes.items() if np.allclose(box[:3] - centre, target[:3], atol=1e-4)
                   and np.allclose(box[3:], target[3:], atol=1e-5)]
        assert matches
        proposal = batch["proposals"][r, int(batch["target_proposals"][r, t])].double().numpy()
        assert np.allclose(proposal, target, atol=1e-5)
    assert batch["proposal_mask"][r].sum() == min(16, len(boxes))
    # The same step draws the same rows (resume relies on it).
    again = stage2_batch(samples, tokenizer, instructions_per_scene=2, max_text_tokens=96, max_proposals=16,
                         pad_id=tokenizer.pad_token_id, seed=0, step=3)
    again2 = stage2_batch(samples, tokenizer, instructions_per_scene=2, max_text_tokens=96, max_proposals=16,
                          pad_id=tokenizer.pad_token_id, seed=0, step=3)
    assert torch.equal(again["input_ids"], again2["input_ids"])
    assert set(grounding_tasks()) >= {"scanrefer", "nr3d"}


def test_val_only_clips_give_a_reconstruction_only_batch(train_shards):
    samples = [s for s in ShardDataset(str(train_shards)) if not train_instructions(s)]
    if not samples:  # both scenes in train: build one by dropping the records
        samples = [dict(next(iter(ShardDataset(str(train_shards)))), annotations=[])]
    tokenizer = train_tokenizer(vocab_size=512)
    batch = stage2_batch(samples[:1], tokenizer, instructions_per_scene=2, max_text_tokens=64, max_proposals=8,
                         pad_id=tokenizer.pad_token_id, seed=0, step=0)
    assert batch["input_ids"] is None
    assert batch["targets"]["pose_enc"].shape[:2] == (1, 4) and batch["targets"]["valid_mask"].any()


def test_val_split_scenes_never_enter_training(train_shards):
    """Neither stage's sample stream (any rank) nor a Stage-2 batch ever holds a val-split scene,
    not even for a reconstruction-only step; Stage 2 takes `batch_size` scenes per step."""
    from tests.train.helpers import tiny_config
    from vidllm.train.batches import cycle_samples, scene_split
    from vidllm.train.jobs import StageInputs, rank_samples, stage2_setup

    splits = {s["key"]: scene_split(s) for s in ShardDataset(str(train_shards))}
    train_keys = {k for k, v in splits.items() if v == "train"}
    assert "val" in splits.values() and len(train_keys) == 2
    for world_size in (1, 2):
        seen: set[str] = set()
        for rank in range(world_size):
            stream = cycle_samples(rank_samples(str(train_shards), rank, world_size))
            seen |= {next(stream)["key"] for _ in range(5)}
        assert seen == train_keys, world_size
    cfg = tiny_config("train.stage2.batch_size=2", "train.instructions_per_scene=3")
    setup = stage2_setup(cfg, StageInputs(str(train_shards)))
    batches = setup.job.batches(0)
    try:
        for _ in range(3):
            batch, num_samples = next(batches)
            assert num_samples == 2 and sorted(batch["keys"]) == sorted(train_keys)
            assert batch["input_ids"] is not None  # every step has instructions: no wasted recon-only steps
            assert torch.equal(torch.bincount(batch["scene_index"], minlength=2), torch.tensor([3, 3]))
    finally:
        batches.close()


OBJECT_IDS = [3 * i + 1 for i in range(70)]  # ids ≠ positions, so an index/id mix-up shows


def _object_box(i: int) -> list[float]:
    return [0.1 * i, 0.3 * (i % 7), 0.5, 0.3 + 0.01 * i, 0.4, 0.5]


def _scene(key: str, annotations: list[dict], object_ids=OBJECT_IDS, frames: int = 2, size: int = 56) -> dict:
    """A tiny in-memory clip (the `to_torch` layout): constant depth, first camera at (0, 0, 1)."""
    poses = torch.eye(4).repeat(frames, 1, 1)
    poses[:, 0, 3] = 0.1 * torch.arange(frames)
    poses[:, 2, 3] = 1.0
    intrinsics = torch.tensor([[50.0, 0, size / 2], [0, 50.0, size / 2], [0, 0, 1]]).repeat(frames, 1, 1)
    return {"key": key, "images": torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(0)),
            "depths": torch.full((frames, size, size), 2.0), "camera_to_world": poses, "intrinsics": intrinsics,
            "meta": {"scene_id": key, "axis_alignment": torch.eye(4).tolist(),
                     "objects": [{"object_id": i, "label": "chair", "box": _object_box(i)} for i in object_ids]},
            "annotations": annotations}


THREE = [OBJECT_IDS[60], OBJECT_IDS[2], OBJECT_IDS[35]]
RECORDS = [
    {"task": "multi3drefer", "id": "m3", "split": "train", "text": "all the chairs.", "target_object_ids": THREE},
    {"task": "multi3drefer", "id": "m0", "split": "train", "text": "the purple bathtub.", "target_object_ids": []},
    {"task": "scanrefer", "id": "s1", "split": "train", "text": "the chair by the door.",
     "target_object_ids": [OBJECT_IDS[50]]},
    {"task": "scanqa", "id": "q", "split": "train", "text": "What color is the sofa?", "answers": ["red"]},
]


def _batch(samples, tokenizer, step=0, max_proposals=16):
    return stage2_batch(samples, tokenizer, instructions_per_scene=10, max_text_tokens=64,
                        max_proposals=max_proposals, pad_id=tokenizer.pad_token_id, seed=0, step=step)


def _row_of(batch, tokenizer, phrase):
    rows = [r for r in range(batch["input_ids"].shape[0]) if phrase in tokenizer.decode(batch["input_ids"][r])]
    assert len(rows) == 1, phrase
    return rows[0]


def test_stage2_batch_multi_and_zero_target_rows_in_a_70_object_scene():
    """70 objects, max_proposals 16: every row holds ≤ 16 proposals that include all its targets;
    the 3-target row has three <ground>s and its three targets; the zero-target row answers
    "none" with no target; the proposal draw is a function of (seed, step, scene)."""
    tokenizer = train_tokenizer(vocab_size=512)
    ground = tokenizer.convert_tokens_to_ids(GROUND)
    batch = _batch([_scene("scene0070_00", RECORDS)], tokenizer)
    centre = batch["targets"]["first_camera_center"][0]
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, 1.0]))
    scene_boxes = {i: torch.tensor(_object_box(i)) - torch.cat([centre, torch.zeros(3)]) for i in OBJECT_IDS}
    rows = batch["input_ids"].shape[0]
    assert rows == 4 and batch["proposals"].shape[1] == 16 and batch["box_targets"].shape == (4, 3, 6)
    expected_targets = {"all the chairs": THREE, "purple bathtub": [], "by the door": [OBJECT_IDS[50]], "sofa": []}
    for phrase, target_ids in expected_targets.items():
        r = _row_of(batch, tokenizer, phrase)
        assert int(batch["proposal_mask"][r].sum()) == 16
        proposals = batch["proposals"][r][batch["proposal_mask"][r]]
        proposed = [i for i in OBJECT_IDS if any(torch.allclose(p, scene_boxes[i]) for p in proposals)]
        assert len(proposed) == 16  # 16 distinct scene objects
        assert set(target_ids) <= set(proposed)
        assert batch["target_mask"][r].tolist() == [t < len(target_ids) for t in range(3)]
        assert bool(batch["has_box"][r]) == bool(target_ids)
        for t, object_id in enumerate(target_ids):  # record order; the model assigns them to <ground>s
            assert torch.allclose(batch["box_targets"][r, t], scene_boxes[object_id])
            assert torch.allclose(batch["proposals"][r, int(batch["target_proposals"][r, t])], scene_boxes[object_id])
        assert (batch["target_proposals"][r, len(target_ids):] == -1).all()
        answer = batch["labels"][r][batch["labels"][r] != -100]
        if phrase == "all the chairs":
            assert answer.tolist() == [ground] * 3 + [tokenizer.eos_token_id]
        if phrase == "purple bathtub":  # "no target" is the answer: no <ground>, "none" supervised
            assert ground not in batch["input_ids"][r].tolist()
            assert tokenizer.decode(answer, skip_special_tokens=True).strip() == NO_TARGET_ANSWER
    # Resume: the same (seed, step, scene) draws the same proposals; another step draws others.
    assert torch.equal(_batch([_scene("scene0070_00", RECORDS)], tokenizer)["proposals"], batch["proposals"])
    r = _row_of(batch, tokenizer, "all the chairs")
    later = _batch([_scene("scene0070_00", RECORDS)], tokenizer, step=1)
    r_later = _row_of(later, tokenizer, "all the chairs")
    assert not torch.equal(later["proposals"][r_later], batch["proposals"][r])
    # A scene within max_proposals: every object, in id order, in every row.
    few = THREE + OBJECT_IDS[10:13]
    small = _batch([_scene("scene0005_00", RECORDS[:1], object_ids=few)], tokenizer)
    assert torch.allclose(small["proposals"][0], torch.stack([scene_boxes[i] for i in sorted(few)]))


def test_select_proposals_keeps_targets_and_draws_the_rest():
    import random

    from vidllm.train.batches import select_proposals

    ids = list(range(100, 170))
    picked = select_proposals(ids, [169, 100, 130], 16, random.Random("0:0:s"))
    assert len(picked) == 16 and {100, 130, 169} <= set(picked) and picked == sorted(picked)
    assert picked == select_proposals(ids, [169, 100, 130], 16, random.Random("0:0:s"))
    assert select_proposals(ids, [101, 102, 103], 2, random.Random(0)) == [101, 102, 103]  # targets never cut
    assert select_proposals(ids[:5], [], 16, random.Random(0)) == ids[:5]


def test_stage2_batch_rows_train_every_target_through_the_model():
    """The batch fed to a tiny VidLLM: the 3-target row's three <ground>s are each assigned a
    different target (box L1, match CE and GIoU terms present), the zero-target row none."""
    from tests.train.helpers import tiny_config
    from vidllm.losses import stage2_loss
    from vidllm.losses.vl import grounding_terms
    from vidllm.models.vidllm import VidLLM
    from vidllm.tokenizer import SpecialTokenIds
    from vidllm.train.stage2 import Stage2Objective

    tokenizer = train_tokenizer(vocab_size=512)
    batch = _batch([_scene("scene0070_00", RECORDS)], tokenizer)
    torch.manual_seed(0)
    model = VidLLM(tiny_config().model, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                proposals=batch["proposals"], proposal_mask=batch["proposal_mask"], scene_index=batch["scene_index"])
    vl_targets = {key: batch[key] for key in ("box_targets", "target_mask", "target_proposals")}
    slots = grounding_terms(out, vl_targets)
    three, zero = _row_of(batch, tokenizer, "all the chairs"), _row_of(batch, tokenizer, "purple bathtub")
    assert sorted(slots["assignment"][three].tolist()) == [0, 1, 2]
    assert (slots["box_l1"][three] > 0).all() and (slots["match_nll"][three] > 0).all()
    assert not out["ground_mask"][zero].any() and (slots["assignment"][zero] == -1).all()
    assigned = int((slots["assignment"] >= 0).sum())
    assert assigned == 4  # three + the ScanRefer row's one
    losses = stage2_loss(out, {**batch["targets"], **vl_targets})
    for key in ("lm", "box", "giou", "match"):
        assert torch.isfinite(losses[key]) and losses[key] > 0, key
    losses = Stage2Objective(model)(batch)
    assert torch.isfinite(losses["total"]) and {"box", "giou", "match"} <= set(losses)


def test_rows_naming_an_object_the_clip_lacks_are_left_out():
    """Dropping the missing target would teach a wrong count, or "none" for a row that has one."""
    import pytest

    from vidllm.errors import DataError
    from vidllm.train.batches import encode_row

    lost = {"task": "multi3drefer", "id": "lost", "split": "train", "text": "the two lamps.",
            "target_object_ids": [OBJECT_IDS[0], 9999]}
    sample = _scene("scene0070_00", RECORDS + [lost])
    assert [r["id"] for r in train_instructions(sample)] == ["m3", "m0", "s1", "q"]
    tokenizer = train_tokenizer(vocab_size=512)
    objects = {i: _object_box(i) for i in OBJECT_IDS}
    with pytest.raises(DataError, match="target object 9999 is not in the scene"):
        encode_row(lost, tokenizer, objects, [0.0, 0.0, 1.0], 64)
