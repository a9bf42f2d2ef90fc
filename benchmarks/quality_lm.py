"""The small causal LM of bench_quality.py: corpus, model, training (cached), held-out loss.

The corpus is the prose of Python's ``pydoc_data/topics.py`` (79 help topics, ~466k
bytes), byte-level (vocabulary 256), split 90/10 by position: the last 10% is held out.
The model is a LLaMA (transformers ``LlamaForCausalLM``): 4 layers, hidden 128, 8 query
heads over 2 kv heads (GQA 4:1 as Llama-3-8B, head dim 16; Torch-Pruning 1.6.1 hangs in
``get_all_groups`` on this transformers version when a kv head serves 2 query heads), SwiGLU MLP of 384, untied embeddings. Trained
with AdamW on 128-byte windows; the checkpoint is cached under ``benchmarks/.cache``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import torch
import torch.nn.functional as F

__all__ = ["CONFIG", "TRAIN", "corpus", "build", "trained", "held_out_loss", "windows", "lm_loss", "decoder_params"]

CONFIG = dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-5)
TRAIN = dict(steps=1200, batch=16, seq=128, lr=3e-3, warmup=100, weight_decay=0.1, seed=0)
if os.environ.get("QUALITY_LM_STEPS"):  # a reduced run on a busy machine: fewer steps (another cached model)
    TRAIN["steps"] = int(os.environ["QUALITY_LM_STEPS"])
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")
SEQ = 128


def corpus() -> tuple:
    """(train bytes, held-out bytes) as int64 tensors."""
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")
    data = torch.tensor(list(text), dtype=torch.long)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(TRAIN["seed"])
    return LlamaForCausalLM(LlamaConfig(**CONFIG))


def windows(data: torch.Tensor, n: int, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``seq`` bytes."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - seq, (n,), generator=gen)
    return torch.stack([data[s:s + seq] for s in starts.tolist()])


def lm_loss(model, batch) -> torch.Tensor:
    """Next-byte cross-entropy (nats) of a batch ``{"input_ids": ...}`` (works on the captured graph too)."""
    ids = batch["input_ids"]
    out = model(input_ids=ids, use_cache=False)
    logits = out["logits"] if isinstance(out, dict) else out.logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


@torch.no_grad()
def held_out_loss(model, held: torch.Tensor, n: int = 64, batch: int = 16) -> float:
    """Mean next-byte loss (nats/token) over the first ``n`` non-overlapping windows of the held-out split."""
    seqs = held[: n * SEQ].view(-1, SEQ)
    total = 0.0
    for i in range(0, len(seqs), batch):
        total += float(lm_loss(model, {"input_ids": seqs[i:i + batch]})) * len(seqs[i:i + batch])
    return total / len(seqs)


def _key() -> str:
    blob = json.dumps([CONFIG, TRAIN], sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def _lr(step: int) -> float:
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    frac = (step - TRAIN["warmup"]) / max(1, TRAIN["steps"] - TRAIN["warmup"])
    return TRAIN["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _train(model, train: torch.Tensor, log) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], betas=(0.9, 0.95), weight_decay=TRAIN["weight_decay"])
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    model.train()
    t0, running = time.perf_counter(), None
    for step in range(TRAIN["steps"]):
        for group in opt.param_groups:
            group["lr"] = _lr(step)
        starts = torch.randint(0, len(train) - TRAIN["seq"], (TRAIN["batch"],), generator=gen).tolist()
        ids = torch.stack([train[s:s + TRAIN["seq"]] for s in starts])
        loss = lm_loss(model, {"input_ids": ids})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if step % 100 == 0 or step == TRAIN["steps"] - 1:
            log(f"  step {step:5d}  train loss {running:.3f}  ({time.perf_counter() - t0:.0f} s)")
    return {"train_loss": running, "train_seconds": time.perf_counter() - t0}


def trained(log=print, retrain: bool = False):
    """The trained LM (eval mode) and its training record; trains and caches it on first use."""
    path = os.path.join(CACHE, f"llama_{_key()}.pt")
    model = build()
    if os.path.exists(path) and not retrain:
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        return model.eval(), saved["record"]
    train, held = corpus()
    log(f"training the LM ({TRAIN['steps']} steps of {TRAIN['batch']}x{TRAIN['seq']} bytes); cached in {path}")
    record = _train(model, train, log)
    model.eval()
    record["held_out_loss"] = held_out_loss(model, held)
    os.makedirs(CACHE, exist_ok=True)
    torch.save({"state": model.state_dict(), "record": record}, path)
    return model, record


def decoder_params(model) -> int:
    """Parameters of the decoder layers (embeddings, final norm and LM head excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in f".{n}")
