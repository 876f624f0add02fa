"""Model forward + backward rate on CPU: memo's MemoBert against transformers' BertModel.

Builds ``MemoBert(preset)`` and a transformers ``BertModel`` of the same sizes (layers, hidden,
heads, intermediate, activation, dropout, vocabulary, eps; attention "sdpa"), both in train
mode (dropout on). memo gets a batch of ``--batch`` examples of ``--text`` word pieces +
[CLS]/[SEP] and ``--faces`` 342-d faces (full lengths: no padding); the baseline gets the same
total sequence length (text + 2 + faces) as ``inputs_embeds`` (the brief's comparison: no
word-embedding lookup, no face projection) and, for information, as ``input_ids`` (with the
word-embedding lookup and its gradient, as memo has). Times forward + ``hidden.mean()`` (plus
the pooled output's mean) + backward, round robin (``--repeat`` rounds of ``--iters`` timed
iterations after ``--warmup``), best round. Goal: memo / baseline >= 1 (parity).
"""
from __future__ import annotations

import time

import torch

from memotrain.config import preset
from memotrain.model import MemoBert

from .common import met, parser, ratio, report

GOAL = 1.0


def hf_model(cfg):
    from transformers import BertConfig, BertModel

    hf = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden,
                    num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                    intermediate_size=cfg.intermediate, hidden_act=cfg.hidden_act,
                    hidden_dropout_prob=cfg.dropout,
                    attention_probs_dropout_prob=cfg.attention_dropout,
                    max_position_embeddings=max(cfg.max_text_positions, 512),
                    type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps)
    try:
        return BertModel(hf, attn_implementation="sdpa")
    except (TypeError, ValueError):
        return BertModel(hf)


def timed_iters(step, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return time.perf_counter() - t


def main(argv=None) -> str:
    ap = parser(__doc__, segments=0)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text", type=int, default=30, help="word pieces per text (+ CLS, SEP)")
    ap.add_argument("--faces", type=int, default=36)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per round")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (best reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = preset(args.preset)
    B, T = args.batch, args.text + 2
    L = T + args.faces
    memo, hf = MemoBert(cfg).train(), hf_model(cfg).train()
    ids = torch.randint(1000, cfg.vocab_size, (B, T))
    faces = torch.randn(B, args.faces, cfg.face_dim)
    text_lens, face_lens = torch.full((B,), T), torch.full((B,), args.faces)
    embeds = torch.randn(B, L, cfg.hidden)
    hf_ids = torch.randint(1000, cfg.vocab_size, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)

    def memo_step():
        out = memo(ids, text_lens, faces, face_lens)
        (out.hidden.mean() + out.pooled.mean()).backward()

    def hf_embeds_step():
        out = hf(inputs_embeds=embeds, attention_mask=mask)
        (out.last_hidden_state.mean() + out.pooler_output.mean()).backward()

    def hf_ids_step():
        out = hf(input_ids=hf_ids, attention_mask=mask)
        (out.last_hidden_state.mean() + out.pooler_output.mean()).backward()

    steps = {"memo": memo_step, "hf_embeds": hf_embeds_step, "hf_ids": hf_ids_step}
    for fn in steps.values():
        timed_iters(fn, args.warmup)
    best = {k: float("inf") for k in steps}
    for _ in range(args.repeat):
        for k, fn in steps.items():
            for m in (memo, hf):
                m.zero_grad(set_to_none=True)
            best[k] = min(best[k], timed_iters(fn, args.iters) / args.iters)
    eps = {k: B / v for k, v in best.items()}
    r = eps["memo"] / eps["hf_embeds"]
    rows = [["transformers BertModel, inputs_embeds (baseline)", f"{best['hf_embeds']:.3f}",
             f"{eps['hf_embeds']:.2f}", "1.00x", "", ""],
            ["transformers BertModel, input_ids (word-embedding lookup + its gradient)",
             f"{best['hf_ids']:.3f}", f"{eps['hf_ids']:.2f}",
             ratio(eps["hf_ids"] / eps["hf_embeds"]), "", ""],
            ["memo MemoBert (text ids + faces)", f"{best['memo']:.3f}", f"{eps['memo']:.2f}",
             ratio(r), f">= {GOAL:g}x (parity)", met(r >= GOAL)]]
    notes = [
        f"preset {args.preset!r} ({cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, "
        f"intermediate {cfg.intermediate}; memo {sum(p.numel() for p in memo.parameters()):,} "
        f"parameters, BertModel {sum(p.numel() for p in hf.parameters()):,}); batch {B}, "
        f"text {args.text} + [CLS]/[SEP], {args.faces} faces of {cfg.face_dim}-d: sequence "
        f"{L}, no padding; train mode (dropout on); memo vs BertModel with inputs_embeds "
        f"also of {L} positions; memo/BertModel(input_ids) = "
        f"{ratio(eps['memo'] / eps['hf_ids'])}",
        f"one iteration = forward + mean of the last hidden states and the pooled output + "
        f"backward (no optimizer step); {args.warmup} untimed iterations each, then "
        f"{args.repeat} rounds (round robin) of {args.iters} timed iterations, best round; "
        f"torch {torch.__version__}, {args.threads} threads",
    ]
    return report("train_model", f"Model forward + backward on CPU ({args.preset})",
                  ["model", "s / iteration", "examples/s", "vs baseline", "goal", "met"],
                  rows, notes)


if __name__ == "__main__":
    main()
