import importlib.util
import json
import subprocess
import sys


def test_models_and_inference_import_without_pipeline_packages():
    modules = ["vidllm.models", "vidllm.models.vidllm", "vidllm.checkpoint", "vidllm.plan", "vidllm.tokenizer"]
    modules += [m for m in ("vidllm.inference",) if importlib.util.find_spec(m) is not None]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} & {'ray', 'prefect', 'dvc', 'boto3', 'botocore'})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
