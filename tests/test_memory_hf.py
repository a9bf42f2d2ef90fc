"""The CLI's default path on a few-hundred-MB checkpoint: exit 0, the output loads, and the child's peak
resident memory stays within the estimate it printed (Note [Choosing the path] in fxprune/hf/memory.py)."""
import os
import re
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from zoo import import_torchvision  # noqa: E402

import_torchvision()
T = pytest.importorskip("transformers")
import hf_tiny  # noqa: E402

# the child's peak: ru_maxrss of the processes this small wrapper waited for (kB on Linux)
_PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def run_cli_measured(argv: list) -> tuple:
    """``(exit code, stdout, stderr, peak RSS bytes)`` of ``python -m fxprune *argv`` in a child process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "fxprune", *argv],
                       capture_output=True, text=True, env=env, timeout=3600)
    peak = int(re.search(r"peak_kb (\d+)", p.stderr).group(1)) * 1024
    return p.returncode, p.stdout, p.stderr, peak


def printed_estimate(stderr: str) -> float:
    """Bytes of the estimate the CLI printed for the path it took."""
    return float(re.search(r"estimated peak (?:in memory|streamed) ([\d.]+) GiB", stderr).group(1)) * 2**30


@pytest.mark.slow
def test_default_path_on_a_gqa_checkpoint_stays_within_its_estimate(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "out"
    size = hf_tiny.write_llama_checkpoint(str(ck), hidden=1024, layers=8, heads=8, kv_heads=2, mlp=2800)
    assert 0.25e9 < size < 0.4e9 and len([f for f in os.listdir(ck) if f.endswith(".safetensors")]) > 1
    code, stdout, stderr, peak = run_cli_measured([f"hf:{ck}", "--ratio", "0.2", "--importance", "l2",
                                                   "--out", str(out)])
    assert code == 0, stderr[-3000:]
    assert "memory: " in stderr
    assert peak <= printed_estimate(stderr), (peak, stderr)
    import fxprune.hf
    back = fxprune.hf.from_pretrained(str(out))
    assert isinstance(back, T.LlamaForCausalLM) and back.config.intermediate_size <= 2800
    with torch.no_grad():
        logits = back(torch.randint(0, 32000, (1, 6))).logits
    assert logits.shape == (1, 6, 32000) and torch.isfinite(logits).all()


def test_a_bf16_model_certifies_in_float32():
    """The float32 certificate (chosen for a model too large for float64 checks) follows a bf16 graph's own
    casts back to bf16: it failed with "Tensor dtype mismatch! Expected: BFloat16, Got: float"."""
    import fxprune
    from fxprune.checks.certificate import certify
    model, inputs = hf_tiny.build("llama")
    model = model.to(torch.bfloat16)
    dg = fxprune.analyze(model, (), inputs(1, 7))
    numel = sum(t.numel() for t in (*dg.gm.parameters(), *dg.gm.buffers()) if t.is_floating_point())
    cert = certify(dg, max_bytes=2 * 3 * 4 * numel)  # a float64 copy does not fit, a float32 one does
    assert cert.dtype == "float32" and cert.passed and cert.error < 1e-5, cert
