"""A full disk is one line naming the path, exit 2, never a traceback or a SIGBUS, and it leaves nothing that
looks complete: on a real tmpfs where this machine lets the test mount one (else skipped with the reason),
and with a simulated ENOSPC at each kind of write (safetensors, torch.save, a reserved memmap, a plain write)."""
import contextlib
import errno
import os
import shutil
from pathlib import Path

import pytest
from disk_full import files_of, mount_refusal, slm, tmpfs

from selective_lm.cli import main

REFUSAL = mount_refusal()
needs_tmpfs = pytest.mark.skipif(REFUSAL is not None, reason=f"no real full disk: {REFUSAL}")


def full_disk_line(code: int, err: str, where: Path) -> str:
    """Exit 2, one stderr line that names ``where`` (a path on the full filesystem), no doubled colon."""
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("slm: warning")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"slm: error: no space left on {Path(where).resolve()}") and "::" not in err, err
    return lines[0]


def nothing_looks_complete(root: Path, before: dict | None = None) -> None:
    after = files_of(root)
    assert not [p for p in after if p.name.endswith((".tmp", ".old")) or p.name in ("run.json", "manifest.json")
                and p not in (before or {})], sorted(after)
    for p, data in (before or {}).items():  # what was there stays as it was
        assert after.get(p) == data, p


@pytest.fixture
def full(tmp_path):
    """full(size) mounts a tmpfs of ``size`` bytes at tmp_path/mnt for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda size: stack.enter_context(tmpfs(tmp_path / "mnt", size))


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size


# --------------------------------------------------------------------------- a real full disk (tmpfs)
@needs_tmpfs
@pytest.mark.parametrize("part", ["model.safetensors", "training_state.pt"])
def test_train_on_a_full_disk(tiny_data, reference, full, capsys, part):
    weights = size_of(reference / "ref" / "final" / "model.safetensors")
    # the weights do not fit; or they do, and the optimizer state (2 moments: twice their size) does not
    m = full(weights // 2 if part == "model.safetensors" else int(weights * 1.8))
    code = main([str(a) for a in ["train", "--data", tiny_data, "--out", m / "run", "--batch-size", 4, "--max-steps", 2,
                                  "--ckpt-every", 1, "--no-progress"]])
    line = full_disk_line(code, capsys.readouterr().err, m / "run" / "checkpoints" / "step_000001")
    assert line.split(":")[2].strip().endswith("step_000001" if part == "model.safetensors" else part), line
    assert "--resume" in line  # the run has started: the same command continues it with --resume
    nothing_looks_complete(m)
    assert not list((m / "run" / "checkpoints").iterdir())


@needs_tmpfs
def test_prepare_and_score_on_a_full_disk(tiny_data, reference, full, capsys, tmp_path):
    from conftest import make_corpus

    make_corpus(tmp_path / "c.jsonl", n_docs=60)
    m = full(16 * 1024)
    code = main([str(a) for a in ["prepare", "--inputs", tmp_path / "c.jsonl", "--out", m / "ds", "--vocab-size", 300,
                                  "--seq-len", 32, "--no-progress"]])
    full_disk_line(code, capsys.readouterr().err, m / "ds")
    nothing_looks_complete(m)
    assert not (m / "ds").exists()
    scores = size_of(reference / "scores" / "ref_losses.bin")
    code = main([str(a) for a in ["score", "--data", tiny_data, "--model", reference / "ref" / "final", "--out",
                                  m / "s", "--no-progress"]])
    full_disk_line(code, capsys.readouterr().err, m / "s")
    nothing_looks_complete(m)
    assert scores > 16 * 1024 and not [p.name for p in (m / "s").iterdir()]  # the partial files went with the error


@needs_tmpfs
def test_score_overwrite_on_a_full_disk_keeps_the_finished_scores(tiny_data, reference, full, capsys):
    room = size_of(reference / "scores")
    m = full(room + 4096 * 4)  # the finished scores fit; a second set beside them does not
    shutil.copytree(reference / "scores", m / "s")
    before = files_of(m)
    code = main([str(a) for a in ["score", "--data", tiny_data, "--model", reference / "ref" / "final", "--out",
                                  m / "s", "--overwrite", "--no-progress"]])
    full_disk_line(code, capsys.readouterr().err, m / "s")
    nothing_looks_complete(m, before)


@needs_tmpfs
def test_eval_dump_on_a_full_disk_is_no_sigbus(tiny_data, reference, full):
    m = full(40 * 1024)  # the dump of the train split takes 80 KB; it once died of SIGBUS (exit 135) here
    r = slm(["eval", "--model", reference / "ref" / "final", "--data", tiny_data, "--split", "train", "--dump",
             m / "d", "--no-progress"])
    line = full_disk_line(r.returncode, r.stderr, m / "d")
    assert "train.losses.bin" in line
    nothing_looks_complete(m)
    assert not list((m / "d").iterdir())


@needs_tmpfs
def test_filter_on_a_full_disk(tiny_data, reference, full):
    m = full(40 * 1024)  # the excess of every target (a float16 memmap, 80 KB) does not fit: once a SIGBUS
    r = slm(["filter", "--data", tiny_data, "--ref-scores", reference / "scores", "--inputs",
             tiny_data.parent / "corpus.jsonl", "--model", reference / "ref" / "final", "--doc-score", "selected_share",
             "--keep-fraction", 0.5, "--out", m / "f", "--no-progress"])
    full_disk_line(r.returncode, r.stderr, m / "f")
    nothing_looks_complete(m)
    assert not (m / "f").exists()


# --------------------------------------------------------------------------- a simulated ENOSPC
def test_safetensors_failing_to_write_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    def full_disk(*a, **k):  # what safetensors raises when the disk fills up mid-write
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(mu, "safe_save_file", full_disk)
    out = tmp_path / "run"
    code = main([str(a) for a in ["train", "--data", tiny_data, "--out", out, "--batch-size", 4, "--max-steps", 2,
                                  "--ckpt-every", 1, "--no-progress"]])
    full_disk_line(code, capsys.readouterr().err, out / "checkpoints" / "step_000001")
    nothing_looks_complete(tmp_path)


def test_torch_save_failing_to_write_is_one_line_naming_the_state(tiny_data, tmp_path, capsys, monkeypatch):
    import selective_lm.model as model_mod

    class Full:
        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    real, calls = model_mod._Recorder.write, {"n": 0}

    def fills_up(self, b):  # the third write of training_state.pt meets a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            self.f = Full()
        return real(self, b)

    monkeypatch.setattr(model_mod._Recorder, "write", fills_up)
    out = tmp_path / "run"
    code = main([str(a) for a in ["train", "--data", tiny_data, "--out", out, "--batch-size", 4, "--max-steps", 2,
                                  "--ckpt-every", 1, "--no-progress"]])
    line = full_disk_line(code, capsys.readouterr().err, out / "checkpoints" / "step_000001" / "training_state.pt")
    assert "unexpected pos" not in line
    nothing_looks_complete(tmp_path)


def test_a_dump_that_cannot_be_reserved_is_one_line(tiny_data, reference, tmp_path, capsys, monkeypatch):
    def full_disk(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full_disk)
    code = main([str(a) for a in ["eval", "--model", reference / "ref" / "final", "--data", tiny_data, "--dump",
                                  tmp_path / "d", "--no-progress"]])
    full_disk_line(code, capsys.readouterr().err, tmp_path / "d" / f"{tiny_data.name}.validation.losses.bin")
    assert not [p.name for p in (tmp_path / "d").iterdir()]


def test_a_plain_write_names_the_output_and_other_os_errors_keep_one_colon(tiny_data, tmp_path, capsys,
                                                                          monkeypatch):
    import selective_lm.data as data_mod

    def full_disk(*a, **k):  # an OSError that names no file, raised deep inside prepare
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data_mod, "expand_inputs", full_disk)
    code = main(["prepare", "--inputs", str(tiny_data.parent / "corpus.jsonl"), "--out", str(tmp_path / "ds"),
                 "--no-progress"])
    full_disk_line(code, capsys.readouterr().err, tmp_path / "ds")

    def denied(*a, **k):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(data_mod, "expand_inputs", denied)
    assert main(["prepare", "--inputs", str(tiny_data.parent / "corpus.jsonl"), "--out", str(tmp_path / "ds"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"slm: error: {tmp_path / 'ds'}: Permission denied (") and "::" not in err, err
