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

# Plot sizes in inches at PLOT_DPI; the PNGs are exactly these × dpi pixels (constrained layout
# fits legends and colourbars inside the canvas).
PLOT_DPI = 100
LOSS_PLOT_SIZE = (15.0, 10.0)
LOSS_COLUMNS = 3  # panels per row of the loss figure
DEPTH_PLOT_SIZE = (11.0, 10.0)
TOPDOWN_PLOT_SIZE = (9.0, 10.0)
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


@dataclass(frozen=True)
class LossGroup:
    """One loss panel per stage: the terms named in `members` or starting with a member and "_"
    (md → md_log, md_chamfer). `total` is the group's own weighted sum, drawn thick in its panel
    and with the overall loss in the stage's overview panel."""

    title: str
    members: tuple[str, ...]
    total: str | None = None


# The grouping rule of the loss plot, in panel order: a term lands in the first group that names
# it; a term no group names lands in OTHER_LOSSES, so a new loss term is still plotted.
LOSS_GROUPS = (
    LossGroup("distillation", ("geo", "lang", "sc")),
    LossGroup("reconstruction", ("camera", "depth", "point", "rotation"), total="recon"),
    LossGroup("metric depth", ("md",), total="md"),
    LossGroup("vision-language", ("lm", "box", "giou", "match", "refine", "proposal"), total="vl"),
)
OVERALL_LOSS = "total"  # the overview panel: the overall loss and each group's total
OTHER_LOSSES = "other"
LR_PANEL = "learning rate"
STAGE_TITLES = {"stage1": "Stage 1", "stage2": "Stage 2", "": "Training"}


def loss_group(term: str) -> str:
    """The panel title `term` is plotted under (OVERALL_LOSS, a LOSS_GROUPS title or OTHER_LOSSES)."""
    if term == OVERALL_LOSS:
        return OVERALL_LOSS
    for group in LOSS_GROUPS:
        if term == group.total or any(term == m or term.startswith(m + "_") for m in group.members):
            return group.title
    return OTHER_LOSSES


@dataclass(frozen=True)
class Panel:
    """One axis of the loss figure: `terms` of one stage (none for the LR_PANEL), `thick` drawn
    as the panel's reference curve, y axis in `yscale` ("linear" | "log" | "symlog")."""

    stage: str
    title: str
    terms: tuple[str, ...] = ()
    thick: str | None = None
    yscale: str = "linear"

    @property
    def heading(self) -> str:
        return f"{STAGE_TITLES.get(self.stage, self.stage)} · {self.title}"


def _yscale(values: Sequence[np.ndarray]) -> str:
    """Log when the values are positive and span more than a decade; symlog when they also dip
    to or below zero (e.g. a confidence-weighted depth term); else linear."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    positive = finite[finite > 0]
    if not positive.size or positive.max() <= 10 * positive.min():
        return "linear"
    return "log" if positive.size == finite.size else "symlog"


def loss_panels(log: rd.TrainLog) -> list[Panel]:
    """The loss figure's panels, stage by stage (in log order): the overview, one per loss group
    with terms logged in that stage, then the stage's learning rate."""
    panels: list[Panel] = []
    for stage in dict.fromkeys(log.stages):
        rows = np.array([s == stage for s in log.stages])
        logged = [t for t, v in log.losses.items() if np.isfinite(v[rows]).any()]
        overview = [t for t in logged if t == OVERALL_LOSS] + [g.total for g in LOSS_GROUPS if g.total in logged]
        found = [(OVERALL_LOSS, overview, OVERALL_LOSS if OVERALL_LOSS in logged else None)]
        for title, total in [*((g.title, g.total) for g in LOSS_GROUPS), (OTHER_LOSSES, None)]:
            terms = [t for t in logged if loss_group(t) == title]
            if set(terms) - set(overview):  # a group of only its total is already in the overview
                found.append((title, terms, total if total in terms else None))
        for title, terms, thick in found:
            if terms:
                terms = sorted(terms, key=lambda t: t != thick)  # the reference curve heads the legend
                panels.append(Panel(stage, title, tuple(terms), thick, _yscale([log.losses[t][rows] for t in terms])))
        panels.append(Panel(stage, LR_PANEL))
    return panels


def _ema(values: np.ndarray, span: float) -> np.ndarray:
    """Bias-corrected exponential moving average of `values` [T] (as TensorBoard's smoothing)."""
    beta = 1.0 - 2.0 / (span + 1.0)
    out = np.empty(len(values))
    acc = 0.0
    for i, v in enumerate(values):
        acc = beta * acc + (1.0 - beta) * v
        out[i] = acc / (1.0 - beta ** (i + 1))
    return out


def _new_figure(size: tuple[float, float]):
    # A bare Figure (no pyplot): no global state, nothing to close, and the tests can inspect it.
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=PLOT_DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    with atomic_path(path, keep_suffix=True) as tmp:  # savefig takes the format from the suffix
        fig.savefig(tmp, dpi=PLOT_DPI)  # no bbox_inches="tight": the pixel size stays fixed
    return path


def _legend_outside(ax, **kwargs: Any) -> None:
    # To the right of the axes, so it never covers a curve; constrained layout keeps it on the canvas.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def loss_figure(log: rd.TrainLog):
    """Loss curves in panels by stage and group (`loss_panels`), EMA-smoothed over faint raw
    values, with each stage's learning rate in its own panel; returns the matplotlib Figure."""
    from matplotlib import colormaps

    panels = loss_panels(log)
    stages = list(dict.fromkeys(p.stage for p in panels))
    per_stage = [[p for p in panels if p.stage == s] for s in stages]
    columns = min(LOSS_COLUMNS, max(len(ps) for ps in per_stage))
    row_counts = [-(-len(ps) // columns) for ps in per_stage]  # each stage starts a new row
    fig = _new_figure(LOSS_PLOT_SIZE)
    grid = fig.add_gridspec(sum(row_counts), columns)
    palette = colormaps["tab10"].colors
    styles = ("-", "--", ":")
    first_row = 0
    for stage, stage_panels, n_rows in zip(stages, per_stage, row_counts):
        rows = np.array([s == stage for s in log.stages])
        order = np.argsort(log.steps[rows], kind="stable")
        steps = log.steps[rows][order]
        for k, panel in enumerate(stage_panels):
            ax = fig.add_subplot(grid[first_row + k // columns, k % columns])
            ax.set_title(panel.heading, fontsize=10)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3, linewidth=0.5)
            if panel.title == LR_PANEL:
                ax.plot(steps, log.lr[rows][order], color="black", linewidth=1.5)
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
                continue
            others = [t for t in panel.terms if t != panel.thick]
            for term in panel.terms:
                values = log.losses[term][rows][order]
                ok = np.isfinite(values)
                if not ok.any():
                    continue
                if term == panel.thick:
                    color, style, width = "black", "-", 2.2
                else:
                    n = others.index(term)
                    color, style, width = palette[n % len(palette)], styles[n // len(palette) % len(styles)], 1.4
                x, y = steps[ok], values[ok]
                ax.plot(x, y, color=color, linewidth=0.8, alpha=0.25)
                ax.plot(x, _ema(y, float(np.clip(len(y) / 10, 1, 50))), color=color, linestyle=style,
                        linewidth=width, label=term)
            if panel.yscale == "symlog":
                magnitudes = np.abs(np.concatenate([log.losses[t][rows] for t in panel.terms]))
                magnitudes = magnitudes[np.isfinite(magnitudes) & (magnitudes > 0)]
                ax.set_yscale("symlog", linthresh=float(np.percentile(magnitudes, 5)))
            else:
                ax.set_yscale(panel.yscale)
            _legend_outside(ax, fontsize=8)
        first_row += n_rows
    fig.suptitle("Training losses per stage (EMA-smoothed; raw values faint) and learning rate", fontsize=11)
    return fig


def plot_losses(log: rd.TrainLog, path: Path) -> Path:
    return _save(loss_figure(log), path)


def _resize_nearest(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`image` [h,w] sampled to `shape` [H,W] by nearest neighbour."""
    rows = (np.arange(shape[0]) * image.shape[0] // shape[0]).astype(int)
    cols = (np.arange(shape[1]) * image.shape[1] // shape[1]).astype(int)
    return image[rows][:, cols]


DEPTH_COLUMNS = ("RGB", "GT depth", "predicted depth", "error: predicted − GT")


def depth_figure(geometry: dict[str, np.ndarray], title: str):
    """Per frame (≤ MAX_DEPTH_FRAMES, spread over the clip) one row of DEPTH_COLUMNS: the input
    frame (`colors` [N,H,W,3], when recorded), GT and predicted depth on one colour scale, and the
    signed error on GT-valid pixels with its own scale. geometry: depth_pred [N,h,w],
    depth_gt [N,H,W] (0 = invalid), optional frame_ids [N]; returns the matplotlib Figure."""
    from matplotlib import colormaps

    pred, gt = np.asarray(geometry["depth_pred"], np.float64), np.asarray(geometry["depth_gt"], np.float64)
    colors = geometry.get("colors")
    frames = np.linspace(0, len(gt) - 1, min(MAX_DEPTH_FRAMES, len(gt))).round().astype(int)
    frame_ids = geometry.get("frame_ids", np.arange(len(gt)))
    valid_gt = [np.isfinite(gt[f]) & (gt[f] > 0) for f in frames]
    pred_on_gt = [_resize_nearest(pred[f], gt[f].shape) for f in frames]
    errors = [np.where(v, p - gt[f], np.nan) for f, v, p in zip(frames, valid_gt, pred_on_gt)]
    shown = np.concatenate([*(gt[f][v] for f, v in zip(frames, valid_gt)),
                            *(p[np.isfinite(p)].ravel() for p in pred_on_gt)])
    lo, hi = (np.percentile(shown, [1, 99]) if shown.size else (0.0, 1.0))
    hi = max(float(hi), float(lo) + 1e-6)
    finite_err = np.abs(np.concatenate([e[np.isfinite(e)] for e in errors]))
    err_max = max(float(np.percentile(finite_err, 99)) if finite_err.size else 1.0, 1e-6)
    depth_cmap, err_cmap = colormaps["viridis"].with_extremes(bad="0.85"), colormaps["RdBu_r"].with_extremes(bad="0.85")

    fig = _new_figure(DEPTH_PLOT_SIZE)
    axes = np.asarray(fig.subplots(len(frames), len(DEPTH_COLUMNS), squeeze=False))
    depth_image = err_image = None
    for row, f in enumerate(frames):
        rgb, gt_ax, pred_ax, err_ax = axes[row]
        if colors is not None and len(colors) > f:
            rgb.imshow(np.asarray(colors[f]))
        else:
            rgb.text(0.5, 0.5, "no RGB recorded", ha="center", va="center", fontsize=8, transform=rgb.transAxes)
        gt_ax.imshow(np.where(valid_gt[row], gt[f], np.nan), cmap=depth_cmap, vmin=lo, vmax=hi)
        depth_image = pred_ax.imshow(pred[f], cmap=depth_cmap, vmin=lo, vmax=hi)
        err_image = err_ax.imshow(errors[row], cmap=err_cmap, vmin=-err_max, vmax=err_max)
        v = valid_gt[row]
        abs_rel = float(np.mean(np.abs(pred_on_gt[row][v] - gt[f][v]) / gt[f][v])) if v.any() else float("nan")
        err_ax.set_title(f"AbsRel {abs_rel:.3f}", fontsize=8)
        rgb.set_ylabel(f"frame {int(frame_ids[f])}", fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], DEPTH_COLUMNS):
        ax.set_title(name if ax is not axes[0, 3] else f"{name}\n{ax.get_title()}", fontsize=9)
    fig.colorbar(depth_image, ax=axes[:, 1:3].ravel().tolist(), location="bottom", shrink=0.7,
                 label="depth (m), GT and predicted")
    fig.colorbar(err_image, ax=axes[:, 3].tolist(), location="bottom", shrink=0.9, label="error (m)")
    fig.suptitle(title, fontsize=11)
    return fig


def plot_depth(geometry: dict[str, np.ndarray], path: Path, title: str) -> Path:
    return _save(depth_figure(geometry, title), path)


def _camera_centres(poses: Any) -> np.ndarray:
    """Camera centres [N',3] of camera-to-world poses [N,4,4], frames with non-finite poses dropped."""
    centres = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)[:, :3, 3]
    return centres[np.isfinite(centres).all(1)]


# (geometry key, colour, line style, legend label) of the top-down plot's boxes and camera paths.
TOPDOWN_BOXES = (("boxes_gt", "tab:green", "-", "GT box"), ("boxes_pred", "tab:red", "--", "predicted box"))
# The GT path is wider and below the predicted one, so it still shows where the two coincide.
TOPDOWN_PATHS = (("camera_to_world_gt", "black", "--", 2.6, "GT camera path"),
                 ("camera_to_world_pred", "tab:blue", "-", 1.4, "predicted camera path"))


def topdown_figure(geometry: dict[str, np.ndarray], title: str):
    """Top-down (x, y) view of the predicted point cloud (`points_pred` [K,3], grey by height)
    with GT and predicted boxes ([G|P,6] centre + size) and the GT and predicted camera paths
    (centres of camera_to_world_* [N,4,4] in frame order, start starred); each present part gets
    a legend entry (artist gid = its geometry key). Returns the matplotlib Figure."""
    from matplotlib.patches import Rectangle

    points = np.asarray(geometry.get("points_pred", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    if len(points) > MAX_TOPDOWN_POINTS:  # deterministic thinning keeps the plot fast
        points = points[np.linspace(0, len(points) - 1, MAX_TOPDOWN_POINTS).astype(int)]
    fig = _new_figure(TOPDOWN_PLOT_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    if len(points):
        z = points[:, 2]
        low, high = np.percentile(z, [2, 98])
        # Greys from mid-grey up: the coloured boxes and paths stay the most visible marks.
        size = float(np.clip(20_000 / len(points), 1.0, 3.0))  # sparse clouds get bigger dots
        ax.scatter(points[:, 0], points[:, 1], c=z, s=size, cmap="Greys", vmin=low - 0.6 * (high - low), vmax=high,
                   alpha=0.8, linewidths=0, rasterized=True, label="predicted points (darker = higher)",
                   gid="points_pred")
    for key, color, style, label in TOPDOWN_BOXES:
        boxes = np.asarray(geometry.get(key, np.zeros((0, 6))), dtype=np.float64).reshape(-1, 6)
        for n, (cx, cy, _, dx, dy, _) in enumerate(boxes[np.isfinite(boxes).all(1)]):
            ax.add_patch(Rectangle((cx - dx / 2, cy - dy / 2), dx, dy, fill=False, edgecolor=color, linestyle=style,
                                   linewidth=1.8, label=label if n == 0 else None, gid=key))
    starts = []
    for key, color, style, width, label in TOPDOWN_PATHS:
        centres = _camera_centres(geometry.get(key, np.zeros((0, 4, 4))))
        if len(centres):
            ax.plot(centres[:, 0], centres[:, 1], color=color, linestyle=style, linewidth=width, marker="o",
                    markersize=2 + width, label=label, gid=key)
            starts.append((centres[0], color))
    for n, (start, color) in enumerate(starts):  # GT's star is bigger: both show when the protocol aligns them
        ax.plot(start[0], start[1], marker="*", markersize=20 - 9 * n, color=color, markeredgecolor="white",
                linestyle="none", label="path start" if n == 0 else None, gid="path_start")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel="x (m)", ylabel="y (m)", title=title)
    ax.grid(True, alpha=0.3, linewidth=0.5)
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=9, frameon=False)
        for handle in legend.legend_handles:
            if hasattr(handle, "set_sizes"):  # the point cloud's marker, too small to see at s=0.6
                handle.set_sizes([25.0])
    return fig


def plot_topdown(geometry: dict[str, np.ndarray], path: Path, title: str) -> Path:
    return _save(topdown_figure(geometry, title), path)


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


def _predicted_boxes(predictions_dir: Path) -> dict[str, np.ndarray]:
    """{scene_id: boxes [P,6]} predicted by the grounding runs (ids `scene|object|ann`), for the
    top-down plots; scenes without a predicted box are left out."""
    from vidllm.eval.predictions import read_predictions

    boxes: dict[str, list[np.ndarray]] = {}
    for benchmark in (spec.name for spec in registry.specs() if spec.plot_boxes):
        path = predictions_dir / f"{benchmark}.jsonl"
        if path.is_file():
            for p in read_predictions(path, benchmark).values():
                found = np.asarray(p.boxes, dtype=np.float64).reshape(-1, 6)
                if len(found):
                    boxes.setdefault(p.id.split("|", 1)[0], []).append(found)
    return {scene: np.concatenate(b) for scene, b in boxes.items()}


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
            figures.append(("img", ("plots/loss_curves.png",
                                    "Training losses per stage and loss group, and each stage's learning rate")))
    predicted_boxes = _predicted_boxes(run / rd.PREDICTIONS_DIR)
    # Scenes with predicted boxes first: those are the evaluated ones, and their top-down plot shows both box sets.
    geo_paths = sorted((run / rd.GEOMETRY_DIR).glob("*.npz"), key=lambda p: (p.stem not in predicted_boxes, p.stem))
    for geo_path in geo_paths[:max_scenes]:
        scene = geo_path.stem
        say(f"plot geometry of {scene}")
        geometry = rd.read_geometry(geo_path)
        if "depth_pred" in geometry and "depth_gt" in geometry:
            report.plots.append(plot_depth(geometry, plots_dir / f"depth_{scene}.png", f"{scene}: depth"))
            figures.append(("img", (f"plots/depth_{scene}.png",
                                    f"{scene}: input frame, GT and predicted depth, and the error per frame")))
        if "points_pred" in geometry and "boxes_pred" not in geometry:
            geometry["boxes_pred"] = predicted_boxes.get(scene, np.zeros((0, 6)))
        if "points_pred" in geometry:
            report.plots.append(plot_topdown(geometry, plots_dir / f"topdown_{scene}.png", f"{scene}: top-down view"))
            figures.append(("img", (f"plots/topdown_{scene}.png", f"{scene}: predicted point cloud (top-down), "
                                                                  "predicted and GT boxes and camera paths")))
    if figures:
        blocks += [("h2", "Figures"), *figures]

    title = f"Vid-LLM evaluation report — {run.name}"
    atomic_write_text(report.markdown, _render_markdown(title, blocks))
    atomic_write_text(report.html, _render_html(title, blocks))
    return report
