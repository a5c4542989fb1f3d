import pytest
import torch
from torch import nn

from vidllm.config import load_config
from vidllm.geometry import se3_inverse
from vidllm.lora import apply_lora, trainable_token_ids
from vidllm.losses.vl import grounding_terms, vl_loss
from vidllm.models.llm import llm_config
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import EOS, GROUND, SpecialTokenIds, build_prompt, train_tokenizer

FRAMES, SIZE = 3, 56


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(vocab_size=512)


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny").model


def make_model(cfg, tokenizer, seed=0):
    torch.manual_seed(seed)
    return VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512)


def batch(tokenizer, ground=True):
    texts = [build_prompt("What color is the chair?") + f" red{EOS}",
             build_prompt("Where is the brown table?") + (f" {GROUND}{EOS}" if ground else f" here{EOS}")]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


def images(b=2, seed=1):
    return torch.rand(b, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


VL_TARGETS = {"box_targets": torch.tensor([[0.0, 0, 0, 1, 1, 1], [1.0, 2.0, 0.5, 0.8, 0.6, 0.9]]),
              "target_proposals": torch.tensor([[1], [2]])}


def vl_forward(model, tokenizer):
    """(model outputs, vl_loss terms) of the `batch` rows, one box target per row."""
    ids, mask, labels = batch(tokenizer)
    out = model(images(), ids, mask, labels, proposals=torch.rand(2, 4, 6) + 0.1)
    return out, vl_loss(out, VL_TARGETS)


def grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_forward_shapes(cfg, tokenizer):
    model = make_model(cfg, tokenizer)
    out, losses = vl_forward(model, tokenizer)
    vision = out["vision"]
    assert vision.tokens.shape[0] == 2 and vision.tokens.shape[2] == 64
    assert vision.tokens.shape[1] <= cfg.patches3d.max_tokens and vision.mask.shape == vision.tokens.shape[:2]
    # Even the untrained reconstruction (FoV ≈ 0, every patch on its frame's optical axis)
    # hands the LLM at least min_tokens tokens.
    assert (vision.mask.sum(1) >= cfg.patches3d.min_tokens).all()
    assert vision.xyz.shape == (*vision.tokens.shape[:2], 3)
    assert out["scene_rotation"].shape == (2, 3, 3)
    recon = out["recon"]
    assert recon["depth"].shape == recon["depth_metric_aligned"].shape == (2, FRAMES, SIZE, SIZE)
    assert recon["extrinsics"].shape == (2, FRAMES, 3, 4) and recon["pose_enc"].shape == (2, FRAMES, 9)
    assert "logits" not in out  # with labels, the LM head runs on the supervised positions only
    supervised = out["supervised_targets"]  # [N] the label of every position that has one
    assert len(supervised) > 0 and out["supervised_logits"].shape == (len(supervised), 512)
    assert out["ground_mask"].tolist() == [[False], [True]]  # [B, G]: one <ground> slot
    assert out["box_pred"].shape == (2, 1, 6) and out["match_logits"].shape == (2, 1, 5)
    assert out["refined_boxes"].shape == (2, 1, 4, 6)  # every proposal refined by every slot
    assert not any(key.startswith("loss") for key in out)  # predictions only
    assert grounding_terms(out, VL_TARGETS)["assignment"].tolist() == [[-1], [0]]  # the QA row's target is never used
    for key in ("lm", "box", "giou", "match", "refine"):
        assert torch.isfinite(losses[key]) and losses[key] > 0
    assert torch.allclose(losses["total"], sum(losses[k] for k in ("lm", "box", "giou", "match", "refine")))


def test_vl_loss_never_reaches_reconstruction_but_reaches_cta(cfg, tokenizer):
    model = make_model(cfg, tokenizer)
    vl_forward(model, tokenizer)[1]["total"].backward()
    assert grad_norm(model.reconstruction) == 0.0
    assert grad_norm(model.scene_frame) == 0.0
    assert model.cta.phi_lang.fc1.weight.grad.abs().sum() > 0
    assert model.cta.bridge_tokens.grad.abs().sum() > 0
    for module in (model.encoder, model.patch3d, model.vision_proj, model.grounding, model.llm):
        assert grad_norm(module) > 0


def test_recon_loss_reaches_cta_and_encoder_not_llm(cfg, tokenizer):
    model = make_model(cfg, tokenizer)
    recon = model.encode_video(images()).recon
    loss = recon["depth"].mean() + recon["pose_enc"].square().mean() + recon["metric_depth"].mean()
    loss.backward()
    assert model.cta.phi_geom.fc1.weight.grad.abs().sum() > 0
    assert grad_norm(model.encoder) > 0 and grad_norm(model.reconstruction) > 0
    assert grad_norm(model.llm) == 0.0 and grad_norm(model.grounding) == 0.0


def _is_adapter(name: str) -> bool:
    return "lora_" in name or "trainable_tokens_delta" in name


def test_lora_trains_only_adapters_and_new_modules(cfg, tokenizer):
    model = apply_lora(make_model(cfg, tokenizer), cfg.llm)
    for name, p in model.named_parameters():
        if name.startswith("llm."):
            assert p.requires_grad == _is_adapter(name), name
        else:
            assert p.requires_grad, name
    vl_forward(model, tokenizer)[1]["total"].backward()
    llm_grads = {n: p.grad for n, p in model.llm.named_parameters()}
    assert all(g is None for n, g in llm_grads.items() if not _is_adapter(n))
    assert any(g is not None and g.abs().sum() > 0 for n, g in llm_grads.items() if "lora_B" in n)
    assert grad_norm(model.cta) > 0 and grad_norm(model.reconstruction) == 0.0


def test_lora_trains_the_special_token_rows_only(cfg, tokenizer):
    model = apply_lora(make_model(cfg, tokenizer), cfg.llm)
    ids = model.special_ids
    trained = trainable_token_ids(ids)
    assert trained == sorted({ids.eos, ids.image, ids.ground, ids.obj})
    embed, head = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    before = {"embed": embed.weight.detach().clone(), "head": head.weight.detach().clone()}
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if not _is_adapter(n)}
    vl_forward(model, tokenizer)[1]["total"].backward()
    embed_grad = embed.token_adapter.trainable_tokens_delta["default"].grad  # [len(trained), D]
    head_grad = head.token_adapter.trainable_tokens_delta["default"].grad
    # <ground> is an input token that later positions attend to (<image> is replaced by vision
    # tokens, </s> ends the rows); every head row gets gradient through the softmax.
    assert embed_grad[trained.index(ids.ground)].abs().sum() > 0
    assert (head_grad.abs().sum(-1) > 0).all()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    ordinary = torch.ones(model.vocab_size, dtype=torch.bool)
    ordinary[trained] = False
    for name, module in (("embed", embed), ("head", head)):
        after = module.weight.detach()  # base weight with the trained rows written in
        assert torch.equal(after[ordinary], before[name][ordinary]), name
        assert (after[ids.ground] != before[name][ids.ground]).any(), name
    assert (head.weight.detach()[trained] != before["head"][trained]).any(-1).all()
    for n, p in model.llm.named_parameters():
        if not _is_adapter(n):
            assert torch.equal(p.detach(), base[n]), n  # base weights (incl. the full matrices) frozen


def test_tied_embeddings_train_one_set_of_token_rows(cfg, tokenizer):
    hf = llm_config(cfg.llm, 512)
    hf.tie_word_embeddings = True
    torch.manual_seed(0)
    model = apply_lora(VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512, llm_config=hf), cfg.llm)
    deltas = [n for n, p in model.llm.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    assert len(deltas) == 1 and "embed_tokens" in deltas[0]
    vl_forward(model, tokenizer)[1]["total"].backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    embed, head = model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings().weight
    trained = trainable_token_ids(model.special_ids)
    assert torch.equal(embed, head)  # the head reads the same trained rows
    assert not torch.equal(embed[trained], model.llm.get_input_embeddings().token_adapter.base_layer.weight[trained])


def test_vision_tokens_are_deterministic(cfg, tokenizer):
    model = make_model(cfg, tokenizer).eval()
    with torch.no_grad():
        first, second = model.encode_video(images()), model.encode_video(images())
    assert torch.equal(first.mask, second.mask) and torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.xyz, second.xyz)


def test_one_vision_pass_serves_several_instructions(cfg, tokenizer):
    model = make_model(cfg, tokenizer).eval()
    ids, mask, labels = batch(tokenizer)
    with torch.no_grad():
        scene = images(b=1)
        vision = model.encode_video(scene)
        shared = model(None, ids, mask, labels, vision=vision, scene_index=torch.tensor([0, 0]), return_logits=True)
        repeated = model(scene.expand(2, -1, -1, -1, -1), ids, mask, labels, return_logits=True)
    assert torch.allclose(shared["logits"], repeated["logits"], atol=1e-5)
    assert torch.allclose(vl_loss(shared)["lm"], vl_loss(repeated)["lm"], atol=1e-6)


def test_object_prompt_changes_output(cfg, tokenizer):
    model = make_model(cfg, tokenizer).eval()
    enc = tokenizer([build_prompt("Describe the object.", with_object=True)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        vision = model.encode_video(images(b=1))
        a = model(None, enc["input_ids"], vision=vision, object_boxes=torch.tensor([[0.0, 0, 0, 1, 1, 1]]))
        b = model(None, enc["input_ids"], vision=vision, object_boxes=torch.tensor([[2.0, 1, 0, 1, 1, 1]]))
    assert not torch.allclose(a["logits"][0, -1], b["logits"][0, -1])


def test_generate_matches_uncached_greedy_and_returns_geometry(cfg, tokenizer):
    model = make_model(cfg, tokenizer).eval()
    prompt = build_prompt("How many chairs are in the room?")
    scene = images(b=1)
    [result] = model.generate(scene, [prompt], tokenizer, max_new_tokens=6)
    # Reference: recompute the whole sequence at every step (no KV cache).
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    expected = []
    with torch.no_grad():
        vision = model.encode_video(scene)
        for _ in range(6):
            logits = model(None, ids, vision=vision)["logits"]
            next_id = int(logits[0, -1].argmax())
            if next_id == model.special_ids.eos:
                break
            expected.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    assert result.token_ids == expected
    assert result.depth.shape == (FRAMES, SIZE, SIZE)
    assert result.camera_to_world.shape == (FRAMES, 4, 4)
    rotation = vision.scene_rotation[0]
    world_from_cam = se3_inverse(vision.recon["extrinsics"][0])  # first-camera frame ← camera
    assert torch.allclose(result.camera_to_world[:, :3, :3], rotation @ world_from_cam[:, :3, :3], atol=1e-5)
    assert torch.allclose(result.camera_to_world[:, :3, 3], world_from_cam[:, :3, 3] @ rotation.T, atol=1e-5)
    assert result.points.shape[1] == 3 and result.colors.shape == result.points.shape
    assert result.points.shape[0] > 0 and result.boxes.shape == (0, 6)


def test_generate_ground_boxes_match_forward(cfg, tokenizer):
    model = make_model(cfg, tokenizer).eval()
    ground = model.special_ids.ground
    head = nn.Linear(64, 512, bias=True)  # a real LM head that always prefers <ground>
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[ground] = 10.0
    model.llm.lm_head = head
    prompt = build_prompt("Where is the brown table?")
    centre = torch.tensor([1.0, 2.0, 0.5])
    [result] = model.generate(images(b=1), [prompt], tokenizer, max_new_tokens=2, first_camera_center=centre)
    assert result.token_ids == [ground, ground]
    assert result.boxes.shape == (2, 6) and result.match_logits is None
    assert torch.allclose(result.boxes_world[:, :3], result.boxes[:, :3] + centre)
    assert torch.equal(result.boxes_world[:, 3:], result.boxes[:, 3:])
    ids = tokenizer(prompt + GROUND, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(images(b=1), ids)
    assert torch.allclose(out["box_pred"][0, 0], result.boxes[0], atol=1e-5)
    # With proposals each <ground> selects one; the refinement starts as the identity, so its box
    # is the selected proposal (or the direct box when it selects "not among them").
    proposals = torch.rand(1, 3, 6) + 0.1
    [chosen] = model.generate(images(b=1), [prompt], tokenizer, max_new_tokens=2, proposals=proposals)
    assert chosen.match_logits.shape == (2, 4) and torch.equal(chosen.proposals, proposals[0])
    for box, logits, direct in zip(chosen.boxes, chosen.match_logits, result.boxes):
        pick = int(logits.argmax())
        assert torch.allclose(box, proposals[0, pick] if pick < 3 else direct, atol=1e-5)


def _mixed_rows(tokenizer, model):
    """Rows of different lengths over 2 scenes: QA, a long question, grounding, a Scan2Cap <obj> row."""
    texts = [build_prompt("What color is the chair?") + f" red{EOS}",
             build_prompt("Where is the brown table next to the big window in the corner?") + f" {GROUND}{EOS}",
             build_prompt("How many?") + f" four chairs and a table{EOS}",
             build_prompt("Describe the object.", with_object=True) + f" a small lamp{EOS}",
             build_prompt("Locate: the sofa.") + f"{GROUND}{GROUND}{EOS}"]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    answer_start = [len(tokenizer(t.rsplit("ASSISTANT:", 1)[0] + "ASSISTANT:", add_special_tokens=False)["input_ids"])
                    for t in texts]
    for r, start in enumerate(answer_start):
        labels[r, :start] = -100  # prompt unsupervised, as stage2_batch builds rows
    assert len(set(mask.sum(1).tolist())) > 2  # rows really differ in length
    boxes = torch.rand(len(texts), 6) + 0.1
    # Two targets for the two-<ground> row, far apart so the assignment has no near-tie.
    targets = torch.stack([boxes, boxes + torch.tensor([3.0, 0, 0, 0, 0, 0])], dim=1)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, proposals=torch.rand(len(texts), 4, 6) + 0.1,
                  object_boxes=boxes, scene_index=torch.tensor([0, 1, 0, 1, 1]))
    return inputs, dict(box_targets=targets, target_mask=torch.tensor([[True, False]] * 4 + [[True, True]]),
                        target_proposals=torch.tensor([[0, -1], [1, -1], [2, -1], [3, -1], [0, 2]]))


@pytest.mark.parametrize("lora", [False, True])
def test_shared_vision_prefix_equals_spliced_rows(cfg, tokenizer, lora):
    """Loss and every gradient (LLM or adapters, projector, 3D patches, CTA, encoder) of the
    shared-prefix path equal the path that splices the vision tokens into every row."""
    model = make_model(cfg, tokenizer)
    if lora:
        model = apply_lora(model, cfg.llm)
    model.train()
    for module in model.modules():  # dropout off: both paths must see the same function
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    inputs, targets = _mixed_rows(tokenizer, model)
    clips = images(b=2)
    results = {}
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(clips, share_prefix=share, **inputs)
        losses = vl_loss(out, targets)
        # GIoU left out of the backward: it adds rounding noise (~1e-9) to the CTA's near-zero
        # attention-projection gradients, above this comparison's absolute floor.
        sum(losses[key] for key in ("lm", "box", "match", "refine")).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[share] = (out, losses, grads)
    (shared, l_shared, g_shared), (spliced, l_spliced, g_spliced) = results[True], results[False]
    assert l_shared.keys() == l_spliced.keys() == {"total", "lm", "box", "giou", "match", "refine"}
    for key in l_shared:
        assert torch.allclose(l_shared[key], l_spliced[key], rtol=1e-5, atol=0), key
    assert torch.allclose(shared["box_pred"], spliced["box_pred"], rtol=1e-5, atol=1e-6)
    # Both <ground>s of the last row are supervised, each with its own target, in both paths.
    assert shared["box_pred"].shape[1] == 2 and shared["ground_mask"][4].all()
    assignment = grounding_terms(shared, targets)["assignment"]
    assert torch.equal(assignment, grounding_terms(spliced, targets)["assignment"])
    assert sorted(assignment[4].tolist()) == [0, 1]
    assert g_shared.keys() == g_spliced.keys()
    assert any(n.startswith("encoder.") for n in g_shared) and any(n.startswith("cta.") for n in g_shared)
    assert any("lora_" in n for n in g_shared) == lora
    for name, grad in g_shared.items():
        ref = g_spliced[name]
        scale = float(ref.abs().max())
        assert float((grad - ref).abs().max()) <= 1e-5 * max(scale, 1e-12) + 1e-9, name


def test_generate_runs_one_prefix_per_scene(cfg, tokenizer, monkeypatch):
    """Several prompts about one video: one vision pass and one LLM prefix pass serve them all,
    and each answer equals generating it alone."""
    model = make_model(cfg, tokenizer).eval()
    prompts = [build_prompt("How many chairs are in the room?"), build_prompt("What color is the sofa?"),
               build_prompt("Locate: the lamp.")]
    scene = images(b=1)
    alone = [model.generate(scene, [p], tokenizer, max_new_tokens=4)[0].token_ids for p in prompts]
    calls = {"vision": 0, "prefix": 0}
    encode, prefix = model.encode_video, model._vision_prefix
    monkeypatch.setattr(model, "encode_video", lambda *a, **k: (calls.__setitem__("vision", calls["vision"] + 1), encode(*a, **k))[1])
    monkeypatch.setattr(model, "_vision_prefix", lambda *a: (calls.__setitem__("prefix", calls["prefix"] + 1), prefix(*a))[1])
    together = model.generate(scene, prompts, tokenizer, max_new_tokens=4)
    assert [r.token_ids for r in together] == alone
    assert calls == {"vision": 1, "prefix": 1}
