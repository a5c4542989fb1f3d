"""Stage-1/2 batch assembly from real shard samples."""

from __future__ import annotations

import numpy as np
import torch

from vidllm.data.shards import ShardDataset
from vidllm.tokenizer import GROUND, GROUNDING_TASKS, IMAGE, LOCATE, train_tokenizer
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
    target = batch["box_targets"][r].double().numpy()
    matches = [i for i, box in boxes.items() if np.allclose(box[:3] - centre, target[:3], atol=1e-4)
               and np.allclose(box[3:], target[3:], atol=1e-5)]
    assert matches and batch["match_targets"][r].sum() >= 1
    assert batch["proposal_mask"][r].sum() == min(16, len(boxes))
    # The same step draws the same rows (resume relies on it).
    again = stage2_batch(samples, tokenizer, instructions_per_scene=2, max_text_tokens=96, max_proposals=16,
                         pad_id=tokenizer.pad_token_id, seed=0, step=3)
    again2 = stage2_batch(samples, tokenizer, instructions_per_scene=2, max_text_tokens=96, max_proposals=16,
                          pad_id=tokenizer.pad_token_id, seed=0, step=3)
    assert torch.equal(again["input_ids"], again2["input_ids"])
    assert set(GROUNDING_TASKS) >= {"scanrefer", "nr3d"}


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
    from vidllm.train.jobs import rank_samples, stage2_setup

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
    setup = stage2_setup(cfg, str(train_shards), None)
    batches = setup.job.batches(0)
    try:
        for _ in range(3):
            batch, num_samples = next(batches)
            assert num_samples == 2 and sorted(batch["keys"]) == sorted(train_keys)
            assert batch["input_ids"] is not None  # every step has instructions: no wasted recon-only steps
            assert torch.equal(torch.bincount(batch["scene_index"], minlength=2), torch.tensor([3, 3]))
    finally:
        batches.close()
