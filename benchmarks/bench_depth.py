"""Depth pruning on a small trained causal LM: which 25% of the blocks to remove, and depth vs width.

The model is a LLaMA (transformers ``LlamaForCausalLM``) like the LM of bench_quality.py but
smaller and deeper, so that 25% of the blocks is more than one: 8 layers, hidden 64, 4 query
heads over 2 kv heads, SwiGLU MLP of 192, byte vocabulary, trained on the same corpus
(``quality_lm.corpus``: Python's help topics) for ``--steps`` AdamW steps (cached under
``benchmarks/.cache``). No fine-tuning after pruning: the held-out next-byte loss of the
pruned model as it comes out.

Rows: each block criterion of ``fxprune.prune(depth_ratio=0.25)`` (angular and cosine distance
of the residual stream, the loss increase, on the same calibration windows), removing the last
blocks, random blocks (3 seeds), and width pruning to the parameter count of the depth-pruned
model (``target_params``, global ranking, L2 and Wanda). Writes ``benchmarks/DEPTH.md``.

    python benchmarks/bench_depth.py [--steps 100] [--eval-windows 32]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from zoo import import_torchvision  # noqa: E402

import_torchvision()  # transformers imports torchvision: nms schema shim on a CUDA wheel over CPU torch
import fxprune  # noqa: E402
import quality_lm as Q  # noqa: E402

CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=8, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, rms_norm_eps=1e-5)
SEQ, BATCH, LR = 64, 16, 3e-3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG))


def trained(steps: int):
    path = os.path.join(Q.CACHE, f"depth_llama_{steps}.pt")
    model = build()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path))
        return model.eval()
    train, _ = Q.corpus()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:  # warmup then cosine to 10%
            g["lr"] = LR * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        starts = torch.randint(0, len(train) - SEQ, (BATCH,), generator=gen).tolist()
        loss = Q.lm_loss(model, {"input_ids": torch.stack([train[s:s + SEQ] for s in starts])})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            log(f"  step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - t0:.0f} s)")
    os.makedirs(Q.CACHE, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def held_out(model, held: torch.Tensor, n: int) -> float:
    seqs = held[: n * SEQ].view(-1, SEQ)
    return sum(float(Q.lm_loss(model, {"input_ids": s})) * len(s) for s in seqs.split(16)) / len(seqs)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = trained(args.steps)
    train, held = Q.corpus()
    cal = [{"input_ids": w, "use_cache": False} for w in Q.windows(train, 16, seq=SEQ, seed=1000).split(8)]
    dg = fxprune.analyze(model, (), {"input_ids": Q.windows(train, 2, seq=SEQ, seed=99), "use_cache": False})
    blocks = fxprune.removable_blocks(dg)
    dense_loss, dense_params = held_out(model, held, args.eval_windows), n_params(model)
    log(f"dense: {dense_params} params, held-out loss {dense_loss:.4f}; {len(blocks)} removable blocks")
    rows = []

    def record(label: str, step, seconds: float) -> None:
        loss = held_out(step.model, held, args.eval_windows)
        rows.append((label, ", ".join(b.rsplit(".", 1)[1] for b in step.blocks) or "-", n_params(step.model), loss,
                     seconds))
        log(f"{label}: {rows[-1]}")

    depth_params = None
    for crit, seeds in (("angular", [0]), ("cosine", [0]), ("loss", [0]), ("last", [0]), ("random", [0, 1, 2])):
        for seed in seeds:
            t = time.perf_counter()
            cfg = fxprune.PruneConfig(ratio=0.0, depth_ratio=0.25, block_importance=crit)
            if crit == "random":
                from fxprune.policy.depth import score_blocks, select_blocks
                chosen = select_blocks(dg, 0.25, score_blocks(dg, "random", seed=seed))
                cfg = fxprune.PruneConfig(ratio=0.0, depth_ratio=tuple(b.name for b in chosen))
            step = fxprune.prune_step(dg, cfg, data=cal, loss_fn=Q.lm_loss, check=False)
            record(f"depth: {crit}" + (f" (seed {seed})" if crit == "random" else ""), step, time.perf_counter() - t)
            depth_params = n_params(step.model)
    for imp in ("l2", "wanda"):
        t = time.perf_counter()
        step = fxprune.prune_step(dg, scope="global", factors="outer", ignore=("model.embed_tokens", "lm_head"),
                                  importance=imp, target_params=float(depth_params), data=cal, check=False)
        record(f"width at equal params: {imp}", step, time.perf_counter() - t)
    write(rows, dense_loss, dense_params, args, len(blocks))


def write(rows: list, dense: float, params: int, args, n_blocks: int) -> None:
    lines = [
        "# Depth pruning: which blocks, and depth vs width",
        "",
        "Generated by `benchmarks/bench_depth.py` (do not edit by hand). A LLaMA of "
        f"{CONFIG['num_hidden_layers']} layers (hidden {CONFIG['hidden_size']}, GQA 4:2, MLP "
        f"{CONFIG['intermediate_size']}, bytes) trained {args.steps} steps on the corpus of bench_quality; "
        f"{n_blocks} removable blocks found by the analysis (one per decoder layer); 25% of them removed; "
        f"held-out next-byte loss on {args.eval_windows} windows of {SEQ} bytes, no fine-tuning. "
        "Calibration: 16 training windows (block criteria and Wanda alike).",
        "",
        f"Dense: {params} parameters, held-out loss **{dense:.4f}** nats/byte.",
        "",
        "| method | layers removed | params | share kept | held-out loss | vs dense | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, removed, p, loss, sec in rows:
        lines.append(f"| {label} | {removed} | {p} | {p / params:.1%} | {loss:.4f} | {loss - dense:+.4f} | {sec:.1f} |")
    lines += ["", "Random rows show the spread a choice of blocks has on this model: read each criterion against "
              "it. The LM is small and briefly trained (a shared 2-core machine); `--steps` trains a stronger one.",
              "", "Machine: 2 shared CPU cores; seconds include scoring and rewriting (not the evaluation)."]
    with open(os.path.join(HERE, "DEPTH.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
