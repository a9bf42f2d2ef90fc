"""Load pruned checkpoints in this (fresh) process and compare with the logits saved beside them.

    python tests/hf_roundtrip.py DIR [DIR ...]      # one JSON line per directory

Each DIR holds a checkpoint written by ``fxprune.hf.save_pretrained`` and ``ref.pt`` (inputs and the
first output of the pruned model, at another batch size than it was pruned with). A stock checkpoint
is loaded with plain transformers (the class its config names); a per-layer one with
``fxprune.hf.from_pretrained``, after checking that plain transformers refuses it.
Used by tests/test_hf_families.py and benchmarks/bench_hf.py.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def first_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_output(out[0])
    return next(v for v in out.values() if isinstance(v, torch.Tensor))


def _call(model, inputs: dict):
    import inspect

    kw = dict(inputs)
    if "use_cache" in inspect.signature(model.forward).parameters:
        kw["use_cache"] = False
    with torch.no_grad():
        return first_output(model(**kw))


def _plain_refuses(path: str) -> str:
    """How plain transformers' Auto classes answer a per-layer checkpoint ('' if they load it)."""
    import transformers as T

    try:
        T.AutoConfig.from_pretrained(path)
    except ValueError as e:
        return str(e).splitlines()[0][:240]
    return ""


def check(path: str) -> dict:
    import transformers as T

    import fxprune.hf

    with open(os.path.join(path, "config.json")) as f:
        per_layer = "fxprune" in json.load(f)
    ref = torch.load(os.path.join(path, "ref.pt"))
    row = {"dir": path, "loader": "fxprune.hf.from_pretrained" if per_layer else "transformers"}
    try:
        if per_layer:
            row["plain_refuses"] = _plain_refuses(path)
            model = fxprune.hf.from_pretrained(path)
        else:
            cfg = T.AutoConfig.from_pretrained(path)
            model = getattr(T, cfg.architectures[0]).from_pretrained(path).eval()
        out = _call(model, ref["inputs"])
        row["equal"] = bool(out.shape == ref["output"].shape and torch.equal(out, ref["output"]))
        row["max_abs"] = float((out - ref["output"]).abs().max()) if out.shape == ref["output"].shape else None
    except Exception as e:  # reported, not raised: the caller decides
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row


def main(dirs) -> int:
    from zoo import import_torchvision

    warnings.filterwarnings("ignore")
    import_torchvision()
    import transformers as T

    T.logging.set_verbosity_error()
    torch.set_num_threads(1)
    for d in dirs:
        print(json.dumps(check(d)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
