"""The HQ-size sweep: CLM, HQ-only and SLM top-k at several HQ : budget ratios.

The question of a user with a little high-quality data: use it as a reference for SLM, or train on it? At each
ratio the reference trains reference_epochs on that much HQ data and scores the corpus; HQ-only repeats the same
HQ data for the whole budget (budget / HQ epochs); CLM (on the noisy corpus, no HQ data) is the same at every
ratio. One-sided Welch tests over seeds on the final test target loss.
"""
from __future__ import annotations

from . import stats


def _vals(g: dict | None) -> list:
    return ((g or {}).get("target_loss") or {}).get("values") or []


def section_sweep(res: dict) -> dict:
    cfg = res.get("config") or {}
    regime = cfg.get("regime") or {}
    ratios, sweep_ratio = regime.get("hq_ratios") or [], regime.get("sweep_ratio")
    if len(ratios) < 2 or sweep_ratio is None:
        return {}
    g, main = res["groups"], float(regime["hq_ratio"])
    from .config import ratio_label

    rows = []
    for r in sorted(float(x) for x in ratios):
        lab = ratio_label(r)
        at = "" if r == main else f"@{lab}"
        hq, slm, ref = g.get(f"hq{at}"), g.get(f"slm-topk-{float(sweep_ratio):g}{at}"), g.get(f"reference{at}")
        rows.append({"hq_ratio": r, "label": lab, "main": r == main, "hq_group": f"hq{at}",
                     "slm_group": f"slm-topk-{float(sweep_ratio):g}{at}", "hq_epochs": None,
                     "hq_tokens": (regime.get("hq_tokens_by_ratio") or {}).get(lab, round(r * float(cfg.get("cpt_tokens")
                                                                                                 or 0))),
                     "clm": (g.get("clm") or {}).get("target_loss"), "hq": (hq or {}).get("target_loss"),
                     "slm": (slm or {}).get("target_loss"), "reference": (ref or {}).get("target_loss"),
                     "slm_vs_hq": stats.compare(_vals(slm), _vals(hq), True),
                     "slm_vs_clm": stats.compare(_vals(slm), _vals(g.get("clm")), True),
                     "hq_vs_clm": stats.compare(_vals(hq), _vals(g.get("clm")), True)})
    for row in rows:  # the budget over the HQ tokens it repeats
        row["hq_epochs"] = float(cfg.get("cpt_tokens") or 0) / row["hq_tokens"] if row["hq_tokens"] else None
    wins = [row["label"] for row in rows if row["slm_vs_hq"]["verdict"] == stats.HOLDS]
    loses = [row["label"] for row in rows if row["slm_vs_hq"]["verdict"] == stats.FAILS]
    if wins and loses:
        where = (f"SLM beats HQ-only at {', '.join(wins)} and HQ-only beats SLM at {', '.join(loses)} (p < 0.05): "
                 "with that much HQ data, training on it is better than using it as a reference")
    elif wins:
        where = f"SLM beats HQ-only at every ratio where the difference is significant ({', '.join(wins)})"
    elif loses:
        where = f"HQ-only beats SLM at {', '.join(loses)}; SLM never significantly beats it"
    else:
        where = "no significant difference between SLM and HQ-only at any ratio"
    return {"definition": __doc__.split("\n\n", 1)[1].strip(), "sweep_ratio": sweep_ratio, "rows": rows,
            "summary": where}
