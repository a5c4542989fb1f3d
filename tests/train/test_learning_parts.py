"""What the learning experiments rest on, each on tiny models: own proposals that find objects,
the right number of `<ground>`s after an overfit, a blind control that really sees nothing, a task
mix fixed by the config, and `vidllm ablate` end to end."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from vidllm.config import load_config
from vidllm.data.shards.format import ShardDataset
from vidllm.losses.proposals import proposal_loss
from vidllm.losses.vl import vl_loss
from vidllm.models.proposals import decode_proposals, recall_at_iou
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import EOS, GROUND, TASK_TAGS, SpecialTokenIds, build_prompt, train_tokenizer
from vidllm.train.batches import draw_instructions, is_training_scene, stage2_batch


def _model(*overrides: str, seed: int = 0):
    tokenizer = train_tokenizer(vocab_size=512)
    torch.manual_seed(seed)
    cfg = load_config("tiny", overrides=list(overrides)).model
    model = VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, tokenizer


def _train_batch(train_shards, tokenizer):
    sample = next(s for s in ShardDataset(str(train_shards)) if is_training_scene(s))
    return stage2_batch([sample], tokenizer, instructions_per_scene=4, max_text_tokens=64, max_proposals=16,
                        pad_id=tokenizer.pad_token_id, seed=0, step=0)


def test_proposal_recall_at_025_rises_on_a_training_scene(train_shards):
    """The proposal head, trained on a scene's ground-truth boxes, finds its objects: recall of
    its decoded proposals at IoU 0.25 rises from the untrained head's to every object the 3D
    patches reach (at the tiny recipe's 4x4 patches per frame, not every object has a patch).
    Patches are placed with ground-truth geometry, so the test is about the head, not the
    reconstruction of an untrained tiny model."""
    from vidllm.geometry import ground_truth_geometry
    from vidllm.losses.proposals import proposal_targets

    model, tokenizer = _model("model.patch_geometry=ground_truth")
    batch = _train_batch(train_shards, tokenizer)
    targets = batch["targets"]
    with torch.no_grad():
        vision = model.encode_video(batch["images"], with_points=False, geometry=ground_truth_geometry(targets))
    tokens, xyz, mask = vision.tokens, vision.xyz, vision.voxel_mask  # the pooled 3D-patch tokens (frozen here)
    gt, gt_mask = targets["scene_boxes"], targets["scene_box_mask"]
    owner = proposal_targets(xyz, mask, gt, gt_mask)
    reached = torch.zeros_like(gt_mask)
    reached[0, owner[owner >= 0].unique()] = True
    assert reached.any()

    def recall() -> float:
        with torch.no_grad():
            objectness, boxes = model.proposals(tokens, xyz)
            proposals, proposal_mask = decode_proposals(objectness, boxes, mask, 16)
        return recall_at_iou(proposals, proposal_mask, gt, reached, 0.25)

    before = recall()
    optimiser = torch.optim.Adam(model.proposals.parameters(), lr=3e-3)
    for _ in range(150):
        objectness, boxes = model.proposals(tokens, xyz)
        loss = proposal_loss(objectness, boxes, xyz, mask, gt, gt_mask)
        optimiser.zero_grad()
        (loss["objectness"] + loss["box"]).backward()
        optimiser.step()
    after = recall()
    assert before < 0.5 and after == 1.0, (before, after)


def test_multi_and_zero_target_rows_generate_the_right_number_of_grounds():
    """After a short overfit, a three-target request generates three `<ground>`s, a one-target
    request one, a zero-target request none (it answers "none")."""
    model, tokenizer = _model()
    requests = [("all the chairs.", GROUND * 3), ("the brown sofa.", GROUND), ("the purple bathtub.", " none")]
    texts = [build_prompt(q, grounding=True) + a + EOS for q, a in requests]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for r, (q, _) in enumerate(requests):
        labels[r, : len(tokenizer(build_prompt(q, grounding=True), add_special_tokens=False)["input_ids"])] = -100
    images = torch.rand(1, 4, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    optimiser = torch.optim.AdamW(model.llm.parameters(), lr=3e-3)
    with torch.no_grad():
        vision = model.encode_video(images)
    for _ in range(60):
        out = model(None, enc["input_ids"], enc["attention_mask"], labels, vision=vision,
                    scene_index=torch.zeros(3, dtype=torch.long))
        optimiser.zero_grad()
        vl_loss(out)["lm"].backward()
        optimiser.step()
    results = model.generate(images, [build_prompt(q, grounding=True) for q, _ in requests], tokenizer,
                             max_new_tokens=6)
    counts = [r.token_ids.count(model.special_ids.ground) for r in results]
    assert counts == [3, 1, 0], [r.text for r in results]
    assert results[2].text == "none" and len(results[0].boxes) == 3 and len(results[2].boxes) == 0


def test_the_blind_variant_receives_no_vision_tokens():
    """model.vision_tokens=false: the LLM reads one token, the `<image>` embedding, whatever the
    video; its losses and answers are the same for two different videos. The full model's are not."""
    prompt = build_prompt("What color is the sofa?")
    enc = None
    losses = {}
    for blind in (True, False):
        model, tokenizer = _model(f"model.vision_tokens={str(not blind).lower()}")
        enc = tokenizer([prompt + " red" + EOS], return_tensors="pt", add_special_tokens=False)
        labels = enc["input_ids"].clone()
        labels[0, :-2] = -100
        values = []
        for seed in (1, 2):
            images = torch.rand(1, 4, 3, 56, 56, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                vision = model.encode_video(images)
                out = model(None, enc["input_ids"], enc["attention_mask"], labels, vision=vision)
            values.append(float(vl_loss(out)["lm"]))
            if blind:
                image_embedding = model.llm.get_input_embeddings().weight[model.special_ids.image]
                assert vision.tokens.shape == (1, 1, image_embedding.shape[0]) and vision.mask.tolist() == [[True]]
                assert torch.equal(vision.tokens[0, 0], image_embedding)
                assert vision.voxel_mask.sum() > 1  # the 3D patches exist; they just never reach the LLM
        losses[blind] = values
    assert losses[True][0] == losses[True][1]
    assert losses[False][0] != losses[False][1]


def test_task_mix_follows_the_weights_and_every_prompt_names_its_task():
    records = [{"task": "scanqa", "id": i} for i in range(300)] + [{"task": "scanrefer", "id": i} for i in range(30)]
    rng = random.Random(0)
    drawn = Counter(r["task"] for _ in range(200) for r in draw_instructions(records, 4, {"scanqa": 1, "scanrefer": 1}, rng))
    # Equal weights: about half the draws are ScanRefer, although it has a tenth of the records.
    assert 0.4 < drawn["scanrefer"] / sum(drawn.values()) < 0.6
    assert all(r["task"] == "scanqa" for r in draw_instructions(records, 10, {"scanrefer": 0}, rng))
    assert len(draw_instructions(records[:3], 10, {"scanqa": 1}, rng)) == 3  # never more than there are
    # The task is explicit before the question, so the first answer token knows what family it is in.
    prompts = {"answer": build_prompt("What is next to the bed?"), "describe": build_prompt("Describe it.", with_object=True),
               "ground": build_prompt("the bed.", grounding=True)}
    for task, prompt in prompts.items():
        assert [tag for tag in TASK_TAGS.values() if f" {tag} " in prompt] == [TASK_TAGS[task]]
    with pytest.raises(Exception, match="unknown task 'scanqaa'"):
        load_config("tiny", overrides=["train.task_weights={scanqaa: 1}"])
    with pytest.raises(Exception, match="finite weight"):
        load_config("tiny", overrides=["train.task_weights={scanqa: .inf}"])


def test_ablate_trains_each_variant_on_the_same_data_and_reuses_results(tmp_path):
    """`vidllm ablate` end to end on the tiny recipe (full + blind): one shared dataset, one
    Stage-1 model for both (they differ only after Stage 1), the miniature teachers trained once
    and composed into both, held-out metrics per variant, and a second call reuses every variant."""
    import yaml

    from vidllm.ablate import columns, format_table, run_ablation

    args = ["data.synth.scenes=4", "train.stage1.steps=2", "train.stage2.steps=2", "teachers.miniatures=true",
            "teachers.pretrain.vggt_steps=2", "teachers.pretrain.clip_steps=2", "teachers.pretrain.dino_steps=2",
            "teachers.pretrain.probe_steps=2"]
    result = run_ablation("tiny", ["full", "blind"], tmp_path, overrides=args)
    for name in ("full", "blind"):  # both compose the same miniatures, as real pretrained parts
        used = yaml.safe_load((tmp_path / "variants" / name / "config.yaml").read_text())
        assert used["model"]["init"]["vggt"] == str(tmp_path / "teachers" / "miniature" / "vggt.safetensors")
        assert used["teachers"]["semantic"] == str(tmp_path / "teachers" / "miniature" / "semantic")
        assert used["teachers"]["geometry"] == str(tmp_path / "teachers" / "miniature" / "geometry")
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert list(saved["variants"]) == ["full", "blind"] and saved["split"] == "val"
    for name, entry in saved["variants"].items():
        assert set(entry["table"]) == {h for h, *_ in columns()}
        assert entry["table"]["δ1"] is not None and entry["proposals"] == "own"
        metrics = json.loads(open(entry["metrics_file"]).read())
        assert {"scanqa", "scanrefer", "recon"} <= set(metrics)
    assert len(list((tmp_path / "stage1").iterdir())) == 1
    assert "| blind |" in format_table(result)
    from vidllm.eval.report import build_report

    report = build_report(tmp_path).markdown.read_text()  # the report renders the ablation table
    assert "Ablations (held-out scenes)" in report and "| blind |" in report
    again = run_ablation("tiny", ["full", "blind"], tmp_path, overrides=args)
    assert all(entry.get("reused") for entry in again["variants"].values())
