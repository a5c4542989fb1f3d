"""Paper-style report of a run directory (layout in vidllm.eval.run_dir): markdown, HTML and PNG plots.

Tables follow the paper: 3D QA (Tab. 1), dense captioning (Tab. 2), grounding (Tab. 3, 4),
joint reconstruction–reasoning with time per scene (Tab. 5), ablations (Tab. 6), pose, depth
and reconstruction (Tab. 7–9). Missing benchmarks show "—". Every table says which evaluation
protocol produced it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vidllm.errors import DataError
from vidllm.eval import run_dir as rd
from vidllm.eval.predictions import atomic_write_text, read_meta

# Plot sizes in inches at PLOT_DPI; the PNGs are exactly these × dpi pixels.
PLOT_DPI = 100
LOSS_PLOT_SIZE = (9.0, 4.5)
DEPTH_PLOT_SIZE = (12.0, 6.0)
TOPDOWN_PLOT_SIZE = (8.0, 8.0)
MAX_DEPTH_FRAMES = 4
MAX_TOPDOWN_POINTS = 60_000

# The paper's own Vid-LLM rows (real ScanNet data), shown under ours for comparison. Tables 7 and 8
# are on other datasets (Co3Dv2, NYU-v2).
PAPER = "Vid-LLM (paper)"
PAPER_ROWS: dict[str, list[str]] = {
    "qa": [PAPER, "101.9", "15.8", "18.3", "49.5", "27.6", "57.3"],
    "scan2cap": [PAPER, "81.5", "40.9", "28.7", "61.8"],
    "grounding": [PAPER, "63.2", "56.4", "—", "—", "61.6", "56.1"],
    "referit3d": [PAPER, "65.4", "—", "57.9", "61.9", "—", "77.8", "—", "72.2", "63.1", "—"],
    "joint": [PAPER, "0.582", "45.7", "53.2", "59.8", "1.6"],
    "pose": [PAPER + " (Co3Dv2)", "96.8", "93.4", "88.5"],
    "depth": [PAPER + " (NYU-v2)", "0.987", "0.025", "0.109", "0.010"],
    "recon": [PAPER, "0.071", "0.042", "0.634", "0.885", "0.582"],
}

# Tables 5 and 6 summarise a benchmark by "the mean of the metrics for each benchmark" (paper §4.1):
# Scan2Cap 53.2 = mean(81.5, 40.9, 28.7, 61.8), ScanRefer 59.8 = mean(63.2, 56.4). The paper does not
# list ScanQA's; we take its five Table-1 metrics.
SUMMARY_METRICS: dict[str, tuple[str, ...]] = {
    "scanqa": ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "EM@1"),
    "scan2cap": ("CIDEr@0.5", "BLEU-4@0.5", "METEOR@0.5", "ROUGE-L@0.5"),
    "scanrefer": ("Acc@0.25", "Acc@0.5"),
}

Block = tuple[str, Any]  # ("h2", text) | ("p", text) | ("table", (header, rows)) | ("img", (path, alt))


@dataclass
class Report:
    markdown: Path
    html: Path
    plots: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- metric access


def _metric(metrics: dict[str, Any], benchmark: str, name: str, group: str | None = None) -> float | None:
    result = metrics.get(benchmark)
    if not isinstance(result, dict):
        return None
    source = result.get("subgroups", {}).get(group, {}) if group else result.get("metrics", {})
    value = source.get(name) if isinstance(source, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value * scale:.{digits}f}"


def _pct(metrics: dict[str, Any], benchmark: str, name: str, group: str | None = None) -> str:
    return _fmt(_metric(metrics, benchmark, name, group))


def _raw(metrics: dict[str, Any], benchmark: str, name: str, digits: int = 3) -> str:
    return _fmt(_metric(metrics, benchmark, name), 1.0, digits)


def _summary(metrics: dict[str, Any], benchmark: str) -> str:
    """Mean of the benchmark's SUMMARY_METRICS in percent; "—" unless all of them were scored."""
    values = [_metric(metrics, benchmark, name) for name in SUMMARY_METRICS[benchmark]]
    return "—" if any(v is None for v in values) else _fmt(float(np.mean(values)))


def _protocols(metrics: dict[str, Any], benchmarks: Sequence[str]) -> str:
    found = sorted({str(metrics[b].get("protocol", "unspecified")) for b in benchmarks
                    if isinstance(metrics.get(b), dict)})
    return ", ".join(found) if found else "no results"


# ----------------------------------------------------------------------------- tables


def _tables(metrics: dict[str, Any], seconds_per_scene: float | None) -> list[Block]:
    m = metrics
    blocks: list[Block] = []

    def table(title: str, benchmarks: Sequence[str], header: list[str], rows: list[list[str]], note: str = "") -> None:
        blocks.append(("h2", title))
        blocks.append(("p", f"Evaluation protocol: {_protocols(m, benchmarks)}." + (f" {note}" if note else "")))
        blocks.append(("table", (header, rows)))

    table("Table 1 — 3D question answering (ScanQA, SQA3D)", ["scanqa", "sqa3d"],
          ["Method", "ScanQA C", "B-4", "M", "R", "EM@1", "SQA3D EM@1"],
          [["Vid-LLM (this run)", *(_pct(m, "scanqa", k) for k in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "EM@1")),
            _pct(m, "sqa3d", "EM@1")], PAPER_ROWS["qa"]],
          _qa_note(m))
    sqa_types = ("what", "is", "how", "can", "which", "others")
    if "sqa3d" in m:
        blocks.append(("table", (["SQA3D EM@1 by type", *sqa_types],
                                 [["Vid-LLM (this run)", *(_pct(m, "sqa3d", "EM@1", t) for t in sqa_types)]])))

    scan2cap = m.get("scan2cap") if isinstance(m.get("scan2cap"), dict) else {}
    gate, recall = scan2cap.get("gate", "—"), _fmt(scan2cap.get("box_recall"))
    table("Table 2 — 3D dense captioning (Scan2Cap)", ["scan2cap"],
          ["Method", "C@0.5", "B-4@0.5", "M@0.5", "R@0.5"],
          [["Vid-LLM (this run)", *(_pct(m, "scan2cap", f"{k}@0.5") for k in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L"))],
           PAPER_ROWS["scan2cap"]],
          f"IoU gate against {gate}; boxes passing the gate: {recall}%.")

    table("Table 3 — 3D visual grounding (ScanRefer, Multi3DRefer)", ["scanrefer", "multi3drefer"],
          ["Method", "ScanRefer Acc@0.25", "Acc@0.5", "unique @0.25", "multiple @0.25", "Multi3DRefer F1@0.25", "F1@0.5"],
          [["Vid-LLM (this run)", _pct(m, "scanrefer", "Acc@0.25"), _pct(m, "scanrefer", "Acc@0.5"),
            _pct(m, "scanrefer", "Acc@0.25", "unique"), _pct(m, "scanrefer", "Acc@0.25", "multiple"),
            _pct(m, "multi3drefer", "F1@0.25"), _pct(m, "multi3drefer", "F1@0.5")], PAPER_ROWS["grounding"]],
          _boxes_note(m, ["scanrefer", "multi3drefer"]))

    table("Table 4 — 3D visual grounding (Nr3D, Sr3D)", ["nr3d", "sr3d"],
          ["Method", "Nr3D Overall", "Easy", "Hard", "View Dep", "View Indep",
           "Sr3D Overall", "Easy", "Hard", "View Dep", "View Indep"],
          [["Vid-LLM (this run)", *(v for b in ("nr3d", "sr3d") for v in (
              _pct(m, b, "Acc"), *(_pct(m, b, "Acc", g) for g in ("easy", "hard", "view_dependent", "view_independent"))))],
           PAPER_ROWS["referit3d"]],
          "Accuracy = the predicted box selects the target among the ground-truth instances (ReferIt3D).")

    time_text = "—" if seconds_per_scene is None else f"{seconds_per_scene:.2f}"
    table("Table 5 — joint reconstruction and 3D VL reasoning", ["recon", "scanqa", "scan2cap", "scanrefer"],
          ["Method", "Recon ScanNet F-score", "ScanQA", "Scan2Cap", "ScanRefer", "Time (s / scene)"],
          [["Vid-LLM (this run)", _raw(m, "recon", "recon/F-score"), *(_summary(m, b) for b in SUMMARY_METRICS),
            time_text], PAPER_ROWS["joint"]],
          _summary_note())

    ablations = m.get("ablations")
    if isinstance(ablations, dict) and ablations:
        rows = [[name, *(_summary(r, b) for b in SUMMARY_METRICS), _raw(r, "recon", "recon/F-score")]
                for name, r in ablations.items() if isinstance(r, dict)]
        blocks.append(("h2", "Table 6 — ablations (Cross-Task Adapter, metric depth)"))
        blocks.append(("p", _summary_note()))
        blocks.append(("table", (["Variant", "ScanQA", "Scan2Cap", "ScanRefer", "Recon F-score"], rows)))

    table("Table 7 — camera pose", ["recon"], ["Method", "RRA@15", "RTA@15", "AUC@30 (mAA)"],
          [["Vid-LLM (this run)", _pct(m, "recon", "pose/RRA@15"), _pct(m, "recon", "pose/RTA@15"),
            _pct(m, "recon", "pose/AUC@30")], PAPER_ROWS["pose"]], "All frame pairs per scene, averaged over scenes.")
    table("Table 8 — depth", ["recon"], ["Method", "δ1 ↑", "AbsRel ↓", "RMSE ↓", "log10 ↓"],
          [["Vid-LLM (this run)", *(_raw(m, "recon", f"depth/{k}") for k in ("delta1", "abs_rel", "rmse", "log10"))], PAPER_ROWS["depth"]],
          "Valid mask 0 < GT < 10 m, metric scale (no per-image alignment).")
    table("Table 9 — reconstruction", ["recon"], ["Method", "Comp ↓", "Acc ↓", "Recall ↑", "Prec ↑", "F-score ↑"],
          [["Vid-LLM (this run)", *(_raw(m, "recon", f"recon/{k}") for k in ("Comp", "Acc", "Recall", "Precision", "F-score"))], PAPER_ROWS["recon"]],
          "Metres; 2 cm voxel down-sampling, 5 cm threshold.")
    return blocks


def _summary_note() -> str:
    parts = "; ".join(f"{b}: mean of {', '.join(names)}" for b, names in SUMMARY_METRICS.items())
    return f"Each 3D VL column is the mean of that benchmark's metrics, as in the paper ({parts})."


def _qa_note(m: dict[str, Any]) -> str:
    result = m.get("scanqa")
    return f"ScanQA captions tokenised with '{result.get('tokenize')}'." if isinstance(result, dict) and result.get("tokenize") else ""


def _boxes_note(m: dict[str, Any], benchmarks: Sequence[str]) -> str:
    sources = sorted({str(m[b]["gt_boxes"]) for b in benchmarks if isinstance(m.get(b), dict) and m[b].get("gt_boxes")})
    return f"Ground-truth boxes: {'; '.join(sources)}." if sources else ""


# ----------------------------------------------------------------------------- plots


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=size, dpi=PLOT_DPI)


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=PLOT_DPI)  # no bbox_inches="tight": the pixel size stays fixed
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_losses(log: rd.TrainLog, path: Path) -> Path:
    plt, fig = _figure(LOSS_PLOT_SIZE)
    ax_loss, ax_lr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    for term, values in log.losses.items():
        ok = np.isfinite(values)
        if ok.any():
            ax_loss.plot(log.steps[ok], values[ok], label=term, linewidth=1.2)
    positive = [v[np.isfinite(v)] for v in log.losses.values()]
    if positive and all((v > 0).all() for v in positive if v.size):
        ax_loss.set_yscale("log")
    # Stage boundaries help read the two-stage schedule.
    for k in range(1, len(log.stages)):
        if log.stages[k] != log.stages[k - 1]:
            ax_loss.axvline(log.steps[k], color="gray", linestyle=":", linewidth=1)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss per term")
    if log.losses:
        ax_loss.legend(fontsize=8)
    ax_lr.plot(log.steps, log.lr, color="black")
    ax_lr.set(xlabel="step", title="learning rate")
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_depth(geometry: dict[str, np.ndarray], path: Path, title: str) -> Path:
    pred, gt = geometry["depth_pred"], geometry["depth_gt"]
    frames = np.linspace(0, len(gt) - 1, min(MAX_DEPTH_FRAMES, len(gt))).round().astype(int)
    frame_ids = geometry.get("frame_ids", np.arange(len(gt)))
    valid = gt[np.isfinite(gt) & (gt > 0)]
    vmax = float(np.percentile(valid, 99)) if valid.size else 1.0
    plt, fig = _figure(DEPTH_PLOT_SIZE)
    axes = np.asarray(fig.subplots(2, len(frames), squeeze=False))
    for col, f in enumerate(frames):
        for row, (image, label) in enumerate(((gt[f], "GT"), (pred[f], "predicted"))):
            ax = axes[row, col]
            shown = ax.imshow(image, cmap="viridis", vmin=0.0, vmax=vmax)
            ax.set_title(f"{label} depth, frame {int(frame_ids[f])}", fontsize=9)
            ax.axis("off")
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="metres")
    fig.suptitle(title)
    return _save(plt, fig, path)


def plot_topdown(geometry: dict[str, np.ndarray], path: Path, title: str) -> Path:
    from matplotlib.patches import Rectangle

    points = np.asarray(geometry["points_pred"], dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    if len(points) > MAX_TOPDOWN_POINTS:  # deterministic thinning keeps the plot fast
        points = points[np.linspace(0, len(points) - 1, MAX_TOPDOWN_POINTS).astype(int)]
    plt, fig = _figure(TOPDOWN_PLOT_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    if len(points):
        ax.scatter(points[:, 0], points[:, 1], c=points[:, 2], s=0.5, cmap="viridis", alpha=0.5, rasterized=True)
    for key, color, label in (("boxes_gt", "tab:green", "GT box"), ("boxes_pred", "tab:red", "predicted box")):
        boxes = np.asarray(geometry.get(key, np.zeros((0, 6))), dtype=np.float64).reshape(-1, 6)
        for n, (cx, cy, _, dx, dy, _) in enumerate(boxes):
            ax.add_patch(Rectangle((cx - dx / 2, cy - dy / 2), dx, dy, fill=False, edgecolor=color, linewidth=1.5,
                                   label=label if n == 0 else None))
    ax.set_aspect("equal")
    ax.set(xlabel="x (m)", ylabel="y (m)", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    fig.tight_layout()
    return _save(plt, fig, path)


# ----------------------------------------------------------------------------- rendering


def _render_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for kind, content in blocks:
        if kind == "h2":
            out += [f"## {content}", ""]
        elif kind == "p":
            out += [content, ""]
        elif kind == "table":
            header, rows = content
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] * len(header)) + "|")
            out += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            rel, alt = content
            out += [f"![{alt}]({rel})", ""]
    return "\n".join(out)


def _render_html(title: str, blocks: list[Block]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
           "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
           "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
           f"<h1>{esc(title)}</h1>"]
    for kind, content in blocks:
        if kind == "h2":
            out.append(f"<h2>{esc(content)}</h2>")
        elif kind == "p":
            out.append(f"<p>{esc(content)}</p>")
        elif kind == "table":
            header, rows = content
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "img":
            rel, alt = content
            out.append(f"<figure><img src='{esc(rel)}' alt='{esc(alt)}'><figcaption>{esc(alt)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _predicted_boxes(predictions_dir: Path, scene_id: str) -> np.ndarray:
    """Boxes predicted for `scene_id` by the grounding runs (ids `scene|object|ann`), for the top-down plot."""
    from vidllm.eval.predictions import read_predictions

    boxes = [np.zeros((0, 6))]
    for benchmark in ("scanrefer", "multi3drefer"):
        path = predictions_dir / f"{benchmark}.jsonl"
        if path.is_file():
            preds = read_predictions(path, benchmark)
            boxes += [p.boxes for p in preds.values() if p.id.split("|", 1)[0] == scene_id]
    return np.concatenate(boxes)


def _seconds_per_scene(metrics: dict[str, Any], predictions_dir: Path) -> float | None:
    timing = metrics.get("timing")
    if isinstance(timing, dict) and isinstance(timing.get("seconds_per_scene"), (int, float)):
        return float(timing["seconds_per_scene"])
    values = [read_meta(p).get("seconds_per_scene") for p in sorted(predictions_dir.glob("*.jsonl"))]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return float(np.mean(values)) if values else None


def _ablation_blocks(run: Path) -> list[Block]:
    """The ablation table (`vidllm ablate`, or the demo's blind control) when the run has one."""
    from vidllm.ablate import ABLATION_FILE, COLUMNS

    path = run / ABLATION_FILE
    if not path.is_file():
        return []
    result = rd.read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("variants"), dict):
        raise DataError(path, "must hold {variants: {name: {table: ...}}} (vidllm ablate's output)")
    header = ["variant", *(h for h, *_ in COLUMNS)]
    rows = [[name, *(_fmt(entry.get("table", {}).get(h)) for h, *_ in COLUMNS)]
            for name, entry in result["variants"].items()]
    return [("h2", "Ablations (held-out scenes)"),
            ("p", "Each variant trained on the same data, seeds and steps; `blind` is the same model with no vision "
                  "tokens reaching the LLM, the control every learning claim is measured against. Percentages."),
            ("table", (header, rows))]


def build_report(run: str | Path, max_scenes: int = 2, progress: Callable[[str], None] | None = None) -> Report:
    """Write report.md, report.html and plots/ into the run directory and return their paths."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(run, "run directory not found")
    say = progress or (lambda _msg: None)
    metrics_path = run / rd.METRICS_FILE
    metrics = rd.read_json(metrics_path) if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise DataError(metrics_path, "must hold a JSON object {benchmark: score result}")
    plots_dir = run / rd.PLOTS_DIR
    report = Report(markdown=run / rd.REPORT_MD, html=run / rd.REPORT_HTML)

    blocks: list[Block] = []
    config_path = run / rd.CONFIG_FILE
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DataError(config_path, f"not valid YAML: {exc}") from None
        recipe = config.get("recipe", "?") if isinstance(config, dict) else "?"
        protocol = (config.get("eval") or {}).get("protocol", "?") if isinstance(config, dict) else "?"
        blocks.append(("p", f"Recipe: {recipe}. Configured evaluation protocol: {protocol}."))
    if not metrics:
        blocks.append(("p", f"No {rd.METRICS_FILE} in this run: the tables below are empty."))
    blocks += _tables(metrics, _seconds_per_scene(metrics, run / rd.PREDICTIONS_DIR))
    blocks += _ablation_blocks(run)

    figures: list[Block] = []
    log_path = run / rd.TRAIN_LOG_FILE
    if log_path.is_file():
        say("plot training losses")
        log = rd.read_train_log(log_path)
        if len(log.steps):
            report.plots.append(plot_losses(log, plots_dir / "loss_curves.png"))
            figures.append(("img", ("plots/loss_curves.png", "Training loss per term and learning rate")))
    for geo_path in sorted((run / rd.GEOMETRY_DIR).glob("*.npz"))[:max_scenes]:
        scene = geo_path.stem
        say(f"plot geometry of {scene}")
        geometry = rd.read_geometry(geo_path)
        if "depth_pred" in geometry and "depth_gt" in geometry:
            report.plots.append(plot_depth(geometry, plots_dir / f"depth_{scene}.png", f"{scene}: depth"))
            figures.append(("img", (f"plots/depth_{scene}.png", f"{scene}: ground-truth vs predicted depth")))
        if "points_pred" in geometry and "boxes_pred" not in geometry:
            geometry["boxes_pred"] = _predicted_boxes(run / rd.PREDICTIONS_DIR, scene)
        if "points_pred" in geometry:
            report.plots.append(plot_topdown(geometry, plots_dir / f"topdown_{scene}.png", f"{scene}: top-down view"))
            figures.append(("img", (f"plots/topdown_{scene}.png",
                                    f"{scene}: predicted point cloud (top-down), predicted (red) and GT (green) boxes")))
    if figures:
        blocks += [("h2", "Figures"), *figures]

    title = f"Vid-LLM evaluation report — {run.name}"
    atomic_write_text(report.markdown, _render_markdown(title, blocks))
    atomic_write_text(report.html, _render_html(title, blocks))
    return report
