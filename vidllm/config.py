"""One typed config tree for the whole workflow, with named recipes.

`load_config(recipe="tiny", yaml_path="params.yaml", overrides=["model.cta.num_bridge_tokens=8"])`
builds a `VidLLMConfig`. YAML files, CLI dotted overrides and Prefect parameters are all
parsed into this tree; unknown keys and bad values raise `ConfigError` naming the key.

Each section belongs to one part of the package; add fields to your own section only.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class _Section(BaseModel):
    # Unknown keys are errors, and assignments are validated too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data


class SynthConfig(_Section):
    """Procedural ScanNet-format scenes (vidllm.data.synthetic.generate)."""

    scenes: int = Field(4, ge=1)
    frames: int = Field(32, ge=2)
    width: int = Field(320, ge=16)
    height: int = Field(240, ge=16)
    depth_width: int | None = Field(None, ge=16, description="None = the colour width")
    depth_height: int | None = Field(None, ge=16, description="None = the colour height")
    min_objects: int = Field(3, ge=1)
    max_objects: int = Field(7, ge=1)
    seed: int = 0
    val_fraction: float = Field(0.25, ge=0, lt=1, description="share of scenes in the val split")
    invalid_pose_fraction: float = Field(0.0, ge=0, lt=1, description="frames stored with -inf poses")
    mesh_spacing: float = Field(0.1, gt=0, description="max edge length of the written mesh, metres")
    clip_frames: int | None = Field(
        None, ge=1,
        description="every kept object is visible within this many frames spread uniformly over the valid "
                    "frames (the clip `prepare` samples); None = data.prep.frames inside a full config, "
                    "all valid frames for a bare SynthConfig",
    )

    @model_validator(mode="after")
    def _check_and_fill(self) -> SynthConfig:
        if self.max_objects < self.min_objects:
            raise ValueError(f"max_objects ({self.max_objects}) is below min_objects ({self.min_objects})")
        # Conditional assignments: each re-runs this validator once (validate_assignment).
        if self.depth_width is None:
            self.depth_width = self.width
        if self.depth_height is None:
            self.depth_height = self.height
        return self


class PrepConfig(_Section):
    """Frame sampling and sharding (vidllm/data/frames.py, vidllm/data/prepare.py)."""

    frames: int = Field(32, ge=1)
    short_side: int = Field(518, ge=14)
    patch_multiple: int = Field(14, ge=1)
    jpeg_quality: int = Field(95, ge=1, le=100)
    shard_max_bytes: int = Field(1_000_000_000, ge=1024)
    workers: int = Field(0, ge=0, description="0 = let Ray decide")


class DataConfig(_Section):
    root: str = "data/scannet"
    annotations: str = "data/annotations"
    shards: str = "data/shards"
    synth: SynthConfig = Field(default_factory=SynthConfig)
    prep: PrepConfig = Field(default_factory=PrepConfig)

    @model_validator(mode="after")
    def _clip_follows_prep(self) -> DataConfig:
        # Synthetic objects must show up in the clip that `prepare` will actually sample.
        # A copy, so a SynthConfig passed in by the caller is left as it was.
        if self.synth.clip_frames is None:
            self.synth = self.synth.model_copy(update={"clip_frames": self.prep.frames})
        return self


# ----------------------------------------------------------------------------- model


class EncoderConfig(_Section):
    """Shared DINOv2 encoder. `pretrained` is a local path or hub id; None = random init from the fields."""

    pretrained: str | None = None
    registers: int = Field(4, ge=0, description=">0 uses Dinov2WithRegistersModel; 4 = VGGT's dinov2_vitl14_reg patch "
                           "embed, so a VGGT checkpoint loads (`vidllm init --vggt`)")
    hidden_size: int = Field(1024, ge=8)
    num_layers: int = Field(24, ge=1)
    num_heads: int = Field(16, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    patch_size: int = Field(14, ge=1)
    image_size: int = Field(518, ge=14)


class CTAConfig(_Section):
    """Cross-Task Adapter (eq. 1-2) and its ablation variants."""

    variant: Literal["bridge", "none", "concat_sa", "cross_attn"] = "bridge"
    num_bridge_tokens: int = Field(16, ge=1)
    num_heads: int = Field(8, ge=1)
    mlp_ratio: int = Field(4, ge=1)


class AggregatorConfig(_Section):
    """Global-Frame Attention backbone (VGGT aggregator)."""

    embed_dim: int = Field(1024, ge=8)
    depth: int = Field(24, ge=1, description="number of frame/global block pairs")
    num_heads: int = Field(16, ge=1)
    mlp_ratio: float = 4.0
    num_register_tokens: int = Field(4, ge=0)
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    intermediate_layers: list[int] = [4, 11, 17, 23]
    gradient_checkpointing: bool = Field(False, description="recompute blocks in backward (training memory)")


class HeadsConfig(_Section):
    camera_trunk_depth: int = Field(4, ge=1)
    camera_iters: int = Field(4, ge=1)
    dpt_features: int = Field(256, ge=8)
    dpt_out_channels: list[int] = [256, 512, 1024, 1024]
    point_head: bool = True
    camera_num_heads: int = Field(16, ge=1)
    dpt_frames_chunk: int = Field(8, ge=1, description="frames decoded at once by the DPT heads (memory)")


class MetricDepthConfig(_Section):
    enabled: bool = Field(True, description="False = the 'w/o MD' ablation: no metric depth model, no real-scale "
                                            "alignment, no L_MD; 3D patches use VGGT's relative depth and cameras")
    encoder_layers: list[int] | None = Field(
        None, description="the four encoder layers (0-based) whose patch tokens feed the DPT decoder's four levels, "
                          "shallow to deep; None = the last layer of each quarter of the encoder (24 layers: "
                          "5, 11, 17, 23, as DPT reads ViT-L)")
    num_bins: int = Field(64, ge=2)
    min_depth: float = Field(0.1, gt=0)
    max_depth: float = Field(10.0, gt=0)
    features: int = Field(256, ge=8)


class AlignmentConfig(_Section):
    """Real-scale alignment of the relative reconstruction to the metric depth model (§3.2)."""

    enabled: bool = Field(True, description="False (with metric depth on) = the 'MD w/o alignment' ablation: the "
                                            "metric depth model's depth is used directly for the 3D patches")
    images_per_scene: int = Field(16, ge=1, description="images whose per-image scales give the scene's median; "
                                                        "drawn at random in training, evenly spaced at evaluation")
    seed: int = 0


class Patches3DConfig(_Section):
    """Voxel pooling of the 3D patch tokens handed to the LLM."""

    voxel_size: float = Field(0.2, gt=0, description="metres")
    max_tokens: int = Field(2048, ge=1, description="cap: more occupied voxels → the voxel size grows by √2, up "
                                                    "to 8 times, then the best-supported voxels are kept")
    min_tokens: int = Field(256, ge=1, description="fewer occupied voxels (degenerate or small geometry) "
                                                   "→ the voxel size is halved, up to 8 times")

    @model_validator(mode="after")
    def _min_below_max(self) -> Patches3DConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self


class LLMConfig(_Section):
    """Causal LM. `pretrained` = local path or id; otherwise built from the inline architecture."""

    pretrained: str | None = None
    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(3584, ge=8)
    intermediate_size: int = Field(18944, ge=8)
    num_layers: int = Field(28, ge=1)
    num_heads: int = Field(28, ge=1)
    num_kv_heads: int = Field(4, ge=1)
    vocab_size: int = Field(152064, ge=16)
    max_position_embeddings: int = Field(32768, ge=16)
    rope_theta: float = 1_000_000.0
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    lora_r: int = Field(16, ge=0, description="0 disables LoRA (full fine-tune)")
    lora_alpha: int = 32
    lora_dropout: float = Field(0.05, ge=0, le=1)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class InitConfig(_Section):
    """Pretrained parts a new model is assembled from (`vidllm.assemble`), each optional.

    The DINOv2 encoder and the LLM (with its tokenizer) come from `model.encoder.pretrained` and
    `model.llm.pretrained`. Encoder precedence: a Stage-1 directory, then DINOv2
    (`model.encoder.pretrained`), then the VGGT checkpoint's DINO patch embed."""

    stage1: str | None = Field(None, description="Stage-1 directory (`vidllm train --stage 1`): encoder + CTA")
    vggt: str | None = Field(None, description="VGGT checkpoint (.safetensors or a weights-only torch file): the "
                                               "reconstruction branch (aggregator, camera, depth and point heads), "
                                               "and its DINO patch embed as the encoder when no other is named")


class GroundingConfig(_Section):
    max_proposals: int = Field(64, ge=1, description="proposals a <ground> chooses among (training and inference)")
    hidden: int = Field(256, ge=8)
    proposal_jitter: float = Field(0.1, ge=0, description="training: ground-truth proposals are jittered (centre "
                                                          "N(0, j) m, sizes x exp(N(0, j))) so selection and "
                                                          "refinement learn on imperfect boxes, as the model's own")


class ModelConfig(_Section):
    encoder: EncoderConfig = EncoderConfig()
    cta: CTAConfig = CTAConfig()
    aggregator: AggregatorConfig = AggregatorConfig()
    heads: HeadsConfig = HeadsConfig()
    metric_depth: MetricDepthConfig = MetricDepthConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    patches3d: Patches3DConfig = Patches3DConfig()
    llm: LLMConfig = LLMConfig()
    grounding: GroundingConfig = GroundingConfig()
    init: InitConfig = InitConfig()
    frames: int = Field(32, ge=1)
    vision_tokens: bool = Field(True, description="False = the blind control: the LLM reads the <image> token's own "
                                                  "embedding instead of the scene's 3D-patch tokens (the vision "
                                                  "stack still trains its reconstruction and proposals)")
    patch_geometry: Literal["predicted", "ground_truth"] = Field(
        "predicted", description="ground_truth = the upper-bound ablation: 3D patches are placed with ground-truth "
                                 "depth and poses (training and evaluation) instead of the reconstruction")
    # ScanNet's 1296x968 colour frames, short side resized to 518 and the long side cropped to a
    # multiple of 14: 37 x 49 patches.
    image_size: list[int] = [518, 686]

    @model_validator(mode="after")
    def _metric_depth_layers_exist(self) -> ModelConfig:
        layers = self.metric_depth.encoder_layers
        if layers is not None:
            if len(layers) != 4:
                raise ValueError(f"metric_depth.encoder_layers needs 4 layers (one per DPT level), got {layers}")
            depth = self.encoder.num_layers
            if self.encoder.pretrained is None and any(not 0 <= i < depth for i in layers):
                raise ValueError(f"metric_depth.encoder_layers {layers} must lie in 0..{depth - 1} "
                                 f"(encoder.num_layers = {depth})")
        return self


# ----------------------------------------------------------------------------- train / eval


class StageConfig(_Section):
    # strict ints: `steps: true` must not become 1; lr must be finite (inf / nan are refused).
    steps: int = Field(1000, ge=1, strict=True)
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False)
    warmup_steps: int = Field(100, ge=0, strict=True)
    batch_size: int = Field(1, ge=1, strict=True)
    checkpoint_every: int = Field(500, ge=1, strict=True)
    log_every: int = Field(10, ge=1, strict=True)
    lr_scale: dict[str, float] = Field(default_factory=dict, description=(
        "lr factors by module: a parameter whose dotted name has a component equal to a key (e.g. "
        "{encoder: 0.1}: the pretrained encoder fine-tuned at a tenth of the lr) gets lr x factor; the rest x 1"))

    @field_validator("lr_scale")
    @classmethod
    def _finite_positive_scales(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"lr_scale factors must be finite and > 0, got {bad}")
        return value


class TrainConfig(_Section):
    stage1: StageConfig = StageConfig()
    stage2: StageConfig = StageConfig()
    distill_lambda: float = Field(0.1, ge=0, description="λ of the structural (relational) loss L_sc, eq. 5; 0 = "
                                                         "the 'w/o RelaLoss' ablation")
    distill_teachers: Literal["both", "geometry", "semantic"] = Field(
        "both", description="Stage-1 teachers; one teacher = the 'One-Teacher' ablation (that teacher's feature "
                            "loss only: L_sc relates the two streams, so it needs both)")
    single_stage: bool = Field(False, description="the 'Single-stage' ablation: no Stage 1; Stage 2 trains every "
                                                  "module from its initialisation (a Stage-1 directory is refused)")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 = bf16 autocast on any device "
                            "(CPU included); the reconstruction heads always run in fp32")
    compile: bool = Field(False, description="torch.compile the encoder, CTA, reconstruction branch and LLM body")
    compile_backend: str = Field("inductor", description="torch.compile backend (e.g. inductor, aot_eager)")
    share_vision_prefix: bool = Field(
        True, description="stage 2: the LLM runs each scene's vision tokens once and its instructions attend to "
                          "that prefix; False splices the vision tokens into every instruction row (same loss)")
    loss_weights: dict[str, float | str] = Field(
        default_factory=dict, description="stage-2 loss weights over the defaults of "
                                          "vidllm.losses.Stage2LossWeights, e.g. {point: 0} (the point head is "
                                          "then not run)")
    num_workers: int = Field(1, ge=1)
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="multi-worker Ray Train: ddp = DistributedDataParallel; fsdp = FSDP2 (fully_shard: "
                           "encoder/aggregator blocks, then the rest as the root unit); checkpoints are full either way")
    storage_path: str = "runs"
    seed: int = 0
    max_failures: int = Field(1, ge=0, description="Ray Train restarts from the last checkpoint after a worker failure")
    data_cpus: float = Field(0.0, ge=0, description="CPUs each Ray Data read/decode task reserves under Ray Train. 0 "
                                                    "shares the workers' CPUs (a 2-CPU machine running 2 workers has "
                                                    "none left, and reserved tasks would wait forever); ≥ 1 on "
                                                    "clusters with CPUs to spare beside the workers")
    checkpoints_to_keep: int = Field(2, ge=1)
    distill_sc_tokens: int = Field(256, ge=1, description="token positions sampled per scene for L_sc (eq. 7)")
    instructions_per_scene: int = Field(2, ge=1, description="stage-2 instructions drawn per scene clip per step")
    max_text_tokens: int = Field(128, ge=8, description="prompt + answer tokens per instruction (longer are cut)")
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="stage-2 task mix, {task: weight} (e.g. {scanqa: 2, scanrefer: 1}): each "
                                          "instruction of a scene is drawn from a task picked in proportion to its "
                                          "weight (tasks not named weigh 1; 0 = never trained); empty = a uniform "
                                          "draw over the scene's records")


    @model_validator(mode="after")
    def _known_loss_weights(self) -> TrainConfig:
        from vidllm.data.scannet.annotations import trained_tasks
        from vidllm.losses.stage2 import Stage2LossWeights

        known_tasks = trained_tasks()
        for task, weight in self.task_weights.items():
            if task not in known_tasks:
                raise ValueError(f"unknown task '{task}' in task_weights (known: {', '.join(known_tasks)})")
            if not weight >= 0 or weight == float("inf"):
                raise ValueError(f"task_weights.{task} must be a finite weight >= 0, got {weight}")

        Stage2LossWeights.from_mapping(self.loss_weights)  # unknown names raise, naming them
        return self


class TeacherPretrainConfig(_Section):
    """Miniature VGGT and CLIP trained on a synthetic corpus (`vidllm pretrain-teachers`,
    vidllm.pretrain), for runs without the real pretrained weights. The corpus uses seed
    data.synth.seed + seed_offset, so its scenes never coincide with the benchmark's."""

    scenes: int = Field(64, ge=2, description="synthetic scenes; the last ~20% (at least one) are held out for metrics")
    frames: int = Field(32, ge=2, description="frames rendered per scene (clips of model.frames are drawn from them)")
    vggt_steps: int = Field(5000, ge=1, description="optimiser steps of the miniature VGGT")
    clip_steps: int = Field(2000, ge=1, description="optimiser steps of the miniature CLIP vision tower")
    dino_steps: int = Field(0, ge=0, description=(
        "steps of the miniature DINOv2 stage before the VGGT steps: the encoder first learns per-patch object "
        "class and colour, as VGGT's patch embed starts from DINOv2 (0 = the encoder starts from random init)"))
    vggt_encoder_lr_scale: float = Field(1.0, gt=0, le=1, description=(
        "the encoder's lr ÷ teachers.pretrain.lr in the VGGT steps when it starts from the DINOv2 stage "
        "(below 1 keeps more of its semantics)"))
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(2, ge=1, description="clips per VGGT step; CLIP steps use batch_size x model.frames frames")
    clip_frames: int | None = Field(None, ge=2, description="frames per VGGT training clip; None = model.frames")
    seed_offset: int = Field(1_000_003, ge=1, description="added to data.synth.seed for the pretraining scenes")
    probe_steps: int = Field(200, ge=1, description="steps of the linear probes (trained CLIP vs random-init control)")
    class_balance: float = Field(0.0, ge=0, le=1, description=(
        "CLIP class-loss weights ∝ class frequency^-x over the training patches (0 = plain cross-entropy, "
        "1 = every class weighs as much); walls and floor are most patches"))
    log_every: int = Field(50, ge=1)


class TeacherConfig(_Section):
    """Stage-1 teachers: local `from_pretrained` directories (or hub ids when online).

    geometry = VGGT's DINO patch embed saved as a Dinov2(WithRegisters)Model; semantic = a CLIP
    vision tower (CLIPVisionModel). `random_*` size the random teachers that `vidllm teachers
    --init-random DIR` writes for the tiny/demo recipes (no downloads).
    """

    geometry: str | None = None
    semantic: str | None = None
    semantic_image_size: int = Field(336, ge=14, description="CLIP input side (square resize)")
    dtype: Literal["float16"] = "float16"
    frames_per_batch: int = Field(16, ge=1, description="frames per teacher forward pass")
    random_hidden_size: int = Field(1024, ge=8)
    random_num_layers: int = Field(2, ge=1)
    random_num_heads: int = Field(4, ge=1)
    random_patch_size: int = Field(14, ge=1)
    pretrain: TeacherPretrainConfig = TeacherPretrainConfig()
    miniatures: bool = Field(False, description="`vidllm ablate` first trains (or reuses) the miniature teachers "
                                                "(`vidllm pretrain-teachers`, sized by teachers.pretrain) and uses "
                                                "them wherever teachers.geometry, teachers.semantic or "
                                                "model.init.vggt is unset")


class EvalConfig(_Section):
    protocol: Literal["P0", "P1", "P2"] = Field(
        "P1", description="evaluation protocol (vidllm.eval.protocols): P0 = ground-truth geometry given; P1 = "
                          "predicted geometry at the GT first camera; P2 = predicted geometry, Umeyama Sim(3) of the "
                          "camera centres. The former names first_camera_gt / umeyama_sim3 mean P1 / P2")
    also_score_under: list[Literal["P0", "P1", "P2"]] = Field(
        ["P2"], description="protocols the same predictions are also scored under, without predicting again (P1 "
                            "predictions rescore under P2 and back; text answers are unchanged); recorded under "
                            "metrics.json by_protocol, so the report shows them side by side. Skipped where the "
                            "model's inputs depended on the protocol (P0, Scan2Cap's prompted box)")
    blind_control: bool = Field(False, description="train-full also trains the blind control (Stage 2 with no vision "
                                                   "tokens, same init, data and steps) and writes RUN_DIR/ablation.json "
                                                   "with both rows")
    proposals: Literal["own", "gt"] = Field(
        "own", description="grounding benchmarks choose among: own = the model's proposals (from video alone); "
                           "gt = the ground-truth instances (a separately labelled protocol)")
    iou_thresholds: list[float] = [0.25, 0.5]
    max_new_tokens: int = Field(32, ge=1)

    @field_validator("protocol", mode="before")
    @classmethod
    def _former_protocol_names(cls, value: object) -> object:
        from vidllm.eval.protocols import LEGACY_NAMES

        return LEGACY_NAMES.get(value, value) if isinstance(value, str) else value


class VidLLMConfig(_Section):
    recipe: str = "paper"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    teachers: TeacherConfig = TeacherConfig()
    eval: EvalConfig = EvalConfig()


# ----------------------------------------------------------------------------- recipes

# Recipes are plain nested dicts applied over the defaults (which are the paper's values).
# A little duplication here beats a recipe framework.
_TINY: dict[str, Any] = {
    "data": {
        "synth": {"scenes": 2, "frames": 8, "width": 80, "height": 60},
        "prep": {"frames": 4, "short_side": 56, "shard_max_bytes": 2_000_000},
    },
    "model": {
        "frames": 4,
        "image_size": [56, 56],
        "encoder": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "image_size": 56},
        "cta": {"num_bridge_tokens": 4, "num_heads": 2},
        "aggregator": {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_register_tokens": 2,
                        "intermediate_layers": [0, 1, 1, 1]},
        "heads": {"camera_trunk_depth": 1, "camera_iters": 2, "dpt_features": 16,
                  "dpt_out_channels": [16, 16, 32, 32]},
        "metric_depth": {"num_bins": 16, "features": 16},
        "alignment": {"images_per_scene": 4},
        "patches3d": {"max_tokens": 64, "min_tokens": 16},
        "llm": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
                "num_kv_heads": 2, "vocab_size": 512, "max_position_embeddings": 1024, "lora_r": 4,
                "lora_alpha": 8},
        "grounding": {"hidden": 32, "max_proposals": 16},
    },
    "train": {
        "stage1": {"steps": 4, "warmup_steps": 1, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1},
        "stage2": {"steps": 4, "warmup_steps": 1, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1},
    },
    "teachers": {"semantic_image_size": 56, "random_hidden_size": 32, "random_num_layers": 1, "random_num_heads": 2,
                 "pretrain": {"scenes": 3, "frames": 8, "vggt_steps": 12, "clip_steps": 40, "dino_steps": 20, "lr": 2e-3,
                              "batch_size": 1, "probe_steps": 60, "log_every": 10}},
    "eval": {"max_new_tokens": 8},
}

_DEMO: dict[str, Any] = {
    "data": {
        "synth": {"scenes": 6, "frames": 24, "width": 160, "height": 120},
        "prep": {"frames": 8, "short_side": 112, "shard_max_bytes": 50_000_000},
    },
    "model": {
        "frames": 8,
        "image_size": [112, 140],
        "encoder": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "image_size": 112},
        "cta": {"num_bridge_tokens": 8, "num_heads": 4},
        "aggregator": {"embed_dim": 64, "depth": 2, "num_heads": 4, "num_register_tokens": 2,
                        "intermediate_layers": [0, 1, 1, 1]},
        "heads": {"camera_trunk_depth": 1, "camera_iters": 2, "dpt_features": 32,
                  "dpt_out_channels": [32, 32, 64, 64]},
        "metric_depth": {"num_bins": 32, "features": 32},
        "alignment": {"images_per_scene": 8},
        "patches3d": {"max_tokens": 256, "min_tokens": 64},
        "llm": {"hidden_size": 128, "intermediate_size": 256, "num_layers": 2, "num_heads": 4,
                # The demo's LLM is random-init: it trains in full (LoRA adapts a *pretrained*
                # LLM; on a random one its rank-8 updates did not learn to answer in CPU minutes).
                "num_kv_heads": 2, "vocab_size": 1024, "max_position_embeddings": 2048, "lora_r": 0,
                "lora_alpha": 16},
        "grounding": {"hidden": 64, "max_proposals": 32},
    },
    "train": {
        "stage1": {"steps": 60, "warmup_steps": 5, "lr": 5e-4, "checkpoint_every": 20, "log_every": 5},
        # Every instruction of a scene per vision pass: the clips cost most of a step, and with the
        # shared vision prefix each extra text row costs little (benchmarks/stage2_step.py).
        "stage2": {"steps": 160, "warmup_steps": 10, "lr": 1e-3, "checkpoint_every": 40, "log_every": 5,
                   "batch_size": 2},
        "instructions_per_scene": 64,
        # Nothing downstream reads the point map (3D patches use depth + cameras), so the demo does
        # not train the point head and skips it; the paper recipe trains it (VGGT's loss).
        "loss_weights": {"point": 0.0},
    },
    "teachers": {"semantic_image_size": 112, "random_hidden_size": 64, "random_num_layers": 1, "random_num_heads": 4,
                 "pretrain": {"scenes": 10, "frames": 16, "vggt_steps": 120, "clip_steps": 150, "lr": 1e-3,
                              "batch_size": 2, "clip_frames": 4, "probe_steps": 100, "log_every": 20}},
    "eval": {"max_new_tokens": 16},
}



def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The demo's models on enough scenes to learn from: `vidllm ablate` / benchmarks/learning.py.
# Scenes are split by scene (val scenes are never trained on); ~0.1 s to generate each.
_LEARNING: dict[str, Any] = _merge(_DEMO, {
    "data": {"synth": {"scenes": 200, "val_fraction": 0.12}},
    # Every occupied 0.2 m voxel reaches the LLM (8 frames x 80 patches; ~540 voxels per scene): the
    # demo's cap of 256 coarsens them to about 0.57 m. Stage-2 step time is unchanged (the vision pass
    # dominates; benchmarks/RESULTS.md).
    "model": {"patches3d": {"max_tokens": 640}},
    # Stage 1 long enough for the encoder to take up the miniature teachers' semantics.
    "train": {"stage1": {"steps": 150, "checkpoint_every": 50},
              # The pretrained encoder at a tenth of the lr keeps more of its class signal (per-patch
              # probe 0.159 vs 0.120 after Stage 2; QA EM 32.7 vs 31.3; benchmarks/RESULTS.md).
              "stage2": {"steps": 400, "warmup_steps": 20, "checkpoint_every": 100, "log_every": 20,
                         "lr_scale": {"encoder": 0.1}},
              # A scene's instructions share one vision prefix, so each extra text row costs little
              # beside the clip's vision pass (benchmarks/stage2_step.py).
              "instructions_per_scene": 32,
              # The mix a step trains on, whatever each benchmark's record count: the scored tasks first.
              "task_weights": {"scanqa": 3.0, "scanrefer": 2.0, "multi3drefer": 1.0, "scan2cap": 1.0,
                               "sqa3d": 0.5, "nr3d": 0.5, "sr3d": 0.5}},
    # Pretrained parts, in miniature: the paper composes pretrained VGGT (whose patch embed starts
    # from DINOv2), DINOv2 and CLIP. Object class per patch needs many scenes, a class-balanced
    # loss and depth (held-out balanced furniture accuracy, chance 0.09: CLIP 1x64 0.31 at 300
    # scenes, 0.29 at 1000; 2x64 with 6000 steps 0.39 at 1000), and the encoder keeps its DINOv2
    # semantics through the VGGT steps only at a tenth of the lr (0.34 vs 0.22; 0.37 before them).
    "teachers": {"miniatures": True, "random_num_layers": 2,
                 "pretrain": {"scenes": 1000, "clip_steps": 6000, "dino_steps": 6000, "vggt_encoder_lr_scale": 0.1,
                              "class_balance": 1.0}},
})

RECIPES: dict[str, dict[str, Any]] = {"paper": {}, "tiny": _TINY, "demo": _DEMO, "learning": _LEARNING}


def _check_keys(tree: dict[str, Any], model: type[BaseModel], prefix: str = "") -> None:
    """Reject unknown keys with the full dotted name (pydantic alone reports it less clearly)."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        field = model.model_fields.get(key)
        if field is None:
            known = ", ".join(sorted(model.model_fields))
            raise ConfigError(f"unknown config key '{dotted}' (known here: {known})")
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_keys(value, sub, dotted + ".")


def _parse_scalar(text: str) -> Any:
    # YAML gives ints, floats, bools, null and lists ("[4, 8]") the way users expect.
    return yaml.safe_load(text) if text.strip() else ""


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """`["model.cta.num_bridge_tokens=8", "train.stage1.lr=1e-3"]` → nested dict."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key segment")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = _parse_scalar(value)
    return tree


def build_config(tree: dict[str, Any]) -> VidLLMConfig:
    """Validate a nested dict into the config tree; errors name the dotted key."""
    _check_keys(tree, VidLLMConfig)
    try:
        return VidLLMConfig.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"'{loc}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid config value " + "; ".join(problems)) from None


def load_config(
    recipe: str = "tiny",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    params: dict[str, Any] | None = None,
) -> VidLLMConfig:
    """Recipe defaults ← YAML file ← `params` dict (e.g. Prefect parameters) ← dotted CLI overrides."""
    tree: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = _merge(tree, loaded)
    tree = _merge(tree, params or {})
    tree = _merge(tree, parse_overrides(overrides))
    name = tree.pop("recipe", recipe) or recipe
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    merged = _merge(RECIPES[name], tree)
    merged["recipe"] = name
    return build_config(merged)


def add_config_options(parser: argparse.ArgumentParser, *, recipe: str = "paper", recipe_help: str | None = None,
                       config_help: str = "config file (e.g. params.yaml) over the recipe",
                       set_help: str = "dotted config override, repeatable", set_aliases: tuple[str, ...] = ()) -> None:
    """`--recipe NAME`, `--config YAML` and `--set KEY=VALUE` (repeatable, into `args.overrides`; `set_aliases`
    are more names for it): how every command line takes its config (`config_from_args`). Each command words
    the help for what it reads from the config."""
    parser.add_argument("--recipe", default=recipe,
                        help=recipe_help or f"config recipe: tiny, demo or paper (default: {recipe})")
    parser.add_argument("--config", default=None, metavar="YAML", help=config_help)
    parser.add_argument("--set", *set_aliases, dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=set_help)


def config_from_args(args: argparse.Namespace, extra_overrides: list[str] | None = None) -> VidLLMConfig:
    """The config of `add_config_options`' arguments; `extra_overrides` (a command's own flags) win over --set."""
    return load_config(args.recipe, args.config, [*args.overrides, *(extra_overrides or [])])


def digest(*parts: Any) -> str:
    """sha256 of JSON-encoded parts (pydantic models as their JSON dump): what a reusable output was made from."""
    import hashlib
    import json

    encoded = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(encoded, sort_keys=True, default=str).encode()).hexdigest()


def config_to_yaml(cfg: VidLLMConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
