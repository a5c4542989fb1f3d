"""Paper-style report of a run directory (layout in vidllm.artifacts.run_dir): markdown, HTML and PNG plots.

Tables follow the paper: 3D QA (Tab. 1), dense captioning (Tab. 2), grounding (Tab. 3, 4),
joint reconstruction–reasoning with time per scene (Tab. 5), pose, depth and reconstruction
(Tab. 7–9), then the `vidllm ablate` table when the run has one. Each registered benchmark's
spec says which columns it adds to which table (`vidllm.eval.benchmarks.tables`). Missing
benchmarks show "—". Every table says which evaluation protocol produced it, and the tables come
once per protocol card (`vidllm.eval.protocols`: P0/P1/P2 and the proposal source), each under
its own heading, so a run evaluated under two protocols shows both.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vidllm.artifacts import run_dir as rd
from vidllm.artifacts.files import atomic_path, atomic_write_text
from vidllm.errors import DataError
from vidllm.eval.benchmarks import registry
from vidllm.eval.benchmarks.tables import OURS, Column, Table, TableColumns, fmt
from vidllm.eval.predictions import read_meta

# Plot sizes in inches at PLOT_DPI; the PNGs are exactly these × dpi pixels.
PLOT_DPI = 100
LOSS_PLOT_SIZE = (9.0, 4.5)
DEPTH_PLOT_SIZE = (12.0, 6.0)
TOPDOWN_PLOT_SIZE = (8.0, 8.0)
MAX_DEPTH_FRAMES = 4
MAX_TOPDOWN_POINTS = 60_000

Block = tuple[str, Any]  # ("h2" | "h3", text) | ("p", text) | ("table", (header, rows)) | ("img", (path, alt))


@dataclass
class Report:
    markdown: Path
    html: Path
    plots: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- metric access


def _metric(result: Any, name: str, group: str | None = None) -> float | None:
    if not isinstance(result, dict):
        return None
    source = result.get("subgroups", {}).get(group, {}) if group else result.get("metrics", {})
    value = source.get(name) if isinstance(source, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _cell(result: Any, column: Column) -> str:
    if isinstance(column.metric, tuple):  # a summary: "—" unless every metric was scored
        values = [_metric(result, name, column.group) for name in column.metric]
        return "—" if any(v is None for v in values) else fmt(float(np.mean(values)), column.scale, column.digits)
    return fmt(_metric(result, column.metric, column.group), column.scale, column.digits)


def _protocols(metrics: dict[str, Any], benchmarks: Sequence[str]) -> str:
    found = sorted({str(metrics[b].get("protocol", "unspecified")) for b in benchmarks
                    if isinstance(metrics.get(b), dict)})
    return ", ".join(found) if found else "no results"


# ----------------------------------------------------------------------------- tables


def report_tables() -> list[tuple[Table, list[tuple[str, TableColumns]]]]:
    """Every table a registered benchmark adds columns to, in `Table.number` order, with its
    (benchmark, columns) parts in `position` then registration order."""
    parts: dict[Table, list[tuple[int, int, str, TableColumns]]] = {}
    for index, spec in enumerate(registry.specs()):
        for part in spec.tables:
            parts.setdefault(part.table, []).append((part.position, index, spec.name, part))
    ordered = sorted(parts.items(), key=lambda item: item[0].number)
    return [(table, [(name, part) for *_, name, part in sorted(found, key=lambda p: p[:2])])
            for table, found in ordered]


def _tables(metrics: dict[str, Any], seconds_per_scene: float | None) -> list[Block]:
    run_values = {"metrics": {"seconds_per_scene": seconds_per_scene}}
    blocks: list[Block] = []
    for table, parts in report_tables():
        benchmarks = [name for name, _ in parts]
        if table.only_if_scored and not any(b in metrics for b in benchmarks):
            continue
        columns = [(name, column) for name, part in parts for column in part.columns]
        header = [table.first_header, *(c.header for _, c in columns), *(c.header for c in table.run_columns)]
        rows = [[OURS, *(_cell(metrics.get(name), c) for name, c in columns),
                 *(_cell(run_values, c) for c in table.run_columns)]]
        if table.paper_label is not None:
            rows.append([table.paper_label, *(c.paper for _, c in columns), *(c.paper for c in table.run_columns)])
        if table.title is not None:
            blocks.append(("h2", table.title))
            note = _note(table, parts, metrics, columns)
            protocol = f"Evaluation protocol: {_protocols(metrics, benchmarks)}."
            blocks.append(("p", protocol + (f" {note}" if note else "")))
        blocks.append(("table", (header, rows)))
    return blocks


def _protocol_sections(metrics: dict[str, Any], seconds_per_scene: float | None) -> list[Block]:
    """The tables once per protocol card (protocol, then proposal source), each under its heading.

    Results come from the top-level benchmark entries and metrics.json's "by_protocol" (every
    evaluation of the run); a benchmark without a proposal source (QA, recon) shows under each
    source of its protocol. One card without a declared protocol (hand-made metrics) is untitled.
    """
    from vidllm.eval.protocols import LEGACY_NAMES, card
    from vidllm.eval.scoring import recorded_proposals

    found: dict[tuple[str, str, str | None], Any] = {}
    evaluations = [v for v in (metrics.get("by_protocol") or {}).values() if isinstance(v, dict)]
    for group in [*evaluations, metrics]:  # the top-level (latest) entries win
        for name, result in group.items():
            if name in registry.BENCHMARKS and isinstance(result, dict):
                protocol = str(result.get("protocol", "unspecified"))
                found[(LEGACY_NAMES.get(protocol, protocol), name, recorded_proposals(result))] = result
    if not found:
        return _tables(metrics, seconds_per_scene)
    blocks: list[Block] = []
    protocols = sorted({protocol for protocol, _, _ in found})
    for protocol in protocols:
        sources = sorted({s for p, _, s in found if p == protocol and s is not None}) or [None]
        for source in sources:
            group = {name: r for (p, name, s), r in found.items() if p == protocol and s in (source, None)}
            if len(protocols) > 1 or len(sources) > 1 or protocol != "unspecified":
                blocks.append(("h2", f"Protocol {card(protocol, source)}"))
            blocks += [("h3", c) if kind == "h2" else (kind, c) for kind, c in _tables(group, seconds_per_scene)]
    return blocks


def _note(table: Table, parts: list[tuple[str, TableColumns]], metrics: dict[str, Any],
          columns: list[tuple[str, Column]]) -> str:
    notes = [table.note(metrics, columns) if callable(table.note) else table.note]
    for name, part in parts:
        if part.note is not None:
            result = metrics.get(name)
            notes.append(part.note(result if isinstance(result, Mapping) else {}))
    return " ".join(n for n in notes if n)


# ----------------------------------------------------------------------------- plots


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=size, dpi=PLOT_DPI)


def _save(plt, fig, path: Path) -> Path:
    try:
        with atomic_path(path, keep_suffix=True) as tmp:  # savefig takes the format from the suffix
            fig.savefig(tmp, dpi=PLOT_DPI)  # no bbox_inches="tight": the pixel size stays fixed
    finally:
        plt.close(fig)
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
        if kind in ("h2", "h3"):
            out += [f"{'#' * int(kind[1])} {content}", ""]
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
        if kind in ("h2", "h3"):
            out.append(f"<{kind}>{esc(content)}</{kind}>")
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
    for benchmark in (spec.name for spec in registry.specs() if spec.plot_boxes):
        path = predictions_dir / f"{benchmark}.jsonl"
        if path.is_file():
            preds = read_predictions(path, benchmark)
            boxes += [p.boxes for p in preds.values() if p.id.split("|", 1)[0] == scene_id]
    return np.concatenate(boxes)


def _seconds_per_scene(predictions_dir: Path) -> float | None:
    """Mean of the seconds per scene `vidllm predict` recorded in the predictions' meta files."""
    values = [read_meta(p).get("seconds_per_scene") for p in sorted(predictions_dir.glob("*.jsonl"))]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return float(np.mean(values)) if values else None


def _ablation_blocks(run: Path) -> list[Block]:
    """The ablation table (`vidllm ablate`, or the demo's blind control) when the run has one."""
    from vidllm.ablate import ABLATION_FILE, columns

    path = run / ABLATION_FILE
    if not path.is_file():
        return []
    result = rd.read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("variants"), dict):
        raise DataError(path, "must hold {variants: {name: {table: ...}}} (vidllm ablate's output)")
    headers = [h for h, *_ in columns()]
    header = ["variant", *headers]
    rows = [[name, *(fmt(entry.get("table", {}).get(h)) for h in headers)]
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
    blocks += _protocol_sections(metrics, _seconds_per_scene(run / rd.PREDICTIONS_DIR))
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
