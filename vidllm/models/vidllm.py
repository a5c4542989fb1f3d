"""Vid-LLM (§3, Fig. 2): shared DINOv2 → Cross-Task Adapter → {reconstruction branch,
3D-patch tokens → LLM → text and grounding}.

Gradient rule (§3.4): the 3D patch geometry (depth, poses, intrinsics, scene rotation) is
detached before it meets the language stream, so VL losses never reach the reconstruction
branch or the scene-frame head, while T'_lang carries VL gradients into the CTA (and the
encoder). Reconstruction losses reach the CTA and encoder through T'_geom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig

from vidllm.config import ModelConfig
from vidllm.geometry import patch_centers_to_world, patch_depth, scene_to_scannet_world, se3_inverse, unproject_depth
from vidllm.models.cross_task_adapter import CrossTaskAdapter
from vidllm.models.encoder import SharedEncoder
from vidllm.models.grounding import GroundingHeads
from vidllm.models.llm import build_causal_lm, decoder_of, run_shared_prefix, select_cache, splice_vision_tokens
from vidllm.models.patches3d import Patch3DEmbedding, SceneFrameHead, voxel_pool
from vidllm.models.proposals import ProposalHead, decode_proposals
from vidllm.models.reconstruction import ReconstructionBranch
from vidllm.tokenizer import SpecialTokenIds


@dataclass
class VisionOutput:
    """One vision pass over a batch of scenes; reusable by several instructions per scene."""

    recon: dict  # ReconstructionBranch outputs (world = first camera, metric after alignment)
    tokens: Tensor  # [B, N, D_llm] what the LLM reads at <image>: 3D-patch tokens after voxel pooling and projection
    mask: Tensor  # [B, N] True = real token
    xyz: Tensor  # [B, V, 3] voxel centroids in the scene frame (metres), one per pooled 3D patch
    voxel_mask: Tensor  # [B, V] True = real voxel
    scene_rotation: Tensor  # [B, 3, 3] first camera → gravity-aligned scene frame
    objectness: Tensor  # [B, V] proposal logits of the pooled 3D patches (`ProposalHead`)
    proposal_boxes: Tensor  # [B, V, 6] the box each voxel votes for

    def select(self, scene_index: Tensor) -> VisionOutput:
        """Repeat scenes for instructions: `scene_index [B_text]` → a VisionOutput with B_text rows."""
        return VisionOutput(self.recon, self.tokens[scene_index], self.mask[scene_index], self.xyz[scene_index],
                            self.voxel_mask[scene_index], self.scene_rotation[scene_index],
                            self.objectness[scene_index], self.proposal_boxes[scene_index])

    def own_proposals(self, max_proposals: int) -> tuple[Tensor, Tensor]:
        """The scenes' proposals decoded from the votes: (`[B, M, 6]`, mask `[B, M]`)."""
        return decode_proposals(self.objectness, self.proposal_boxes, self.voxel_mask, max_proposals)


# The reconstruction outputs `generate` reads after the vision pass (the rest are dropped from a kept state).
_GEOMETRY_KEYS = ("depth_metric_aligned", "extrinsics", "intrinsics", "scale")


@dataclass
class VisionState:
    """The question-independent part of `generate` for a batch of videos (`VidLLM.vision_state`),
    kept so later questions skip it: the vision pass (encoder, CTA, reconstruction branch,
    3D-patch tokens, proposal votes), and, filled on first use, the model's own proposals, each
    point stride's scene geometry and the LLM's key/value cache over each scene's vision tokens.

    Reusing it gives the same results as `generate` without it, bit for bit: every part is
    computed once by the same code, and the LLM prefix cache is copied, never extended, per prompt.
    """

    images: Tensor  # [B, S, 3, H, W] in [0, 1], on the model's device
    vision: VisionOutput  # recon holds only the geometry `generate` reads
    proposals: tuple[Tensor, Tensor] | None = None  # own proposals ([B, M, 6], mask [B, M])
    geometry: dict[int, list[dict]] = field(default_factory=dict)  # point stride → per-scene geometry
    prefixes: dict[tuple[int, ...], tuple[DynamicCache, Tensor]] = field(default_factory=dict)  # ids before <image>


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    boxes: Tensor  # [n, 6] one per emitted <ground>, scene frame (cx, cy, cz, dx, dy, dz)
    boxes_world: Tensor | None  # [n, 6] in the axis-aligned ScanNet world (needs the first camera centre)
    match_logits: Tensor | None  # [n, M + 1] proposal scores (last = not among them) if proposals were given
    depth: Tensor  # [S, H, W] metric depth (aligned relative depth)
    camera_to_world: Tensor  # [S, 4, 4] camera → scene frame
    intrinsics: Tensor  # [S, 3, 3] predicted, in pixels of the input frames
    points: Tensor  # [N, 3] scene frame
    colors: Tensor  # [N, 3] in [0, 1]
    scale: float  # relative → metric scale of the reconstruction
    proposals: Tensor | None = None  # [M, 6] the scene-frame proposals scored (own or given)
    extra: dict = field(default_factory=dict)


class VidLLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        special_ids: SpecialTokenIds | None = None,
        vocab_size: int | None = None,
        attn_implementation: str = "sdpa",
        encoder_config: PretrainedConfig | None = None,
        llm_config: PretrainedConfig | None = None,
    ):
        """`encoder_config` / `llm_config` rebuild a saved model's exact transformers
        architectures (used by `vidllm.artifacts.model_dir`); otherwise they come from `cfg`."""
        super().__init__()
        self.config = cfg
        self.encoder = SharedEncoder(cfg.encoder, hf_config=encoder_config)
        dim = self.encoder.hidden_size
        self.patch_size = self.encoder.patch_size
        self.cta = CrossTaskAdapter(cfg.cta, dim)
        # The encoder layers the metric depth decoder reads (DPT-style: four depths).
        self.metric_depth_layers = list(cfg.metric_depth.encoder_layers or self.encoder.quarter_layers())
        self.reconstruction = ReconstructionBranch(cfg, dim)
        self.scene_frame = SceneFrameHead(dim, cfg.grounding.hidden)
        self.patch3d = Patch3DEmbedding(dim)
        self.llm = build_causal_lm(cfg.llm, attn_implementation, vocab_size, hf_config=llm_config)
        llm_dim = self.llm.get_input_embeddings().embedding_dim
        self.vocab_size = self.llm.get_input_embeddings().num_embeddings
        self.special_ids = special_ids or SpecialTokenIds.placeholder(self.vocab_size)
        # LLaVA-style 2-layer projector from the vision width to the LLM width.
        self.vision_proj = nn.Sequential(nn.Linear(dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        self.grounding = GroundingHeads(cfg.grounding, llm_dim)
        self.proposals = ProposalHead(llm_dim, cfg.grounding.hidden)

    # ------------------------------------------------------------------ vision

    def encode_video(self, images: Tensor, with_points: bool = True, alignment_seeds: list[int] | None = None,
                     geometry: dict[str, Tensor] | None = None) -> VisionOutput:
        """images `[B, S, 3, H, W]` in [0, 1] → reconstruction and 3D-patch tokens `[B, N, D_llm]`.

        `with_points=False` skips the point head (its world points feed no other module).
        `alignment_seeds` (one per scene, training) draw the images of real-scale alignment; None
        = evenly spaced images (evaluation). `geometry` (`ground_truth_geometry`: depth
        `[B, S, H, W]` metres, extrinsics `[B, S, 3, 4]`, intrinsics `[B, S, 3, 3]`, scene_rotation
        `[B, 3, 3]`) places the 3D patches with ground truth instead of the predictions (the
        `model.patch_geometry: ground_truth` upper bound; the reconstruction is still predicted).
        With `model.vision_tokens` off (the blind control) the LLM reads the `<image>` token's own
        embedding instead of the scene: the same single token for every video."""
        t_base, depth_levels = self.encoder(images, self.metric_depth_layers)  # [B, S, P, C], 4 × [B, S, P, C]
        t_geom, t_lang = self.cta(t_base)
        recon = self.reconstruction(t_geom, images, t_base, with_points, depth_levels, alignment_seeds)
        rotation = self.scene_frame(t_geom)  # [B, 3, 3]
        with torch.no_grad():  # one-way gradient: geometry is an input of the VL branch
            if geometry is None:
                depth, extrinsics, intrinsics = recon["depth_metric_aligned"], recon["extrinsics"], recon["intrinsics"]
                patch_rotation = rotation.detach()
            else:
                depth, extrinsics, intrinsics = geometry["depth"], geometry["extrinsics"], geometry["intrinsics"]
                patch_rotation = geometry["scene_rotation"].to(depth.dtype)
            xyz = patch_centers_to_world(depth, extrinsics, intrinsics, self.patch_size)
            xyz = xyz @ patch_rotation[:, None].transpose(-1, -2)  # first camera → scene frame, [B,S,P,3]
            valid = (patch_depth(depth, self.patch_size) > 0) & torch.isfinite(xyz).all(-1)
            xyz = torch.where(valid[..., None], xyz, 0.0)  # patches without geometry sit at the origin, NaN-free
        t_3d = self.patch3d(t_lang, xyz)  # eq. 4, per patch
        pool = self.config.patches3d
        pooled, centroids, mask = voxel_pool(
            t_3d.flatten(1, 2), xyz.flatten(1, 2), valid.flatten(1, 2), pool.voxel_size, pool.max_tokens, pool.min_tokens
        )
        tokens = self.vision_proj(pooled)
        objectness, proposal_boxes = self.proposals(tokens, centroids)
        llm_tokens, llm_mask = tokens, mask
        if not self.config.vision_tokens:
            image = self.llm.get_input_embeddings().weight[self.special_ids.image]
            llm_tokens = image.expand(tokens.shape[0], 1, -1)
            llm_mask = mask.new_ones(tokens.shape[0], 1)
        return VisionOutput(recon, llm_tokens, llm_mask, centroids, mask, rotation, objectness, proposal_boxes)

    # ------------------------------------------------------------------ language

    def _text_embeddings(self, input_ids: Tensor, object_boxes: Tensor | None) -> Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        if object_boxes is not None:
            is_obj = (input_ids == self.special_ids.obj).unsqueeze(-1)
            obj = self.grounding.object_embedding(object_boxes.to(embeds.dtype))[:, None]  # [B, 1, D]
            embeds = torch.where(is_obj, obj.to(embeds.dtype), embeds)
        return embeds

    def forward(
        self,
        images: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        proposals: Tensor | None = None,
        proposal_mask: Tensor | None = None,
        object_boxes: Tensor | None = None,
        vision: VisionOutput | None = None,
        scene_index: Tensor | None = None,
        share_prefix: bool = True,
        return_logits: bool | None = None,
    ) -> dict:
        """Predictions only; the losses (`vidllm.losses.vl.vl_loss`) compare them with the targets.

        Args:
            images: `[B_scene, S, 3, H, W]` in [0, 1] (or None when `vision` is given).
            input_ids, attention_mask, labels: `[B, L]`, one `<image>` per row; labels −100 = ignored.
                Labels only choose where the LM head runs (and which token each position predicts).
            proposals: `[B, M, 6]` scene-frame boxes every `<ground>` scores and refines;
                proposal_mask `[B, M]` the real ones (default all).
            object_boxes: `[B, 6]` Scan2Cap object box embedded at `<obj>`.
            vision: a previous `encode_video` result; scene_index `[B]` maps rows to its scenes.
            share_prefix: run the LLM over each scene's vision tokens once and the rows' text
                against that prefix (`run_shared_prefix`); False splices the vision tokens into
                every row. Same results to float tolerance.
            return_logits: also return `logits [B, T, V]` over every position (default: only
                when no labels are given).
        Returns dict: recon, vision, scene_rotation `[B_scene, 3, 3]`; logits (see return_logits);
            with labels supervised_logits `[N, V]` and supervised_targets `[N]`, the N positions
            that have a label, in row-major order (N may be 0); and per `<ground>` slot (G = most
            `<ground>`s in a row, in answer order): ground_mask `[B, G]`, ground_hidden
            `[B, G, D]`, box_pred `[B, G, 6]`, with proposals also match_logits `[B, G, M + 1]`
            (last column: "not among them") and refined_boxes `[B, G, M, 6]` (every proposal
            refined by every slot: the loss needs the target's proposal, which the model never
            sees; M is small).
        """
        if vision is None:
            vision = self.encode_video(images)
        if scene_index is None:
            scene_index = torch.arange(input_ids.shape[0], device=input_ids.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden, targets, text_index = self._language_hidden(
            self._text_embeddings(input_ids, object_boxes), input_ids, attention_mask, labels, vision, scene_index,
            share_prefix)
        result: dict = {"recon": vision.recon, "vision": vision, "scene_rotation": vision.scene_rotation}
        if return_logits or (return_logits is None and labels is None):
            result["logits"] = self.llm.get_output_embeddings()(hidden)
        if labels is not None:
            # The LM head only where a label is: [N, V] instead of [B, T, V], most of which
            # (vision tokens, prompt, padding) no loss reads.
            supervised = targets != -100
            result["supervised_logits"] = self.llm.get_output_embeddings()(hidden[supervised])
            result["supervised_targets"] = targets[supervised]

        # Every <ground> is a box query: its hidden state (it is an input token of the answer).
        # Slots [B, G] hold each row's <ground> columns in answer order, padding past the end.
        is_ground = input_ids == self.special_ids.ground
        length = input_ids.shape[1]
        slots = int(is_ground.sum(1).max()) if input_ids.shape[0] else 0
        columns = torch.arange(length, device=input_ids.device).expand_as(input_ids)
        columns = torch.where(is_ground, columns, length).sort(dim=1).values[:, :slots]
        ground_mask = columns < length
        positions = text_index.gather(1, columns.clamp_max(length - 1))
        ground_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], positions]  # [B, G, D]
        result.update(ground_mask=ground_mask, ground_hidden=ground_hidden,
                      box_pred=self.grounding.predict_box(ground_hidden))
        if proposals is not None:
            proposals = proposals.to(ground_hidden.dtype)
            result["match_logits"] = self.grounding.match_logits(ground_hidden, proposals, proposal_mask)
            result["refined_boxes"] = self.grounding.refine_box(ground_hidden[:, :, None], proposals[:, None])
        return result

    def _language_hidden(self, text_embeds: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None,
                         vision: VisionOutput, scene_index: Tensor, share_prefix: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Final LLM hidden states of every row, with the vision tokens of its scene before its text.

        Returns hidden `[B, T, D]`, targets `[B, T]` (the label each hidden state predicts,
        −100 = none) and text_index `[B, L]` (the hidden index of every input position).
        """
        decoder = decoder_of(self.llm)
        image_at = self._shared_image_column(input_ids, labels) if share_prefix else None
        if image_at is not None:
            # Prefix = the text before <image> (the same in every row) + the scene's vision tokens.
            prefix, prefix_mask = self._prefix_inputs(vision, text_embeds[:1, :image_at])
            hidden = run_shared_prefix(decoder, prefix, prefix_mask, text_embeds[:, image_at + 1:],
                                       attention_mask[:, image_at + 1:], scene_index)
            rows = input_ids.shape[0]
            if labels is None:
                targets = input_ids.new_full(hidden.shape[:2], -100)
            else:
                targets = torch.cat([labels[:, image_at + 1:], labels.new_full((rows, 1), -100)], dim=1)
            # Input position p > image_at sits at hidden index p − image_at; earlier ones map to 0.
            text_index = (torch.arange(input_ids.shape[1], device=input_ids.device) - image_at).clamp_min(0)
            return hidden, targets, text_index.expand(rows, -1)
        rows = vision.select(scene_index)
        spliced = splice_vision_tokens(text_embeds, input_ids, attention_mask, self.special_ids.image,
                                       rows.tokens, rows.mask, labels)
        hidden = decoder(inputs_embeds=spliced["inputs_embeds"], attention_mask=spliced["attention_mask"]).last_hidden_state
        if labels is None:
            targets = input_ids.new_full(hidden.shape[:2], -100)
        else:
            shifted = spliced["labels"][:, 1:]
            targets = torch.cat([shifted, shifted.new_full((shifted.shape[0], 1), -100)], dim=1)
        return hidden, targets, spliced["position_map"]

    def _shared_image_column(self, input_ids: Tensor, labels: Tensor | None) -> int | None:
        """The column of `<image>` when every row has it there, the same tokens before it, and no
        label up to it (so those positions can be one prefix per scene); else None."""
        is_image = input_ids == self.special_ids.image
        if not bool((is_image.sum(1) == 1).all()):
            return None  # splice_vision_tokens reports the malformed row
        column = int(is_image[0].float().argmax())
        if not bool(is_image[:, column].all()):
            return None
        if column and not bool((input_ids[:, :column] == input_ids[:1, :column]).all()):
            return None
        if labels is not None and bool((labels[:, : column + 1] != -100).any()):
            return None
        return column

    # ------------------------------------------------------------------ inference

    @staticmethod
    def _prefix_inputs(vision: VisionOutput, text_before: Tensor) -> tuple[Tensor, Tensor]:
        """Every scene's LLM prefix: the text before `<image>` (`[1, i, D]`, shared) then its vision
        tokens → (embeddings `[B_scene, i + N, D]`, mask `[B_scene, i + N]`, valid tokens left-packed)."""
        scenes = vision.tokens.shape[0]
        prefix = torch.cat([text_before.expand(scenes, -1, -1), vision.tokens.to(text_before.dtype)], dim=1)
        mask = torch.cat([vision.mask.new_ones(scenes, text_before.shape[1]), vision.mask], dim=1).long()
        return prefix, mask

    @torch.no_grad()
    def _vision_prefix(self, vision: VisionOutput, text_before: Tensor) -> tuple[DynamicCache, Tensor]:
        """One LLM pass over every scene's prefix (`text_before [1, i, D]` + its vision tokens):
        (key/value cache `[B_scene, ...]`, prefix mask `[B_scene, i + N]`)."""
        prefix, mask = self._prefix_inputs(vision, text_before)
        out = decoder_of(self.llm)(inputs_embeds=prefix, attention_mask=mask, use_cache=True)
        return out.past_key_values, mask

    @torch.no_grad()
    def _greedy(self, cache: DynamicCache, prefix_mask: Tensor, embeds: Tensor,
                max_new_tokens: int) -> tuple[list[int], list[Tensor]]:
        """Greedy decoding of one row: the prompt text after `<image>` (`embeds [1, L, D]`) is fed
        after a prefix cache of that row's scene (`prefix_mask [1, P]`, padding inside the prefix
        masked), then one token at a time. Returns the new token ids and the last-layer hidden
        state of every generated `<ground>` token (its hidden state is the box query)."""
        decoder, head = decoder_of(self.llm), self.llm.get_output_embeddings()
        embed_tokens = self.llm.get_input_embeddings()
        mask = prefix_mask.long()
        position = int(mask.sum())
        tokens: list[int] = []
        ground_hidden: list[Tensor] = []
        step = embeds
        while True:
            width = step.shape[1]
            mask = torch.cat([mask, mask.new_ones(1, width)], dim=1)
            positions = position + torch.arange(width, device=step.device)[None]
            hidden = decoder(inputs_embeds=step, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
            position += width
            if tokens and tokens[-1] == self.special_ids.ground:
                ground_hidden.append(hidden[0])
            if len(tokens) == max_new_tokens:
                break
            next_id = int(head(hidden)[0].argmax())
            if next_id == self.special_ids.eos:
                break
            tokens.append(next_id)
            step = embed_tokens(torch.tensor([[next_id]], device=embeds.device))
        return tokens, ground_hidden

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        prompts: list[str],
        tokenizer,
        max_new_tokens: int = 32,
        proposals: Tensor | str | None = None,
        object_boxes: Tensor | None = None,
        first_camera_center: Tensor | None = None,
        point_stride: int = 4,
        geometry: dict[str, Tensor] | None = None,
        vision: VisionState | None = None,
    ) -> list[GenerationResult]:
        """Answer `prompts` about videos and return text, boxes and geometry in one pass.

        One vision pass and one LLM pass over each scene's vision tokens serve all its prompts:
        every prompt continues from a copy of its scene's key/value cache.

        Args:
            images: `[B, S, 3, H, W]` in [0, 1]; B = len(prompts), or B = 1 shared by all prompts
                (None when `vision` is given).
            prompts: full prompts containing `<image>` (see `vidllm.tokenizer.build_prompt`), all
                with the same text before it.
            proposals: `[B, M, 6]` scene-frame proposals to score, or "own": the model's own
                (`VisionOutput.own_proposals`). Each `<ground>` then selects one (its best match
                score) and its box is that proposal refined (`refine_box`); when it selects "not
                among them", its box is the direct box head's. object_boxes `[B, 6]` for `<obj>`
                (one per scene, or `[len(prompts), 6]`: one per prompt).
            geometry: ground-truth geometry for the 3D patches (`encode_video`).
            first_camera_center: `[B, 3]` (or `[3]`) GT first camera centre in the axis-aligned
                ScanNet world; maps boxes to `boxes_world` (benchmarks' protocol).
            point_stride: pixel stride of the returned point cloud.
            vision: a `vision_state` of these videos (then `images` may be None and `geometry`
                must be): its vision pass, proposals, geometry and LLM prefix are reused.
        """
        was_training = self.training
        self.eval()
        try:
            batch = (vision.images if vision is not None else images).shape[0]
            if batch not in (1, len(prompts)):
                raise ValueError(f"images batch {batch} must be 1 or len(prompts) = {len(prompts)}")
            if vision is None:
                vision = self.vision_state(images, geometry=geometry)
            elif geometry is not None:
                raise ValueError("geometry belongs to the vision pass: give it to vision_state, not with vision=")
            elif images is not None and images.shape != vision.images.shape:
                raise ValueError(f"images {tuple(images.shape)} are not the videos of the vision state "
                                 f"{tuple(vision.images.shape)}")
            images = vision.images
            proposal_mask = None
            if isinstance(proposals, str):
                if proposals != "own":
                    raise ValueError(f"proposals must be a tensor or 'own', got {proposals!r}")
                if vision.proposals is None:
                    vision.proposals = vision.vision.own_proposals(self.config.grounding.max_proposals)
                proposals, proposal_mask = vision.proposals
            if point_stride not in vision.geometry:  # once per scene and stride, shared by its prompts
                vision.geometry[point_stride] = [
                    self._scene_geometry(images[b], vision.vision.recon, vision.vision.scene_rotation, b, point_stride)
                    for b in range(batch)]
            scene_geometry = vision.geometry[point_stride]
            encoded = [tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"].to(images.device)
                       for p in prompts]
            image_at = self._prompt_image_column(encoded)
            cache, prefix_mask = self._state_prefix(vision, encoded[0][:, :image_at])
            per_prompt_boxes = object_boxes is not None and object_boxes.shape[0] == len(prompts)
            llm_config = decoder_of(self.llm).config
            results = []
            for i, ids in enumerate(encoded):
                b = 0 if images.shape[0] == 1 else i
                boxes_in = None if object_boxes is None else object_boxes[i if per_prompt_boxes else b][None]
                suffix = self._text_embeddings(ids, boxes_in)[:, image_at + 1:]
                index = torch.tensor([b], device=images.device)
                tokens, hidden = self._greedy(select_cache(cache, index, llm_config),
                                              prefix_mask[b : b + 1], suffix, max_new_tokens)
                boxes = (self.grounding.predict_box(torch.stack(hidden)) if hidden
                         else images.new_zeros(0, 6)).float()
                match = None
                if proposals is not None and hidden:
                    queries = torch.stack(hidden)
                    props = proposals[b : b + 1].expand(len(hidden), -1, -1).to(queries.dtype)
                    valid = None if proposal_mask is None else proposal_mask[b : b + 1].expand(len(hidden), -1)
                    match = self.grounding.match_logits(queries, props, valid).float()
                    choice = match.argmax(-1)  # [n]; the last column = not among the proposals
                    selected = choice < props.shape[1]
                    chosen = props[torch.arange(len(hidden)), choice.clamp_max(props.shape[1] - 1)]
                    refined = self.grounding.refine_box(queries, chosen).float()
                    boxes = torch.where(selected[:, None], refined, boxes)
                boxes_world = None
                if first_camera_center is not None:
                    centre = first_camera_center if first_camera_center.dim() == 1 else first_camera_center[b]
                    boxes_world = torch.cat([scene_to_scannet_world(boxes[:, :3], centre.to(boxes)), boxes[:, 3:]], -1)
                results.append(GenerationResult(
                    text=tokenizer.decode(tokens, skip_special_tokens=True).strip(), token_ids=tokens,
                    boxes=boxes, boxes_world=boxes_world, match_logits=match,
                    proposals=None if proposals is None else _valid_rows(proposals[b], proposal_mask, b),
                    **scene_geometry[b],
                ))
            return results
        finally:
            self.train(was_training)

    @torch.no_grad()
    def vision_state(self, images: Tensor, geometry: dict[str, Tensor] | None = None) -> VisionState:
        """The vision pass of `generate` over `images [B, S, 3, H, W]` in [0, 1], to pass as
        `generate(..., vision=state)` for any number of later prompts about the same videos.
        `geometry` as in `encode_video`."""
        was_training = self.training
        self.eval()
        try:
            out = self.encode_video(images, geometry=geometry)
        finally:
            self.train(was_training)
        recon = {k: out.recon[k] for k in _GEOMETRY_KEYS}  # the rest (features, confidences) is not read again
        return VisionState(images, VisionOutput(recon, out.tokens, out.mask, out.xyz, out.voxel_mask,
                                                out.scene_rotation, out.objectness, out.proposal_boxes))

    # Distinct texts before <image> whose LLM prefix a state keeps (`build_prompt` has one: none).
    _KEPT_PREFIXES = 4

    def _state_prefix(self, state: VisionState, ids_before: Tensor) -> tuple[DynamicCache, Tensor]:
        """The LLM prefix (`_vision_prefix`) of `state` after the token ids `ids_before [1, i]`,
        computed once per distinct text. Callers copy rows out of the cache (`select_cache`)."""
        key = tuple(ids_before[0].tolist())
        if key not in state.prefixes:
            if len(state.prefixes) >= self._KEPT_PREFIXES:
                state.prefixes.pop(next(iter(state.prefixes)))
            before = self.llm.get_input_embeddings()(ids_before)
            state.prefixes[key] = self._vision_prefix(state.vision, before)
        return state.prefixes[key]

    def _prompt_image_column(self, encoded: list[Tensor]) -> int:
        """The `<image>` column shared by every prompt (ValueError naming the prompt otherwise)."""
        columns = []
        for i, ids in enumerate(encoded):
            where = (ids[0] == self.special_ids.image).nonzero().flatten()
            if where.numel() != 1:
                raise ValueError(f"prompt {i}: expected exactly one <image> token, found {where.numel()}")
            columns.append(int(where))
        if any(c != columns[0] or not torch.equal(ids[0, :c], encoded[0][0, :c]) for c, ids in zip(columns, encoded)):
            raise ValueError("prompts of one generate call must share the text before <image>")
        return columns[0]

    def _scene_geometry(self, frames: Tensor, recon: dict, rotation: Tensor, b: int, stride: int) -> dict:
        """Depth, camera-to-scene poses, intrinsics and a coloured point cloud of scene `b`, in the scene frame."""
        depth = recon["depth_metric_aligned"][b : b + 1].float()  # [1, S, H, W]
        extrinsics, intrinsics = recon["extrinsics"][b : b + 1].float(), recon["intrinsics"][b : b + 1].float()
        rot = rotation[b].float()
        to_scene = torch.eye(4, device=depth.device, dtype=depth.dtype)
        to_scene[:3, :3] = rot
        camera_to_world = to_scene @ se3_inverse(extrinsics[0])  # [S, 4, 4]
        points = unproject_depth(depth, extrinsics, intrinsics)[0] @ rot.T  # [S, H, W, 3]
        points, colors = points[:, ::stride, ::stride], frames.float().permute(0, 2, 3, 1)[:, ::stride, ::stride]
        keep = (depth[0, :, ::stride, ::stride] > 0) & torch.isfinite(points).all(-1)
        return {"depth": depth[0], "camera_to_world": camera_to_world, "intrinsics": intrinsics[0],
                "points": points[keep],
                "colors": colors[keep], "scale": float(recon["scale"][b])}


def _valid_rows(proposals: Tensor, mask: Tensor | None, b: int) -> Tensor:
    return proposals.float() if mask is None else proposals[mask[b]].float()
