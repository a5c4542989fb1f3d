"""The viewer page in the system's headless Chromium (playwright drives /usr/bin/chromium; it
downloads no browser), and the synthetic scene the README screenshot shows.

    python -m tests.viewer_page docs/images/viewer.png     # regenerate the README screenshot

WebGL renders without a GPU: Chromium falls back to SwiftShader (software GL) by itself; the flag
below keeps that fallback allowed in releases that make it opt-in.
"""

from __future__ import annotations

import io
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-swiftshader"]
VIEWPORT = {"width": 1280, "height": 800}
PANEL_WIDTH = 420  # the control panel on the right; the 3D canvas is measured left of it
RENDER_SECONDS = 3.0  # scene messages arrive and the canvas settles after "Connected"


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


def open_viewer(chromium, url: str):
    """A page showing the viewer at `url`, rendered; requests leaving loopback are refused and
    listed in `page.outside` (viser's index.html asks for an analytics script)."""
    page = chromium.new_page(viewport=VIEWPORT)
    page.outside = []
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))

    def route(request_route):
        if request_route.request.url.startswith(("http://127.0.0.1", "http://localhost")):
            request_route.continue_()
        else:
            page.outside.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    page.goto(url, timeout=30_000)
    page.wait_for_selector("canvas", timeout=30_000)
    page.get_by_text("Connected").wait_for(timeout=30_000)
    time.sleep(RENDER_SECONDS)
    return page


def canvas_pixels(png: bytes) -> np.ndarray:
    """[H,W,3] uint8 of the screenshot's 3D area (left of the control panel, above the axes gizmo)."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return image[: -120, : -PANEL_WIDTH]


def distinct_colours(pixels: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> int:
    flat = pixels.reshape(-1, 3)
    flat = flat[np.abs(flat.astype(int) - background).sum(1) > 30]
    return len(np.unique(flat, axis=0))


# ----------------------------------------------------------------------------- the README's scene


def synthetic_viewer_scene(scene_dir: Path, point_stride: int = 2):
    """A synthetic ScanNet scene as the viewer shows it: the GT depth of every frame back-projected
    with its colours (axis-aligned world), the cameras with their frames, and the GT object boxes."""
    from vidllm.data.scannet.scans import load_scene
    from vidllm.eval.geometry_metrics import backproject_depth
    from vidllm.viewer import Cameras, LabelledBoxes, ViewerScene

    with load_scene(scene_dir) as scene:
        k = scene.intrinsic_depth[:3, :3]
        points, colors, poses, images = [], [], [], []
        for frame_id in scene.valid_frame_ids:
            depth = scene.read_depth(frame_id)[::point_stride, ::point_stride]
            color = scene.read_color(frame_id)
            pose = scene.axis_alignment @ scene.pose(frame_id)
            scaled = k.copy()
            scaled[:2] /= point_stride
            grid = color[: depth.shape[0] * point_stride : point_stride, : depth.shape[1] * point_stride : point_stride]
            valid = np.isfinite(depth) & (depth > 0)
            points.append(backproject_depth(depth, scaled, pose))
            colors.append(grid[valid])
            poses.append(pose)
            images.append(color)
        fov_y = np.full(len(poses), 2 * np.arctan2(scene.depth_size[1] / 2, k[1, 1]))
        cameras = Cameras(np.stack(poses), fov_y, scene.color_size[0] / scene.color_size[1], np.stack(images))
        gt = LabelledBoxes(np.stack([o.box for o in scene.objects]),
                           [f"{o.label} {o.object_id}" for o in scene.objects])
        return ViewerScene(f"{scene.scene_id} (synthetic, ground truth)", np.concatenate(points).astype(np.float32),
                           np.concatenate(colors), frame="ScanNet axis-aligned world (metres, z up)",
                           cameras=cameras, gt=gt)


def write_screenshot(out: Path) -> Path:
    """Generate one synthetic scene, show it in the viewer and save the page as a PNG."""
    import socket
    import tempfile

    from vidllm.artifacts.files import atomic_write_bytes
    from vidllm.config import SynthConfig
    from vidllm.data.synthetic.generate import generate_dataset
    from vidllm.viewer import build_viewer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(scenes=1, frames=24, width=320, height=240, seed=3)
        dataset = generate_dataset(Path(tmp), cfg, progress=False)
        scene = synthetic_viewer_scene(dataset.scan_dir / dataset.scenes[0].scene_id)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer = build_viewer(scene, port=port)
    try:
        with browser() as chromium:
            page = open_viewer(chromium, viewer.url)
            png = page.screenshot()
    finally:
        viewer.stop()
    atomic_write_bytes(out, png)
    return out


if __name__ == "__main__":
    print(write_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/viewer.png")))
