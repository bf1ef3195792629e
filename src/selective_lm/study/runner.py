"""`slm study`: run (or resume) the stages of a study directory, then write the report."""
from __future__ import annotations

import time
from pathlib import Path

from .config import StudyConfig
from .layout import Study
from .plan import eta, measured_rates, stage_seconds

def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run(study: Study) -> Path:
    """Run the study's unfinished stages in order, printing each with its ETA; then the report."""
    from .report import write_report
    from .stages import build_stages

    study.check_dir()
    stages = build_stages(study)
    total = len(stages)
    t_start = time.perf_counter()
    done: dict[str, tuple[float, float]] = {}  # kind -> (tokens, seconds) of the stages run so far
    for i, st in enumerate(stages, 1):
        if st.done:
            print(f"[{i}/{total}] {st.name}: cached", flush=True)
            continue
        rates = measured_rates(done)  # refined by every training/scoring stage that finished
        speed = f" at {rates[st.kind]:,.0f} tok/s measured" if st.kind in done else ""
        print(f"[{i}/{total}] {st.name}: {st.detail} (stage ~{_fmt(stage_seconds(st, rates))}{speed}, "
              f"study ETA {_fmt(eta(stages[i - 1:], rates))})", flush=True)
        t0 = time.perf_counter()
        work = st.run()
        seconds = time.perf_counter() - t0
        study.timings[st.name] = round(seconds, 2)
        study.save_timings()
        if st.kind:
            tokens = work if isinstance(work, (int, float)) and work > 0 else st.tokens
            was = done.get(st.kind, (0.0, 0.0))
            done[st.kind] = (was[0] + tokens, was[1] + seconds)
    t0 = time.perf_counter()
    study.write_index()
    report = write_report(study.root, writer="slm study")
    study.timings["report"] = round(time.perf_counter() - t0, 2)
    study.write_index()
    study.save_timings()
    print(f"study finished in {_fmt(time.perf_counter() - t_start)}: {report}", flush=True)
    return report



def run_study(cfg: StudyConfig) -> Path:
    """Run (or resume) the study, holding its directory's lock; ``--overwrite`` deletes the earlier
    study only once the new report exists (a failed new study brings the old one back)."""
    from ..files import DirLock, replacing

    root = Path(cfg.out)
    with DirLock(root, "study directory", inside=False), \
            replacing(root, cfg.overwrite, lambda p: (p / "report" / "report.md").is_file(),
                      lambda p: (p / "study.yaml").is_file()):
        return run(Study(cfg))




__all__ = ["run", "run_study"]
