"""The study's design as the report states it: the regime (HQ data against the budget), what a seed varies
and what it does not, and the power three seeds keep (the smallest difference they can detect)."""
from __future__ import annotations

from . import stats

PAPER_HQ = {"hq_tokens": 0.5e9, "cpt_tokens": 15e9, "label": "1:30", "reference_epochs": 3}


def section_design(res: dict) -> dict:
    cfg = res.get("config") or {}
    regime, seq = cfg.get("regime") or {}, int(cfg.get("seq_len") or 0)
    budget = float(cfg.get("cpt_tokens") or 0)
    sizes = [p.get("data_sizes") or {} for p in (res.get("pipelines") or {}).values()]
    hq_tokens = float(regime.get("hq_tokens") or 0)
    web = [s.get("web_math") for s in sizes if s.get("web_math")]
    out = {"regime": {
        "hq_ratio": regime.get("hq_ratio"), "hq_label": regime.get("hq_label"), "hq_tokens": hq_tokens,
        "cpt_tokens": budget, "realised_ratio": hq_tokens / budget if budget else None,
        "reference_epochs": regime.get("reference_epochs"),
        "reference_token_passes": (regime.get("reference_epochs") or 0) * hq_tokens,
        "hq_only_epochs": budget / hq_tokens if hq_tokens else None,
        "web_train_tokens_min": min(web) * seq if web and seq else None,
        "web_repeats": (budget > min(web) * seq) if web and seq else None,
        "hq_train_windows": [s.get("hq_math") for s in sizes], "paper": PAPER_HQ}}
    shared = cfg.get("share_base")
    corpus = cfg.get("corpus") or "default"
    varies = (["the HQ and web corpus sample (generated from corpora_seed + seed; one problem split for all seeds)"]
              if corpus == "default" else
              ["the split of the problems into train/validation/test (CHAMP: seeded by the seed)"])
    varies += ["the reference (trained from the base on that seed's HQ data, its data order seeded by the seed)",
               "the scores of the web corpus", "every arm's data order and its selection draws (random, stochastic)",
               "the evaluation questions and the multiple-choice distractors"]
    fixed = ["the hyperparameters, budgets and model preset", "the problem split (default corpora)"
             if corpus == "default" else "the CHAMP texts themselves"]
    if shared:
        fixed = ["the tokenizer, the prose and the base model (trained once, in the first seed's pipeline)"] + fixed
    else:
        varies = ["the tokenizer, the prose sample and the base model"] + varies
    out["seeds"] = {"seeds": cfg.get("seeds"), "varies": varies, "fixed": fixed, "share_base": shared}
    topk = ((res.get("best_ratio") or {}).get("topk") or {}).get("group")
    g = res.get("groups") or {}
    power = {}
    for key, label in (("target_loss", "test target loss"), ("own_answer_nll", "own gold-answer NLL"),
                       ("own_mc_acc", "own multiple-choice accuracy")):
        if topk and "clm" in g:
            d = stats.detectable(((g[topk].get(key) or {}).get("values") or []),
                                 ((g["clm"].get(key) or {}).get("values") or []))
            obs = (g[topk].get(key) or {}).get("mean"), (g["clm"].get(key) or {}).get("mean")
            power[key] = {"metric": label, "groups": [topk, "clm"], **d,
                          "observed_diff": obs[0] - obs[1] if None not in obs else None}
    out["power"] = power
    return out
