"""SLM's full cost: FLOPs and wall time of every arm, the reference it needs and the scoring pass.

FLOPs per token (Kaplan et al.; PaLM's attention term), with N the parameters that take part in a matrix
product for every token (all but the input embedding, a lookup), L layers, d the model width and T the
window length:

* training: 6·N + 12·L·d·T (forward and backward); a LoRA arm: 4·N + 6·N_trainable + 12·L·d·T (the frozen
  weights' gradients are skipped);
* a forward pass (scoring with the reference): 2·N + 4·L·d·T.

An SLM arm's cost is its own training plus the reference's training and the scoring pass over the corpus;
CLM and HQ-only pay their training only (the base is shared by every arm and not counted). The speed-up to
CLM's final test target loss is given in training tokens (the paper's measure) and in total FLOPs, and
amortised over k runs that share one reference and one scoring pass:
``speed-up_FLOPs(k) = F_CLM(B) / (F_train(t_SLM) + (F_reference + F_score) / k)``, where t_SLM is the tokens
the SLM arm needs to reach CLM's final loss and B the budget; k → ∞ gives the token speed-up.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..files import read_json
from . import stats
from .results import StudyResults, needs_reference

AMORTISE = (1, 3, 10)


def model_shape(ckpt) -> dict:
    """Parameters of a checkpoint from its safetensors headers (no weights loaded): total, input embedding,
    N (total minus the embedding), layers and width from config.json."""
    import json
    import struct

    d = Path(ckpt)
    total = emb = 0
    for f in sorted(d.glob("model*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for x in t["shape"]:
                n *= x
            total += n
            emb += n if name.endswith("embed_tokens.weight") or name.endswith("wte.weight") else 0
    cfg = read_json(d / "config.json")
    return {"parameters": total, "embedding": emb, "N": total - emb, "layers": cfg.get("num_hidden_layers"),
            "width": cfg.get("hidden_size")}


def flops_per_token(shape: dict, seq_len: int, train: bool = True, trainable: int | None = None) -> float:
    attn = 4.0 * shape["layers"] * shape["width"] * seq_len
    if not train:
        return 2.0 * shape["N"] + attn
    if trainable is not None:  # LoRA
        return 4.0 * shape["N"] + 6.0 * trainable + 3 * attn
    return 6.0 * shape["N"] + 3 * attn


def _trainable(run_dir: Path) -> int | None:
    rj = run_dir / "run.json"
    if not rj.is_file():
        return None
    lora = read_json(rj).get("lora") or {}
    return lora.get("trainable_parameters") if lora else None


def section_cost(st: StudyResults, runs: dict, efficiency: dict) -> dict:
    """Per arm and seed: training, reference and scoring FLOPs and wall seconds; per group the speed-up to
    CLM's final test target loss in tokens and in FLOPs (and amortised over k runs)."""
    cfg_seq = int(st.index.get("seq_len") or 256)
    timings = st.index.get("timings") or {}
    shape = model_shape(st.path(st.pipeline(st.seeds[0])["base"]["checkpoint"]))
    fwd, train = flops_per_token(shape, cfg_seq, train=False), flops_per_token(shape, cfg_seq)
    per_seed: dict = {}
    for s in st.seeds:
        pl = st.pipeline(s)
        refs = pl.get("references") or {"main": {"run_dir": pl["reference"]["run_dir"], "scores": pl["scores"]}}
        per_seed[str(s)] = {}
        for label, ref in refs.items():
            rdir = st.path(ref["run_dir"])
            rj = read_json(rdir / "run.json") if (rdir / "run.json").is_file() else {}
            mf = st.path(ref["scores"]) / "manifest.json"
            scored = float(read_json(mf)["windows"] * read_json(mf)["seq_len"]) if mf.is_file() else None
            tag = f"s{s} reference" + ("" if label == st.index.get("regime", {}).get("hq_label", label) else f" {label}")
            stag = tag.replace("reference", "score")
            per_seed[str(s)][label] = {
                "reference_tokens": rj.get("tokens"), "scored_tokens": scored,
                "reference_flops": train * rj["tokens"] if rj.get("tokens") else None,
                "score_flops": fwd * scored if scored else None,
                "reference_seconds": timings.get(tag), "score_seconds": timings.get(stag)}
    arms, eff = {}, (efficiency or {}).get("runs") or {}
    for name, r in runs.items():
        rd = next((x["run_dir"] for x in st.all_runs if x["name"] == name), None)
        lora = _trainable(st.path(rd)) if rd else None
        per_tok = flops_per_token(shape, cfg_seq, trainable=lora)
        tokens = float(r["final"]["tokens"] or 0)
        ref = per_seed[str(r["seed"])].get(r.get("hq_label")) or next(iter(per_seed[str(r["seed"])].values()))
        needs_ref = needs_reference(r)
        over = (ref["reference_flops"] or 0) + (ref["score_flops"] or 0) if needs_ref else 0.0
        e = eff.get(name) or {}
        t_reach = (e.get("final") or {}).get("tokens_run") if (e.get("final") or {}).get("reached") else None
        measured = name in eff and "curve" in e  # CLM (the baseline) and sweep arms have no speed-up
        f_clm = train * tokens  # CLM's FLOPs to its final point (same budget, same model)
        row = {"group": r["group"], "seed": r["seed"], "tokens": tokens, "train_flops": per_tok * tokens,
               "reference_flops": ref["reference_flops"] if needs_ref else 0.0,
               "score_flops": ref["score_flops"] if needs_ref else 0.0, "total_flops": per_tok * tokens + over,
               "train_seconds": timings.get(f"arm {name}"),
               "overhead_seconds": ((ref["reference_seconds"] or 0) + (ref["score_seconds"] or 0)) if needs_ref else 0.0,
               "measured": measured, "speedup_tokens": tokens / t_reach if t_reach else None,
               "speedup_flops": {str(k): f_clm / (per_tok * t_reach + over / k) if t_reach else None for k in AMORTISE}}
        arms[name] = row
    groups: dict = {}
    for name, row in arms.items():
        groups.setdefault(row["group"], []).append(row)
    out_groups = {}
    for g, rows in groups.items():
        unreached = sum(r["measured"] and r["speedup_tokens"] is None for r in rows)
        out_groups[g] = {"n": len(rows), "unreached": unreached, "measured": any(r["measured"] for r in rows),
                         **{k: stats.summary([r[k] for r in rows]) for k in
                            ("train_flops", "reference_flops", "score_flops", "total_flops", "train_seconds",
                             "overhead_seconds")},
                         "speedup_tokens": stats.summary([r["speedup_tokens"] for r in rows]),
                         "speedup_flops": {k: stats.summary([r["speedup_flops"][k] for r in rows]) for k in
                                           map(str, AMORTISE)}}
    stage: dict = {}
    for k, v in timings.items():  # "s0 reference 1:30" -> reference, "arm clm-s0" -> arm, "evaluate" -> evaluate
        if k == "report":  # rewritten by every invocation: not a stage's cost
            continue
        m = re.match(r"s\d+ (\S+)", k)
        stage.setdefault(m.group(1) if m else k.split(" ")[0], []).append(float(v))
    return {"definition": __doc__.split("\n\n", 1)[1].strip(), "model": shape, "seq_len": cfg_seq,
            "flops_per_token": {"train": train, "forward": fwd}, "amortise": list(AMORTISE),
            "pipelines": per_seed, "runs": arms, "groups": out_groups,
            "stage_seconds": {k: {"total": sum(v), "count": len(v)} for k, v in stage.items()}}
