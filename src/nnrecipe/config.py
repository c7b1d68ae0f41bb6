"""validate(cfg): every value of the composed config checked once, before any work.

A value of the wrong type or out of range must stop the run with one message naming the key,
not a traceback from deep inside (`optimizer.lr=abc` used to end in a ValueError from the run
name's formatting). The types come from the defaults themselves: each key may take the kinds of
value its option YAMLs in conf/ give it (a number where they hold a number, a list where a
list...), so keys that new options add are covered without editing this file: write a float
default with a dot (15.0) unless its pattern in RULES says float. RULES adds what a YAML cannot
say: ranges, the choices of a string, and the type of keys whose default is null.

Hydra's structured configs (dataclass schemas) would say the same per group, but every option
would need its schema written twice (the YAML and the dataclass); here the YAML is the schema.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nnrecipe.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"
ANY = "any"  # a default that says nothing about its type: ???, ${...}, or null without a rule
NUMBER_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string", "list": "a list [...]", "dict": "a group of keys",
                "null": "null"}


def _positive(v):
    return v > 0


def _at_least(n):
    return lambda v: v >= n


def _fraction(v):  # [0, 1)
    return 0 <= v < 1


def _probability(v):  # [0, 1]
    return 0 <= v <= 1


# pattern (fnmatch on the dotted key) -> (type when the default is null, the rule as text, test).
# The first pattern that matches a key applies. Lists are checked element by element.
RULES: list[tuple[str, str | None, str | None, object]] = [
    ("optimizer.lr", None, "> 0", _positive),
    ("optimizer.momentum", None, "in [0, 1)", _fraction),
    ("optimizer.weight_decay", None, ">= 0", _at_least(0)),
    ("*batch_size", None, ">= 1", _at_least(1)),          # data., trainer.eval_, checks.
    ("*_fraction", None, "in [0, 1)", _fraction),          # data.val_/test_fraction, ...
    ("trainer.max_epochs", None, ">= 1", _at_least(1)),
    ("trainer.num_threads", "int", ">= 1 (null: chosen from the free cores)", _at_least(1)),
    ("trainer.grad_clip_norm", "float", "> 0 (null: off)", _positive),
    ("trainer.early_stopping.patience", "int", ">= 0 (null: off)", _at_least(0)),
    ("trainer.precision", None, "fp32, bf16 or fp16", lambda v: v in ("fp32", "bf16", "fp16")),
    ("trainer.resume", "str", None, None),
    ("trainer.sync_batchnorm", "bool", "true, false or null (null: on with several GPUs)", None),
    ("checks.budget_s", "float", "> 0 (null: the checks' full sizes)", _positive),
    ("checks.num_threads", "int", ">= 1 (null: the trainer's, fewer on busy cores)",
     _at_least(1)),
    ("*_s", "float", ">= 0", _at_least(0)),  # seconds: 60 in a YAML, 0.5 on the command line
    ("trainer.log_every_n_steps", None, ">= 1", _at_least(1)),
    ("*min_delta", None, ">= 0", _at_least(0)),
    ("*.num_workers", "int", ">= 0 (null: one per core)", _at_least(0)),
    ("data.num_classes", "int", ">= 1", _at_least(1)),
    ("data.in_chans", None, ">= 1", _at_least(1)),
    ("data.image_size", None, ">= 1", _at_least(1)),
    ("data.mean", "list", None, None),
    ("data.std", "list", "> 0 per channel", _positive),
    ("data.root", "str", None, None),
    ("data.split_seed", None, ">= 0", _at_least(0)),
    ("data.cache", None, "index, memory or none", lambda v: v in ("index", "memory", "none")),
    ("data.cache_dir", "str", None, None),
    ("model.dropout", None, "in [0, 1)", _fraction),
    ("model.spatial_dropout", None, "in [0, 1)", _fraction),
    ("model.drop_path_rate", None, "in [0, 1)", _fraction),
    ("model.init_from", "str", "a run folder or .pt (null: off)", None),
    ("model.pretrained_file", "str", None, None),
    ("model.freeze_epochs", None, ">= 0", _at_least(0)),
    ("trainer.ema.decay", "float", "in (0, 1) (null: off)", lambda v: 0 < v < 1),
    ("trainer.ema.evaluate_with", None, "ema or raw", lambda v: v in ("ema", "raw")),
    ("distill.alpha", None, "in [0, 1]", _probability),
    ("distill.temperature", None, "> 0", _positive),
    ("inside.every_n_epochs", None, ">= 0", _at_least(0)),
    ("schedule.warmup_epochs", None, ">= 0", _at_least(0)),
    ("schedule.step_epochs", None, ">= 1", _at_least(1)),
    ("schedule.gamma", None, "> 0", _positive),
    ("schedule.factor", None, "in (0, 1]", lambda v: 0 < v <= 1),
    ("schedule.min_lr_ratio", None, "in [0, 1]", _probability),
    ("schedule.threshold", None, ">= 0", _at_least(0)),
    ("*.patience", None, ">= 0", _at_least(0)),
    ("augmentation.hflip", None, "in [0, 1]", _probability),
    ("augmentation.*prob", None, "in [0, 1]", _probability),
    ("augmentation.*_alpha", None, ">= 0", _at_least(0)),
    ("augmentation.label_smoothing", None, "in [0, 1)", _fraction),
    ("augmentation.padding", None, ">= 0", _at_least(0)),
    ("augmentation.num_ops", None, ">= 0", _at_least(0)),
    ("augmentation.magnitude", None, ">= 0", _at_least(0)),
    ("init.head_bias", None, "prior or zero", lambda v: v in ("prior", "zero")),
    ("task.label_smoothing", None, "in [0, 1)", _fraction),
    ("task.loss", None, "mse, huber or l1", lambda v: v in ("mse", "huber", "l1")),
    ("task.huber_delta", None, "> 0", _positive),
    ("task.threshold", None, "in (0, 1)", lambda v: 0 < v < 1),
    ("task.bins", None, ">= 2", _at_least(2)),
    ("data.targets", None, "classes, values or labels",
     lambda v: v in ("classes", "values", "labels")),
    ("data.path", "str", None, None),
    ("data.columns", "list", None, None),
    ("data.categorical", "list", None, None),
    ("logger.entity", "str", None, None),
    ("logger.group", "str", None, None),
]


def validate(cfg: DictConfig, config_name: str = "train") -> None:
    """Raise one UserError listing every key whose value has the wrong type or range.

    `config_name`: the conf/ file the config was composed from (its defaults list names the
    groups whose option YAMLs give the types).
    """
    values = _resolved(cfg)
    problems = []
    _check(values, _reference(config_name), problems)
    fractions = [values.get("data", {}).get(k) for k in ("val_fraction", "test_fraction")]
    if all(isinstance(f, (int, float)) for f in fractions) and sum(fractions) >= 1:
        problems.append(f"data.val_fraction + data.test_fraction = {sum(fractions):g} leaves "
                        f"no training data: keep their sum below 1")
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))


def _resolved(cfg: DictConfig) -> dict:
    missing = next(_missing(cfg, ""), None)
    if missing:
        raise UserError(f"{missing} must be set ({missing}=...)")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation the user wrote that does not resolve
        raise UserError(f"the config does not resolve: {e}") from None


def _missing(node: DictConfig, prefix: str):
    """Dotted keys whose value is ??? (mandatory, not given)."""
    for key in node:
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif isinstance(child := node._get_node(key), DictConfig):
            yield from _missing(child, f"{prefix}{key}.")


# --- the reference: what the defaults say each key may hold ------------------------------------


@functools.cache
def _reference(config_name: str) -> dict:
    """{key: Ref} for the root config's own keys and {group: [option dicts]} per group."""
    own, groups = _root(config_name)
    return {"own": own, "groups": {g: _options(g) for g in groups}}


def _root(config_name: str) -> tuple[dict, list[str]]:
    """The root config's own keys (merged over the configs its defaults list names) and the
    config groups it composes."""
    raw = _load(CONF / f"{config_name}.yaml")
    own, groups = {}, []
    for entry in raw.pop("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_":
            parent_own, parent_groups = _root(entry)
            own, groups = _merge(own, parent_own), groups + parent_groups
        elif isinstance(entry, dict):
            groups += [g for g in entry if "/" not in g and " " not in g]
    raw.pop("hydra", None)
    return _merge(own, raw), groups


@functools.cache
def _options(group: str) -> list[dict]:
    return [_option(group, p.stem) for p in sorted((CONF / group).glob("*.yaml"))]


def _option(group: str, name: str) -> dict:
    """One option YAML with the options it extends (`defaults: [cosine, _self_]`) merged in."""
    raw = _load(CONF / group / f"{name}.yaml")
    merged = {}
    for parent in raw.pop("defaults", []) or []:
        if isinstance(parent, str) and parent != "_self_":
            merged = _merge(merged, _option(group, parent))
    return _merge(merged, raw)


def _load(path: Path) -> dict:
    """A YAML file as plain values. PyYAML's C loader: ten times faster than OmegaConf.load (this
    reads every option of every group); it reads 1e-3 as a string where OmegaConf reads a number,
    so numeric strings are taken for the numbers OmegaConf makes of them."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return _numbers(yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {})


def _numbers(value):
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return float(value)
    return value


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _matching(options: list[dict], value: dict) -> list[dict]:
    """The options the value was composed from: same `_target_` (or same `name`); all of the
    group's options when none matches (a user's own class: its signature is checked instead)."""
    for key in ("_target_", "name"):
        if key in value:
            same = [o for o in options if o.get(key) == value[key]]
            if same:
                return same
    return options


# --- the checks --------------------------------------------------------------------------------


def _check(values: dict, ref: dict, problems: list[str]) -> None:
    own, groups = ref["own"], ref["groups"]
    for key, value in values.items():
        if key in groups and isinstance(value, dict):
            _check_group(key, value, groups[key], problems)
        elif key in own:
            _check_value(key, value, [own[key]], problems)
        else:
            problems.append(_unknown(key, "", [*own, *groups]))


def _check_group(group: str, value: dict, options: list[dict], problems: list[str]) -> None:
    matching = _matching(options, value)
    if "name" in value and "_target_" not in value and options:
        names = sorted({o["name"] for o in options if "name" in o})
        if names and value["name"] not in names:
            problems.append(f"{group}.name={value['name']}: use one of {', '.join(names)}")
    _check_keys(group, value, matching, problems)


def _check_keys(prefix: str, value: dict, refs: list[dict], problems: list[str]) -> None:
    known = {k for r in refs for k in r}
    unknown = [k for k in value if k not in known]
    if unknown and "_target_" in value:
        _check_arguments(prefix, value, unknown, problems, known)
    elif unknown and refs:
        problems += [_unknown(k, prefix, known) for k in unknown]
    for k in value:
        if k in known:
            _check_value(f"{prefix}.{k}", value[k], [r[k] for r in refs if k in r], problems)


def _unknown(key: str, prefix: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    where = f"a key of {prefix}" if prefix else "a key of the config"
    dot = f"{prefix}." if prefix else ""
    hint = f" (did you mean {dot}{close[0]}?)" if close else ""
    return f"{dot}{key} is not {where}: nothing would use it{hint}"


def _check_value(key: str, value, defaults: list, problems: list[str]) -> None:
    rule = next((r for r in RULES if fnmatch.fnmatchcase(key, r[0])), None)
    kinds = _kinds(defaults, rule)
    if isinstance(value, dict):
        subs = [d for d in defaults if isinstance(d, dict)]
        if subs:
            _check_keys(key, value, subs, problems)
            return
    if ANY not in kinds and not _fits(value, kinds):
        problems.append(f"{key}={_show(value)} must be {_expected(kinds)}"
                        f"{_yaml_hint(value, kinds)}")
        return
    if isinstance(value, list) and ANY not in kinds:
        items = [i for d in defaults if isinstance(d, list) for i in d]
        item_kinds = _kinds(items, None) if items else {ANY}
        bad = [i for i in value if ANY not in item_kinds and not _fits(i, item_kinds)]
        if bad:
            problems.append(f"{key}={_show(value)}: {_show(bad[0])} must be "
                            f"{_expected(item_kinds)}")
            return
    if rule and rule[3] is not None and value is not None and not _in_range(value, rule[3]):
        problems.append(f"{key}={_show(value)} must be {rule[2]}")


def _in_range(value, test) -> bool:
    items = value if isinstance(value, list) else [value]
    try:
        return all(not isinstance(i, float) or math.isfinite(i) for i in items) and all(
            test(i) for i in items)
    except TypeError:  # compared a string with a number: the type check has said it
        return True


def _kinds(defaults: list, rule) -> set[str]:
    kinds = set()
    for d in defaults:
        kinds.add(_kind(d))
    if rule and rule[1] and kinds <= {"null", ANY}:  # a null default: the rule says the type
        kinds = {rule[1], "null"}
    elif rule and rule[1] == "float" and kinds <= {"int", "float", "null"}:
        kinds = kinds | {"float"}  # a float key whose YAML default happens to be whole
    elif kinds == {"null"}:
        kinds = {ANY}
    return kinds


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return ANY if value == "???" or "${" in value else "str"
    if isinstance(value, list):
        return "list"
    return "dict"


def _fits(value, kinds: set[str]) -> bool:
    kind = _kind(value)
    if kind == kinds or kind in kinds:
        return True
    if kind == "int" and "float" in kinds:
        return True
    return kind in ("int", "float") and "str" in kinds  # a W&B group named 2024


def _expected(kinds: set[str]) -> str:
    words = [NUMBER_WORDS[k] for k in ("int", "float", "bool", "str", "list", "dict", "null")
             if k in kinds and not (k == "int" and "float" in kinds)]
    return " or ".join(words)


def _show(value) -> str:
    """A value as it is written on the command line."""
    if isinstance(value, str):
        return value if value and re.fullmatch(r"[\w./:+-]+", value) else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def _yaml_hint(value, kinds) -> str:
    """A number in quotes is a string: the classic way a number becomes text."""
    if isinstance(value, str) and kinds & {"int", "float"}:
        try:
            float(value)
        except ValueError:
            return ""
        return " (a number in quotes is a string: write it without quotes)"
    return ""


def _check_arguments(prefix: str, value: dict, extra: list[str], problems: list[str],
                     known=()) -> None:
    """Keys the defaults do not have, on a group built from `_target_`: passed to the target as
    keyword arguments, so they must be arguments it takes (of the annotated type, if any)."""
    from hydra.utils import get_object

    try:
        target = get_object(value["_target_"])
        signature = inspect.signature(target)
    except Exception:  # not importable here, or no signature: instantiate() will say what
        return
    params = signature.parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    hints = _annotations(target)
    for k in extra:
        if k not in params and not takes_any:
            takes = sorted({*params, *known} - {"self", "_target_"})  # its YAML's keys too
            close = difflib.get_close_matches(k, takes, n=1)
            hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
            problems.append(f"{prefix}.{k}: {value['_target_']} takes no argument {k!r}{hint}; "
                            f"it takes {', '.join(takes)}")
        elif k in hints and hints[k] in (int, float, bool, str):
            kinds = {hints[k].__name__}
            if not _fits(value[k], kinds):
                problems.append(f"{prefix}.{k}={_show(value[k])} must be {_expected(kinds)} "
                                f"(the type {value['_target_']} declares)")


def _annotations(target) -> dict:
    import typing

    try:
        fn = target.__init__ if inspect.isclass(target) else target
        return typing.get_type_hints(fn)
    except Exception:
        return {}
