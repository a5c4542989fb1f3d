"""The report's benchmark tables, assembled from the specs' table definitions."""

from __future__ import annotations

from vidllm.eval.benchmarks import registry, tables
from vidllm.eval.report import _tables, report_tables


def test_tables_come_in_the_papers_order_with_a_paper_value_per_column():
    layout = report_tables()
    assert [t.number for t, _ in layout] == [1, 1.5, 2, 3, 4, 5, 7, 8, 9, 10]
    parts = {t.number: [name for name, _ in p] for t, p in layout}
    assert parts[1] == ["scanqa", "sqa3d"] and parts[4] == ["nr3d", "sr3d"]
    assert parts[3] == ["scanrefer", "multi3drefer"]
    assert parts[5] == ["recon", "scanqa", "scan2cap", "scanrefer"]  # Table 5's column order
    used = {name for names in parts.values() for name in names}
    assert used == set(registry.choices())  # every benchmark shows up somewhere
    assert parts[7] == ["recon", "co3d", "re10k"] and parts[8] == ["recon", "nyuv2"]  # ScanNet, then the paper's sets


def test_markdown_of_the_qa_and_joint_tables():
    metrics = {"scanqa": {"protocol": "first_camera_gt", "tokenize": "coco_ptb",
                          "metrics": {"CIDEr": 0.8, "BLEU-4": 0.1, "METEOR": 0.2, "ROUGE-L": 0.4, "EM@1": 0.25}},
               "sqa3d": {"protocol": "umeyama_sim3", "metrics": {"EM@1": 0.5}, "subgroups": {"what": {"EM@1": 1}}},
               "recon": "not a result"}
    blocks = _tables(metrics, seconds_per_scene=0.5)
    qa = blocks[:4]
    assert qa[0] == ("h2", tables.QA.title)
    assert qa[1] == ("p", "Evaluation protocol: first_camera_gt, umeyama_sim3. "
                          "ScanQA captions tokenised with 'coco_ptb'.")
    assert qa[2][1][1] == [["Vid-LLM (this run)", "80.0", "10.0", "20.0", "40.0", "25.0", "50.0"],
                           ["Vid-LLM (paper)", "101.9", "15.8", "18.3", "49.5", "27.6", "57.3"]]
    assert qa[3] == ("table", (["SQA3D EM@1 by type", "what", "is", "how", "can", "which", "others"],
                               [["Vid-LLM (this run)", "100.0", "—", "—", "—", "—", "—"]]))
    joint = blocks[blocks.index(("h2", tables.JOINT.title)):][:3]
    assert joint[1][1].startswith("Evaluation protocol: first_camera_gt. Each 3D VL column is the mean of that "
                                  "benchmark's metrics, as in the paper (scanqa: mean of CIDEr, BLEU-4, METEOR, "
                                  "ROUGE-L, EM@1; scan2cap: mean of ")
    header = ["Method", "Recon ScanNet F-score", "ScanQA", "Scan2Cap", "ScanRefer", "Time (s / scene)"]
    assert joint[2] == ("table", (header, [["Vid-LLM (this run)", "—", "35.0", "—", "—", "0.50"],
                                           ["Vid-LLM (paper)", "0.582", "45.7", "53.2", "59.8", "1.6"]]))


def test_sqa3d_breakdown_is_left_out_until_sqa3d_is_scored():
    breakdown = [b for b in _tables({}, None) if b[0] == "table" and b[1][0][0] == "SQA3D EM@1 by type"]
    assert breakdown == []
