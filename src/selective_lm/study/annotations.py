"""What annotated real text lets the study ask (CHAMP): does the document filter rank the solutions with an
annotated error lower than those annotated correct?

Per seed, `slm filter` scores every web-math train row by its mean reference loss; the rows carry their
annotation (``error``: "first wrong step annotated", "no mistake" or "unannotated"). AUC = P(score of a solution
with an annotated error > score of one annotated correct), ties counting half (the Mann–Whitney U over the
product of the counts): 0.5 = no better than chance, 1 = every erroneous solution scores worse (higher
reference loss, so the filter drops it first). One-sided Mann–Whitney p per seed; the AUCs over seeds against
0.5 with a one-sample t-test.
"""
from __future__ import annotations

import json
from pathlib import Path

from scipy import stats as sps

from . import stats
from .results import StudyResults

ERROR, CLEAN = "first wrong step annotated", "no mistake"


def section_filter(st: StudyResults) -> dict:
    seeds = {}
    for s in st.seeds:
        d = st.pipeline(s).get("filter")
        if not d:
            return {}
        rows = []
        for f in sorted(st.path(d).glob("kept.jsonl")):
            rows += [json.loads(line) for line in Path(f).read_text(encoding="utf-8").splitlines() if line.strip()]
        err = [r["slm_doc_score"] for r in rows if r.get("error") == ERROR and r.get("slm_doc_score") is not None]
        ok = [r["slm_doc_score"] for r in rows if r.get("error") == CLEAN and r.get("slm_doc_score") is not None]
        if not err or not ok:
            seeds[str(s)] = {"n_error": len(err), "n_clean": len(ok), "auc": None, "p": None}
            continue
        u = sps.mannwhitneyu(err, ok, alternative="greater")
        seeds[str(s)] = {"n_error": len(err), "n_clean": len(ok), "auc": float(u.statistic) / (len(err) * len(ok)),
                         "p": float(u.pvalue), "mean_error": sum(err) / len(err), "mean_clean": sum(ok) / len(ok)}
    if not seeds:
        return {}
    aucs = [v["auc"] for v in seeds.values()]
    return {"definition": __doc__.split("\n\n", 1)[1].strip(), "doc_score": "ref_loss", "seeds": seeds,
            "auc": stats.one_sample(aucs, 0.5)}
