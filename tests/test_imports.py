import subprocess
import sys

FORBIDDEN = ["ray", "prefect", "dvc", "boto3", "botocore"]


def test_models_and_inference_import_without_pipeline_packages():
    """Import the model/inference modules in an interpreter where the pipeline packages are
    unavailable (sys.modules[name] = None makes `import name` fail and find_spec return None),
    i.e. a model-only install. Note: when boto3 *is* installed, accelerate (pulled in by
    transformers) imports it on its own; that is not our import."""
    modules = ["vidllm.models", "vidllm.models.vidllm", "vidllm.artifacts.model_dir", "vidllm.plan", "vidllm.tokenizer",
               "vidllm.lora", "vidllm.attention_select"]
    modules += ["vidllm.inference", "vidllm.data.video", "vidllm.commands.ask", "vidllm.commands.ground",
                "vidllm.commands.reconstruct"]
    code = (
        "import importlib, sys\n"
        f"for name in {FORBIDDEN!r}: sys.modules[name] = None\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"loaded = [n for n in {FORBIDDEN!r} if sys.modules.get(n) is not None]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
