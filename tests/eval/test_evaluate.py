"""`evaluate_run` input checks (the full predict + score path runs in tests/flows: Prefect flow and DVC stage)."""

import pytest

from vidllm.errors import DataError, VidLLMError
from vidllm.eval.evaluate import evaluate_run, format_metrics_table


def test_bad_inputs_fail_before_any_prediction(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(VidLLMError, match="unknown benchmark"):
        evaluate_run(tmp_path / "model", str(tmp_path / "shards"), run, annotations=None, scans=None,
                     benchmarks=["scanqa", "nope"])
    with pytest.raises(VidLLMError, match="need --annotations"):
        evaluate_run(tmp_path / "model", str(tmp_path / "shards"), run, annotations=None, scans=None,
                     benchmarks=["scanqa"])
    with pytest.raises(DataError, match=r"missing_ann: annotation folder not found"):
        evaluate_run(tmp_path / "model", str(tmp_path / "shards"), run, annotations=tmp_path / "missing_ann",
                     scans=None)
    with pytest.raises(VidLLMError, match=r"s3://bucket/scans: scoring reads ScanNet scans folder from a local"):
        evaluate_run(tmp_path / "model", str(tmp_path / "shards"), run, annotations=None, scans="s3://bucket/scans",
                     benchmarks=["recon"])
    assert not (run / "metrics.json").exists()


def test_metrics_table_lists_benchmarks_in_order():
    table = format_metrics_table({"recon": {"count": 2, "metrics": {"depth/delta1": 0.5}},
                                  "scanqa": {"count": 3, "metrics": {"EM@1": 0.25}}, "ablations": {}})
    lines = table.splitlines()
    assert lines[0].startswith("scanqa") and "EM@1 0.250" in lines[0]
    assert lines[1].startswith("recon") and "n=2" in lines[1]
