"""`vidllm serve`: the vision pass kept for later questions, and the Ray Serve deployment over real HTTP.

The model is the tiny random-init one with a rigged LM head (answers alternate `<ground>` and the
word "chairs"), so grounding returns boxes and answers are text. Serve runs on a private local
Ray and 127.0.0.1, and is shut down afterwards.
"""

from __future__ import annotations

import socket

import httpx
import numpy as np
import pytest
import torch

from tests.video_files import write_grey_video
from vidllm.cli import main
from vidllm.data.video import write_video
from vidllm.errors import VidLLMError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from vidllm.artifacts.model_dir import load_pretrained, save_pretrained

    base = tmp_path_factory.mktemp("serve_model")
    assert main(["init", "--recipe", "tiny", "--out", str(base / "init")]) == 0
    model, tokenizer = load_pretrained(base / "init", merge_lora=True)  # a plain LM head to rig
    head = model.llm.get_output_embeddings().weight
    embed = model.llm.get_input_embeddings().weight
    [word] = tokenizer(" chairs", add_special_tokens=False)["input_ids"]
    ground = model.special_ids.ground
    with torch.no_grad():
        # Channel 0 of the last hidden state picks <ground> (> 0) or " chairs" (< 0); every other
        # token scores 0, so never eos. Each of the two tokens' input embeddings is so large in
        # channel 0 that the next step picks the other one: answers alternate words and boxes.
        head.zero_()
        head[ground, 0], head[word, 0] = 10.0, -10.0
        embed[ground, 0], embed[word, 0] = -1000.0, 1000.0
    return save_pretrained(model, base / "model", tokenizer)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_videos")
    grey = write_grey_video(root / "room.mp4", frames=30, size=(128, 96))
    # Distinct videos: a different frame count gives different bytes (and digests).
    others = [write_grey_video(root / f"other{i}.mp4", frames=20 + i, size=(128, 96)) for i in range(3)]
    too_many_frames = write_grey_video(root / "long.mp4", frames=45, size=(96, 64))
    slow = np.stack([np.full((64, 96, 3), 8 * i, np.uint8) for i in range(12)])
    too_long = write_video(root / "slow.mp4", slow, fps=2)  # 6 s, few frames
    return {"room": grey, "others": others, "frames": too_many_frames, "seconds": too_long}


def test_cached_vision_state_gives_identical_results(model_dir, videos, monkeypatch):
    from vidllm.inference import VideoModel

    model = VideoModel.load(model_dir, max_new_tokens=5)
    clip = model.load_video(videos["room"])
    question, phrase = "How many chairs are in the room?", "the brown table"
    plain = (model.ask(clip, question), model.ground(clip, phrase), model.reconstruct(clip, point_stride=3))
    vision = model.encode(clip)
    passes = []
    encode = model.model.encode_video
    monkeypatch.setattr(model.model, "encode_video", lambda *a, **k: (passes.append(1), encode(*a, **k))[1])
    for _ in range(2):  # the second round reuses the kept proposals, geometry and LLM prefix
        answer = model.ask(clip, question, vision=vision)
        found = model.ground(clip, phrase, vision=vision)
        recon = model.reconstruct(clip, point_stride=3, vision=vision)
        assert answer.text == plain[0].text and "chair" in answer.text
        assert found.text == plain[1].text and found.boxes.shape[0] >= 1 and found.boxes.shape[1] == 6
        np.testing.assert_array_equal(found.boxes, plain[1].boxes)
        for name in ("points", "colors", "camera_to_scene", "intrinsics", "depth"):
            np.testing.assert_array_equal(getattr(recon, name), getattr(plain[2], name))
        assert recon.scale == plain[2].scale
    assert passes == []  # no vision pass ran after `encode`
    shorter = VideoModel.load(model_dir, frames=3).load_video(videos["room"])
    with pytest.raises(VidLLMError, match="not of this clip"):  # a state of other-sized videos is refused
        model.ask(shorter, question, vision=vision)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir):
    from vidllm.serve import ServeSettings, start

    settings = ServeSettings(str(model_dir), max_new_tokens=5, cache_size=2, max_upload_bytes=100_000,
                             max_video_frames=40, max_video_seconds=5.0, timeout_s=30.0)
    running = start(settings, host="127.0.0.1", port=_free_port(), num_cpus=2)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            yield client
    finally:
        running.stop()


def _upload(client, endpoint: str, path, **params):
    return client.post(endpoint, params=params, content=path.read_bytes(), headers={"Content-Type": "video/mp4"})


def test_upload_ask_ground_reconstruct_over_http(server, model_dir, videos):
    from vidllm.inference import VideoModel

    first = _upload(server, "/ask", videos["room"], question="How many chairs are in the room?")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cache"] == "miss" and body["frames"] == [0, 10, 19, 29] and "chair" in body["answer"]
    video_id = body["video_id"]
    assert len(video_id) == 64

    again = server.post("/ask", json={"video_id": video_id, "question": "How many chairs are in the room?"})
    assert again.status_code == 200 and again.json()["cache"] == "hit"
    assert again.json()["answer"] == body["answer"]
    stats = server.get("/stats").json()["cache"]
    assert (stats["hits"], stats["misses"]) == (1, 1)

    # The same bytes uploaded again (multipart this time) hit the cache by digest.
    grounded = server.post("/ground", data={"phrase": "the brown table"},
                           files={"video": ("room.mp4", videos["room"].read_bytes(), "video/mp4")})
    assert grounded.status_code == 200, grounded.text
    found = grounded.json()
    assert found["cache"] == "hit" and found["video_id"] == video_id
    boxes = np.array(found["boxes"])
    assert boxes.ndim == 2 and boxes.shape[0] >= 1 and boxes.shape[1] == 6 and np.all(boxes[:, 3:] > 0)

    # The server's outputs are the library's, to the bit.
    local = VideoModel.load(model_dir, max_new_tokens=5)
    clip = local.load_video(videos["room"])
    assert body["answer"] == local.ask(clip, "How many chairs are in the room?").text
    np.testing.assert_array_equal(boxes, local.ground(clip, "the brown table").boxes)

    recon = server.post("/reconstruct", json={"video_id": video_id, "stride": 3})
    assert recon.status_code == 200, recon.text
    scene = recon.json()
    expected = local.reconstruct(clip, point_stride=3)
    assert scene["points_total"] == len(expected.points) and scene["point_step"] == 1
    np.testing.assert_allclose(np.array(scene["points"]), expected.points, atol=1e-5)
    np.testing.assert_allclose(np.array(scene["camera_to_scene"]), expected.camera_to_scene)
    assert np.array(scene["camera_to_scene"]).shape == (4, 4, 4) and scene["image_size"] == [70, 56]
    ply = server.post("/reconstruct", json={"video_id": video_id, "format": "ply"})
    assert ply.status_code == 200 and ply.content.startswith(b"ply\n") and ply.headers["x-cache"] == "hit"
    assert f"element vertex {len(local.reconstruct(clip).points)}\n".encode() in ply.content[:200]


def test_limits_answer_with_4xx_json(server, videos):
    def error(response, status: int) -> str:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json" and "Traceback" not in response.text
        return response.json()["error"]

    assert "100000" in error(server.post("/ask", params={"question": "q"}, content=b"\0" * 100_001), 413)
    chunked = server.post("/ask", params={"question": "q"}, content=iter([b"\0" * 60_000] * 2))  # no length
    assert "exceeds 100000" in error(chunked, 413)
    assert "45 frames" in error(_upload(server, "/ask", videos["frames"], question="q"), 413)
    assert "6.0 s" in error(_upload(server, "/ask", videos["seconds"], question="q"), 413)
    bad = error(server.post("/ask", params={"question": "q"}, content=b"\0" * 1000), 400)
    assert bad.startswith("bad video: not a readable video") and "/tmp" not in bad
    assert error(_upload(server, "/ask", videos["room"], question="  "), 400) == "the question is empty"
    assert error(server.post("/ground", json={"video_id": "ab" * 32}), 400) == "the phrase is empty"
    assert "send a video" in error(server.post("/ask", json={"question": "q"}), 400)
    assert "unknown video_id" in error(server.post("/ask", json={"video_id": "ab" * 32, "question": "q"}), 404)
    assert "unknown video_id" in error(server.post("/ask", json={"video_id": "nope", "question": "q"}), 404)
    assert "timeout" in error(_upload(server, "/ask", videos["others"][0], question="q", timeout_s=0.001), 504)
    assert error(server.get("/nowhere"), 404) == "Not Found"


def test_cache_is_bounded_lru(server, videos):
    ids = []
    for path in videos["others"]:  # capacity 2: the third upload evicts the least recently used
        response = _upload(server, "/videos", path)
        assert response.status_code == 200, response.text
        ids.append(response.json()["video_id"])
    assert len(set(ids)) == 3
    stats = server.get("/stats").json()["cache"]
    assert stats["entries"] == 2 and stats["capacity"] == 2 and stats["evictions"] >= 1
    assert server.post("/ask", json={"video_id": ids[0], "question": "q"}).status_code == 404
    assert server.post("/ask", json={"video_id": ids[2], "question": "q"}).json()["cache"] == "hit"


def test_help_explains_the_endpoints(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("/ask", "/ground", "/reconstruct", "/stats", "video_id", "--host", "413"))
