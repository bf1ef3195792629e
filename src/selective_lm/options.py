"""The machinery behind the typed configs: dataclass fields → ``--flags`` with their docstrings as help,
YAML files and ``key=value`` overrides, coercion with one-line errors, saving and comparing configs.

Resolution order: dataclass defaults < YAML file (``--config``) < ``key=value`` overrides < explicit
``--flags``; then the dataclass's ``validate()``.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import os
import re
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .files import UserError, atomic_write_text

# The choices of the configs' enumerated fields (selective_lm.config re-exports them).
STRATEGIES = ("topk", "random", "stochastic")
OBJECTIVES = ("clm", "slm")
SCOPES = ("microstep", "step", "sequence")
TEMPERATURE_UNITS = ("std", "nats")
SCORES = ("excess", "reference", "entropy", "excess+entropy", "self", "loss", "model-entropy")
ENTROPY_SCORES = ("entropy", "excess+entropy")  # the scores that need the reference's predictive entropy
MODEL_SCORES = ("loss", "model-entropy")  # ESLM's: the training model's own statistics, no reference
REF_COMBINE = ("min", "mean", "weighted")
WEIGHTINGS = ("hard", "soft", "dft")
RATIO_SCHEDULES = ("constant", "linear", "cosine")
PARALLEL = ("ddp", "fsdp")
LR_SCHEDULES = ("cosine", "wsd", "constant")
BOS_CHOICES = ("auto", "true", "false")
DOC_SCORES = ("ref_loss", "mean_excess", "selected_share", "ref_entropy")


# ------------------------------------------------------------------ checks shared by the configs' validate()
def parse_data(spec: str) -> list[tuple[str, float | None]]:
    """``"a:6,b:3"`` -> [("a", 6.0), ("b", 3.0)]; ``"a"`` -> [("a", None)] (one dataset, no weight). A part's
    weight is what follows its last ``:`` when that is a number; a part without one weighs 1."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    out: list[tuple[str, float | None]] = []
    for p in parts:
        path, sep, w = p.rpartition(":")
        try:
            weight = float(w) if sep and path else None
        except ValueError:
            weight = None
        out.append((path, weight) if weight is not None else (p, None))
    if len(out) > 1:
        out = [(p, 1.0 if w is None else w) for p, w in out]
    for p, w in out:
        if w is not None and not (w > 0 and math.isfinite(w)):
            raise UserError(f"data weight of {p} must be a number > 0, got {w}: e.g. --data ds/web:6,ds/code:3")
    if not out:
        raise UserError("missing --data: pass a dataset directory made by `slm prepare`")
    return out


def format_data(parts: list[tuple[str, float | None]]) -> str:
    return ",".join(p if w is None else f"{p}:{w:g}" for p, w in parts)


def is_mixture(spec: str) -> bool:
    """Whether ``data`` names weighted datasets (``a:6,b:3``, or one with a weight) rather than one directory."""
    parts = parse_data(spec)
    return len(parts) > 1 or parts[0][1] is not None


EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_eval_data(items: list[str] | None) -> dict[str, str]:
    """``["target=ds/hq", "web=ds/owm"]`` -> {"target": "/abs/ds/hq", ...}; a bare path is named by its directory."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = str(item).partition("=")
        if not sep:
            name, path = Path(item.rstrip("/")).name, item
        if not EVAL_NAME.match(name) or not path:
            raise UserError(f"eval_data item {item!r} is not NAME=DIR with a name of letters, digits, _ . -: e.g. "
                            "--eval-data target=ds/hq web=ds/owm")
        if name in out:
            raise UserError(f"eval_data names {name} twice: give each dataset its own name")
        out[name] = absolute(path)
    return out


def check_data(cfg) -> None:
    """A TrainConfig's ``data`` (one dataset or a weighted mixture, paths made absolute) and ``eval_data``."""
    parts = parse_data(cfg.data)
    cfg.data = format_data([(absolute(p), w) for p, w in parts])
    cfg.eval_data = [f"{k}={v}" for k, v in parse_eval_data(cfg.eval_data).items()] or None
    if not is_mixture(cfg.data):
        return
    if cfg.holdout_fraction:
        raise UserError("holdout_fraction holds out windows of one dataset: train the self-reference on one dataset, "
                        "not a mixture (drop holdout_fraction or the weights)")
    if cfg.save_selection:
        raise UserError("save_selection records windows of one dataset for `slm analyze selection`: train on one "
                        "dataset, or drop save_selection for a mixture")
    n = len(parts)
    if cfg.ref_scores and len(cfg.ref_scores) != n:
        raise UserError(f"--data names {n} datasets but ref_scores has {len(cfg.ref_scores)} directories: pass one "
                        "`slm score` directory per dataset, in the --data order")
    if cfg.ref_scores and (cfg.ref_combine != "mean" or cfg.ref_weights is not None):
        raise UserError("with a mixture, ref_scores has one directory per dataset (not several references to combine): "
                        "drop ref_combine/ref_weights")


def absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def check_ratio(ratio: float, key: str = "ratio") -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise UserError(f"{key} must be in (0, 1], got {ratio}: pick e.g. 0.6")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {key} '{value}': choose one of {', '.join(choices)}")


def check_score(cfg) -> None:
    """A TrainConfig's score and its references: what ranks the tokens, and where the reference values come from."""
    _check_choice("score", cfg.score, SCORES)
    _check_choice("ref_combine", cfg.ref_combine, REF_COMBINE)
    if not cfg.entropy_weight >= 0:
        raise UserError(f"entropy_weight must be >= 0, got {cfg.entropy_weight}: the entropy term is subtracted")
    slm, refs = cfg.objective == "slm", bool(cfg.ref_scores or cfg.ref_model)
    if slm and cfg.weighting == "dft" and cfg.score != "excess":
        raise UserError(f"weighting={cfg.weighting} weighs every token by the model's own probability and uses no "
                        f"score: drop score={cfg.score} (or use weighting=hard with it)")
    if slm and cfg.score in MODEL_SCORES and refs:
        raise UserError(f"score={cfg.score} ranks tokens by the training model's own "
                        f"{'loss' if cfg.score == 'loss' else 'predictive entropy'} and reads no reference: drop "
                        "ref_scores/ref_model (or pick a reference score such as excess)")
    if slm and not refs and cfg.weighting != "dft" and cfg.score not in MODEL_SCORES:
        raise UserError("objective slm needs reference losses: pass ref_scores=DIR (from `slm score`) or ref_model=DIR "
                        "(or a reference-free objective: score=loss or score=model-entropy (ESLM), weighting=dft)")
    if cfg.score == "self" and slm and not cfg.ref_scores:
        raise UserError("score=self needs a self-reference's scores: train the base on a held-out part of this "
                        "corpus, `slm score` this dataset with it and pass ref_scores=DIR")
    n = len(cfg.ref_scores or [])
    if cfg.ref_weights is not None and cfg.ref_combine != "weighted":
        raise UserError(f"ref_weights are used by ref_combine=weighted only (ref_combine is {cfg.ref_combine}): "
                        "set ref_combine=weighted or drop ref_weights")
    if cfg.ref_combine == "weighted":
        w = cfg.ref_weights or []
        if len(w) != n or n == 0:
            raise UserError(f"ref_combine=weighted needs one weight per ref_scores directory: got {len(w)} "
                            f"weights for {n} directories: pass ref_weights=W1,W2,... in the ref_scores order")
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise UserError(f"ref_weights must be >= 0 with a positive sum, got {w}")


def check_schedule(cfg) -> None:
    """A TrainConfig's learning-rate schedule."""
    _check_choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if not 0.0 < cfg.decay_fraction <= 1.0:
        raise UserError(f"decay_fraction must be in (0, 1], got {cfg.decay_fraction}: e.g. 0.1 decays over the last "
                        "10% of the steps")


def check_weighting(cfg) -> None:
    """A TrainConfig's weighting, its temperature, the ratio schedule and the CLM warm-up."""
    _check_choice("weighting", cfg.weighting, WEIGHTINGS)
    _check_choice("ratio_schedule", cfg.ratio_schedule, RATIO_SCHEDULES)
    if not cfg.weight_temperature > 0:
        raise UserError(f"weight_temperature must be > 0, got {cfg.weight_temperature}")
    if cfg.ratio_end is not None:
        check_ratio(cfg.ratio_end, "ratio_end")
    if not 0.0 <= cfg.clm_warmup < 1.0:
        raise UserError(f"clm_warmup must be in [0, 1), got {cfg.clm_warmup}: e.g. 0.1 trains the first 10% "
                        "of the steps as CLM")
    if cfg.objective != "slm":
        for key, default in (("weighting", "hard"), ("ratio_schedule", "constant"), ("ratio_end", None),
                             ("clm_warmup", 0.0)):
            if getattr(cfg, key) != default:
                raise UserError(f"{key}={getattr(cfg, key)} needs objective=slm (objective clm trains every token)")
    if cfg.weighting != "hard" and cfg.strategy != "topk":
        raise UserError(f"weighting={cfg.weighting} weights every token by its score: it takes no strategy "
                        f"(leave strategy=topk, not {cfg.strategy}); use weighting=hard for {cfg.strategy} selection")
    if cfg.weighting == "dft" and (cfg.ratio_schedule != "constant" or cfg.ratio_end is not None):
        raise UserError(f"weighting={cfg.weighting} weighs every token and has no ratio: drop ratio_schedule/ratio_end")
    if cfg.ratio_schedule == "constant" and cfg.ratio_end is not None:
        raise UserError(f"ratio_end={cfg.ratio_end} has no effect with ratio_schedule=constant: set "
                        "ratio_schedule=linear or cosine, or drop ratio_end")
    if cfg.ratio_schedule != "constant" and cfg.ratio_end is None:
        raise UserError(f"ratio_schedule={cfg.ratio_schedule} needs ratio_end (the ratio of the last step), "
                        "e.g. ratio=0.9 ratio_end=0.6")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the docstring written under it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML-parsed value against a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        items: list[Any] = []
        for v in value:  # "0,1,2" and ["0", "1,2"] both work from the command line
            if isinstance(v, str) and inner is not str:
                items += [yaml.safe_load(x) for x in v.split(",") if x.strip()]
            elif isinstance(v, str) and "," in v:
                items += [x.strip() for x in v.split(",") if x.strip()]
            else:
                items.append(v)
        return [_coerce(v, inner, key) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):  # YAML 1.1 reads 5e-5 and 1e9 as strings
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key '{key}' must be a finite number, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from a (possibly nested) mapping; unknown keys are a UserError."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"unknown config key '{prefix}{key}': valid keys are {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) onto a nested dict."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value: write e.g. ratio=0.6")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[parts[-1]] = value
    return data


def check_given_once(overrides: list[str], flags: dict[str, Any]) -> None:
    """Refuse an option given twice on the command line, as a ``--flag`` and a ``key=value`` or as two
    ``key=value`` (a key and one of its nested keys count as the same option): one of them would be dropped."""
    seen: dict[tuple[str, ...], str] = {}
    for item in overrides:
        if "=" not in item:
            continue  # apply_overrides says what is wrong with it
        parts = tuple(item.split("=", 1)[0].strip().split("."))
        if parts[0] in flags:
            flag = "--" + parts[0].replace("_", "-")
            raise UserError(f"{parts[0]} is given twice, as {flag} {flags[parts[0]]!r} and as {item}: keep one")
        for other, given in seen.items():
            if other[:len(parts)] == parts or parts[:len(other)] == other:
                raise UserError(f"{'.'.join(parts)} is given twice, as {given} and as {item}: keep one")
        seen[parts] = item


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values")
    return data


def resolve(cls: type, config_file: str | None = None, overrides: list[str] | None = None,
            flags: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> Any:
    """defaults < ``base`` < YAML file < key=value overrides < explicit flags; then ``validate()``.

    Without ``base``, a class may derive one from what the user gave (``cls.base_values(values)``, e.g. the
    study's ``quick`` budgets), so that a key means the same as a flag, a ``key=value`` or in YAML.
    """
    check_given_once(overrides or [], flags or {})
    yaml_data = load_yaml(config_file) if config_file else {}

    def merged(start: dict[str, Any]) -> dict[str, Any]:
        data = apply_overrides({**start, **yaml_data}, overrides or [])
        return {**data, **(flags or {})}

    data = merged(base or {})
    if base is None and hasattr(cls, "base_values"):
        data = merged(cls.base_values(data))
    cfg = from_dict(cls, data)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def first_change(cfg: Any, saved: str | Path, ignore: set[str]) -> tuple[str, Any, Any] | None:
    """(key, saved value, current value) of the first field that differs from the config saved at
    ``saved`` (a YAML file written by :func:`save_config`), ignoring the keys in ``ignore``."""
    before = from_dict(type(cfg), load_yaml(saved))
    if hasattr(before, "validate"):  # normalised like the current one (e.g. paths made absolute)
        try:
            before.validate()
        except UserError:
            pass
    old = to_dict(before)
    now = to_dict(cfg)
    return next(((k, old.get(k), now[k]) for k in now if k not in ignore and now[k] != old.get(k)), None)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_text(path, dump_yaml(cfg))


def add_arguments(parser: argparse.ArgumentParser, cls: type, example: str | None = None) -> None:
    """One ``--flag`` per field with the field docstring as help; nested dataclasses via key=value.
    ``example``: the ``key=value`` overrides shown in the help (fields of ``cls``)."""
    docs = field_docs(cls)
    hints = _hints(cls)
    parser.add_argument("--config", help="YAML file with any of the options below")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"overrides of the options below{f', e.g. {example}' if example else ''} "
                             "(nested keys with dots, lists with commas)")
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if dataclasses.is_dataclass(tp):
            sub = field_docs(tp)
            help_text += " Keys: " + "; ".join(f"{f.name}.{k}: {v}" for k, v in sub.items()).replace("%", "%%")
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar="YAML",
                                type=yaml.safe_load, help=help_text)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text += f" (default: {default})".replace("%", "%%")
        is_list = typing.get_origin(tp) is list or list in typing.get_args(tp)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif is_list:
            parser.add_argument(flag, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, type=yaml.safe_load,
                                metavar=f.name.upper(), help=help_text)


def from_args(cls: type, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    overrides = list(getattr(args, "overrides", None) or [])
    for k, v in flags.items():  # `--inputs a b seq_len=256`: a list flag does not swallow the overrides after it
        if isinstance(v, list) and (moved := [x for x in v if _is_override(x, names)]):
            flags[k] = [x for x in v if x not in moved]
            overrides += moved
    return resolve(cls, getattr(args, "config", None), overrides, flags)


def _is_override(item: Any, names: set[str]) -> bool:
    """``key=value`` naming one of the config's fields (``lora.r=16`` names ``lora``)."""
    m = re.match(r"^([A-Za-z_]\w*)(\.\w+)*=", item) if isinstance(item, str) else None
    return m is not None and m.group(1) in names
