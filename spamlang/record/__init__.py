"""The run record: the one interface between training and everything after it (scorer, leaderboards).

A record is a :class:`RunRecord` (its evaluations :class:`EvalPoint`, its end :class:`Final`), stored as JSON with a
versioned ``schema``. :meth:`RunRecord.to_json` and :meth:`RunRecord.from_json` are the only ways in and out, and
every record read is validated against the JSON Schema published with the package (``spamlang/record/run-2.json``,
generated from these types by ``python -m spamlang.record.schema``); records of the previous schema are migrated on
read. The package's other modules own the rest of the contract: :mod:`~spamlang.record.schema` (the JSON Schema),
:mod:`~spamlang.record.files` (records on disk), :mod:`~spamlang.record.provenance` (where a run ran) and
:mod:`~spamlang.record.learned` (the learned rule).

Adding a metric: add a field (``metric("meaning")``, None by default) to :class:`EvalPoint` or :class:`Final`,
regenerate the schema file, and fill it in the harness. Older records read as None.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from spamlang.config import RunConfig, config_hash
from spamlang.errors import SpamLangError
from spamlang.record.schema import best_error, validator
from spamlang.record.schema import hints as type_hints

SCHEMA = "spamlang.run/2"
STATUSES = ("ok", "diverged", "failed")
#: the losses a run of status ok must hold as finite numbers, in ``final`` and in every evaluation of ``history``
#: (a non-finite loss is what makes a run ``diverged``)
OK_FINAL, OK_HISTORY = ("loss", "val_loss"), ("val_loss", "test_loss")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric(help: str, *, required: bool = False):
    """A record field with its meaning; an optional one (the default) is None when a record does not have it."""
    if required:
        return field(metadata={"help": help})
    return field(default=None, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class Measures:
    """What an evaluation measures, declared once: each :class:`EvalPoint` has these, and a run's :class:`Final`
    repeats them from its last evaluation (``coverage`` and ``examples_per_symbol`` as of the last step)."""

    val_loss: float | None = metric("loss on the val stream", required=True)
    val_accuracy: float | None = metric("accuracy on the val stream", required=True)
    coverage: float | None = metric("share of the vocabulary seen in training", required=True)
    grad_destroyed: float | None = metric("destroyed-gradient ratio ‖G − G Q Qᵀ‖ / ‖G‖", required=True)
    grad_kept_cos: float | None = metric("cosine between G and its kept part G Q Qᵀ", required=True)
    grad_baseline: float | None = metric("destroyed ratio of an isotropic gradient, sqrt(1 − rank/V)", required=True)
    examples_per_symbol: float | None = metric("training examples per symbol seen: steps · batch · symbols per "
                                               "sequence / V")
    val_loss_se: float | None = metric("standard error of val_loss, over sequences")
    test_loss_se: float | None = metric("standard error of the test loss, over sequences")
    test_bayes_loss: float | None = metric("loss of the Bayes predictor (the task's log_prob) on the same test "
                                           "positions (None: the task has none)")
    test_bayes_gap_se: float | None = metric("standard error of the paired difference model − Bayes on the test "
                                             "positions")
    test_uniform_loss: float | None = metric("loss of the uniform predictor, log V")
    test_unigram_loss: float | None = metric("loss of the unigram predictor (add-½ token frequencies of a train "
                                             "sample) on the same test positions")
    test_unigram_gap_se: float | None = metric("standard error of the paired difference model − unigram on the test "
                                               "positions")
    logit_scale: float | None = metric("median over the diagnostic contexts of the logit half-range "
                                       "(max_v z − min_v z) / 2")
    update_cosine: float | None = metric("cosine between the first-order logit change of the optimizer's next step "
                                         "and −G (None: the head has no logits)")
    grad_top_share: float | None = metric("share of ‖G‖² in its top 2·rank singular values")


#: the measures a Final takes from the last evaluation as they are (the others it measures over the whole run)
FROM_LAST_EVALUATION = tuple(f.name for f in dataclasses.fields(Measures)
                             if f.name not in ("val_loss", "val_accuracy", "coverage", "examples_per_symbol"))


@dataclass(frozen=True, kw_only=True)
class EvalPoint(Measures):
    """One evaluation during training; losses in nats per predictable position, None where not finite."""

    step: int = metric("training steps done", required=True)
    tokens: int = metric("training tokens seen", required=True)
    lr: float = metric("learning rate of the last step", required=True)
    train_loss: float | None = metric("loss of the last training batch (None at step 0)", required=True)
    test_loss: float | None = metric("loss on the test stream", required=True)
    test_accuracy: float | None = metric("accuracy on the test stream", required=True)
    test_accuracy_seen: float | None = metric("test accuracy on targets seen in training", required=True)
    test_accuracy_unseen: float | None = metric("test accuracy on targets never seen in training", required=True)


#: why a run's training stopped (``Final.stopped``)
STOPS = ("cap", "learned", "diverged")


@dataclass(frozen=True, kw_only=True)
class Final(Measures):
    """A run's result: the last evaluation's test metrics (``val_*`` on the val stream) and the run's totals."""

    loss: float | None = metric("test loss", required=True)
    accuracy: float | None = metric("test accuracy", required=True)
    accuracy_seen: float | None = metric("test accuracy on targets seen in training", required=True)
    accuracy_unseen: float | None = metric("test accuracy on targets never seen in training", required=True)
    steps_to_learn: int | None = metric("first evaluation step from which the run is learned with evidence (the "
                                        "test loss's gap to the Bayes loss, see spamlang.record.learned) to the end",
                                        required=True)
    tokens_per_second: float | None = metric("training throughput, evaluations excluded", required=True)
    steps: int | None = metric("training steps done")
    tokens: int | None = metric("training tokens seen")
    stopped: str | None = metric("why training stopped: cap (its last step), learned (stop_after evaluations in a "
                                 "row learned) or diverged; None in records from before early stopping")


@dataclass(frozen=True, kw_only=True)
class Timing:
    steps: int = metric("training steps done", required=True)
    train_seconds: float = metric("wall time of the training steps", required=True)
    eval_seconds: float = metric("wall time of the evaluations after step 0", required=True)
    total_seconds: float = metric("wall time of the whole run", required=True)


@dataclass(frozen=True, kw_only=True)
class Env:
    device: str = metric("device name", required=True)
    torch: str = metric("torch version", required=True)
    python: str = metric("Python version", required=True)
    spamlang: str = metric("spamlang version", required=True)
    git_commit: str | None = metric("commit of the spamlang source, '-dirty' if changed", required=True)
    platform: str = metric("operating system", required=True)
    threads: int | None = metric("intra-op threads torch used (spamlang.system.threads); None in records from before "
                                 "the thread policy")
    ensemble: bool | None = metric("trained as a member of an ensemble (spamlang.training.ensemble): its metrics equal "
                                   "its run's alone up to float rounding, and train_ensemble([config]) on the same "
                                   "threads reproduces them; None in records from before ensembles")


@dataclass(frozen=True, kw_only=True)
class SuiteInfo:
    name: str = metric("suite name", required=True)
    version: int = metric("suite version", required=True)
    source: str = metric("suite file", required=True)
    sweep: tuple[str, ...] = metric("run settings the suite sweeps (chosen on val)", required=True)
    lr_round: int | None = metric("round of the adaptive lr grid that added the run (0: the suite's own grid)")
    budget_round: int | None = metric("budget round that added the run (0: the suite's own budget; 1: a configuration "
                                      "not learned there, rerun at the suite's extend_budget times its budget)")


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """Everything one run produced. A run that raised is ``failed`` (see :meth:`failed`): no history, no final."""

    run_id: str = metric("hash of the configuration (RunConfig.run_id)", required=True)
    config: RunConfig = metric("the run's configuration", required=True)
    task_version: int | None = metric("version of the task's generator (None: failed before it was built)",
                                      required=True)
    bayes_loss: float | None = metric("the task's Bayes loss, nats per predictable position", required=True)
    deterministic: bool | None = metric("whether every target is a function of its context", required=True)
    rank: int | None = metric("rank of the head's gradient map")
    data: Mapping[str, Any] | None = metric("where the tokens come from beyond the task's parameters (a text task: "
                                            "corpus sha256, tokenizer); None for a generated task")
    status: str = metric("ok, diverged or failed", required=True)
    error: str | None = metric("the exception of a failed run")
    traceback: str | None = metric("its traceback")
    history: tuple[EvalPoint, ...] = metric("evaluations, from step 0", required=True)
    final: Final | None = metric("the result (None for a failed run)", required=True)
    timing: Timing | None = metric("wall times")
    env: Env = metric("where it ran", required=True)
    created: str | None = metric("start time, ISO 8601")
    suite: SuiteInfo | None = metric("the suite it was run for")

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if self.status != "failed" and (not self.history or self.final is None):
            raise ValueError(f"a run with status {self.status!r} needs a history and final metrics")
        if self.status == "ok":
            bad = [f"final.{k}" for k in OK_FINAL if not _finite(getattr(self.final, k))]
            bad += [f"history[{i}].{k}" for i, p in enumerate(self.history) for k in OK_HISTORY
                    if not _finite(getattr(p, k))]
            if bad:
                raise ValueError(f"a run with status 'ok' has non-finite or missing metrics ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''})")

    @classmethod
    def failed(cls, config: RunConfig, error: str, traceback: str | None = None,
               threads: int | None = None) -> "RunRecord":
        """The record of a run that raised ``error`` before it could finish (on ``threads`` intra-op threads)."""
        from spamlang.record.provenance import environment, now
        return cls(run_id=config.run_id, config=config, task_version=None, bayes_loss=None, deterministic=None,
                   status="failed", error=error, traceback=traceback, history=(), final=None,
                   env=environment("unknown", threads), created=now())

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (``schema`` first; non-finite numbers as None)."""
        return {"schema": SCHEMA, **_plain(self)}

    def to_json(self, indent: int | None = 1) -> str:
        """The record as strict JSON."""
        return strict_json(self.to_dict(), indent)

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any], source: str = "record") -> "RunRecord":
        """A record from its JSON text (or parsed data), migrated from an older schema if need be and validated; any
        problem raises SpamLangError naming ``source`` and, for a malformed field, its JSON path."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise SpamLangError(f"{source}: not readable as JSON ({exc})") from None
        if not isinstance(data, Mapping) or "schema" not in data:
            raise SpamLangError(f"{source}: not a SpamLang run record (no 'schema' key)")
        if data["schema"] in MIGRATIONS:
            data = MIGRATIONS[data["schema"]](data)
        if data["schema"] != SCHEMA:
            raise SpamLangError(f"{source}: record schema {data['schema']!r} is not supported (this version reads "
                                f"{', '.join([*MIGRATIONS, SCHEMA])})")
        error = best_error(validator(), data)
        if error is not None:
            raise SpamLangError(f"{source}: malformed run record: {error.json_path}: {error.message}")
        try:
            rec = _build(cls, {k: v for k, v in data.items() if k != "schema"})
        except (SpamLangError, ValueError) as exc:
            where = "$.config" if isinstance(exc, SpamLangError) else "$"
            raise SpamLangError(f"{source}: malformed run record: {where}: {exc}") from None
        problem = inconsistency(rec, data["config"])
        if problem:
            raise SpamLangError(f"{source}: inconsistent run record: {problem}")
        return rec


#: relative and absolute tolerance of the final metrics against the last evaluation they repeat
TOLERANCE = 1e-6
#: the final metrics that repeat the last evaluation's (final field, evaluation field)
REPEATED = (("loss", "test_loss"), ("accuracy", "test_accuracy"), ("val_loss", "val_loss"),
            ("val_accuracy", "val_accuracy"))
#: fields whose values are shares, in [0, 1]
_SHARES = {"accuracy", "val_accuracy", "test_accuracy", "test_accuracy_seen", "test_accuracy_unseen",
           "accuracy_seen", "accuracy_unseen", "coverage", "grad_top_share"}


_NONNEGATIVE = {"step", "steps", "tokens", "tokens_per_second", "examples_per_symbol", "grad_destroyed",
                "grad_baseline", "logit_scale", "steps_to_learn", "bayes_loss", "rank", "threads", "lr_round",
                "budget_round", "version"}
_COSINES = {"grad_kept_cos", "update_cosine"}


@functools.lru_cache(maxsize=None)
def _rules(cls: type) -> tuple[tuple[str, str], ...]:
    """(field, rule) of each numeric field of a record type: ``share`` ([0, 1]), ``nonnegative``, ``cosine``
    ([-1, 1]) or ``finite``; nested record types as ``nested``."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "config":
            continue  # checked by RunConfig itself
        hint = type_hints(cls)[f.name]
        inner = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
        kind = inner[0] if inner else hint
        if typing.get_origin(kind) is tuple or dataclasses.is_dataclass(kind):
            out.append((f.name, "nested"))
        elif kind in (int, float):
            name = f.name
            rule = ("share" if name in _SHARES else "cosine" if name in _COSINES else
                    "nonnegative" if name in _NONNEGATIVE or name.endswith(("loss", "_se", "seconds")) else "finite")
            out.append((name, rule))
    return tuple(out)


_LIMITS = {"share": (0.0, 1.0), "nonnegative": (-TOLERANCE, math.inf), "cosine": (-1 - TOLERANCE, 1 + TOLERANCE),
           "finite": (-math.inf, math.inf)}
_ALLOWED = {"share": "[0, 1]", "nonnegative": "[0, inf)", "cosine": "[-1, 1]", "finite": "(-inf, inf)"}


def _value_problem(where: str, value: Any, rule: str) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if not math.isfinite(value):
        return f"{where} = {value!r} is not a finite number"
    low, high = _LIMITS[rule]
    if not low <= value <= high:
        return f"{where} = {value!r} is outside the allowed range {_ALLOWED[rule]}"
    return None


def _range_problems(obj: Any, path: str) -> str | None:
    """The first number of a record (or of one of its parts) that is not finite or not in its range, as text."""
    for name, rule in _rules(type(obj)):
        value = getattr(obj, name)
        if value is None:
            continue
        if rule != "nested":
            problem = _value_problem(f"{path}.{name}", value, rule)
            if problem:
                return problem
        elif isinstance(value, tuple):
            problem = _items_problem(value, f"{path}.{name}")
            if problem:
                return problem
        else:
            problem = _range_problems(value, f"{path}.{name}")
            if problem:
                return problem
    return None


def _items_problem(items: tuple, path: str) -> str | None:
    """:func:`_range_problems` of the items of a tuple of records (the evaluations), field by field: the whole
    column at once when its sum is finite and its extremes in range, item by item only to name a problem."""
    if not items or not dataclasses.is_dataclass(items[0]):
        return None
    for name, rule in _rules(type(items[0])):
        if rule == "nested":
            for i, item in enumerate(items):
                problem = _range_problems(getattr(item, name), f"{path}[{i}].{name}") \
                    if getattr(item, name) is not None else None
                if problem:
                    return problem
            continue
        numbers = [v for v in (getattr(item, name) for item in items) if v is not None and not isinstance(v, bool)]
        if not numbers:
            continue
        low, high = _LIMITS[rule]
        if math.isfinite(math.fsum(numbers)) and low <= min(numbers) and max(numbers) <= high:
            continue
        for i, item in enumerate(items):
            problem = _value_problem(f"{path}[{i}].{name}", getattr(item, name), rule)
            if problem:
                return problem
    return None


def inconsistency(rec: "RunRecord", stored_config: Mapping[str, Any]) -> str | None:
    """What makes a schema-valid record untrustworthy, or None: a run id that is not the hash of its configuration
    (as stored, or as this version reads it), a number that is not finite or outside its range, evaluation steps
    that do not strictly increase, or final metrics that disagree with the last evaluation they repeat (beyond
    :data:`TOLERANCE`), stop before it, or learned at a step never evaluated."""
    if rec.run_id not in (config_hash(stored_config), rec.config.run_id):
        return (f"$.run_id {rec.run_id!r} is not the hash of its configuration ({rec.config.run_id}): the "
                f"configuration or the id was changed after the run")
    problem = _range_problems(rec, "$")
    if problem:
        return problem
    steps = [p.step for p in rec.history]
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            return f"$.history[{i}].step = {steps[i]} does not follow step {steps[i - 1]} (steps must increase)"
    if rec.final is None or not rec.history:
        return None
    last = rec.history[-1]
    for final_name, point_name in REPEATED:
        a, b = getattr(rec.final, final_name), getattr(last, point_name)
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=TOLERANCE,
                                                                             abs_tol=TOLERANCE)):
            return (f"$.final.{final_name} = {a!r} disagrees with the last evaluation's {point_name} = {b!r} (step "
                    f"{last.step})")
    if rec.final.steps is not None and rec.final.steps < last.step:
        return f"$.final.steps = {rec.final.steps} is below the last evaluation's step {last.step}"
    if rec.final.steps_to_learn is not None and rec.final.steps_to_learn not in steps:
        return f"$.final.steps_to_learn = {rec.final.steps_to_learn} is not an evaluated step"
    return None


def _migrate_1(data: Mapping[str, Any]) -> dict[str, Any]:
    """``spamlang.run/1`` -> 2: the status is no longer repeated in ``final``, and a failed run's final is None."""
    data = {**data, "schema": SCHEMA}
    final = data.get("final")
    if data.get("status") == "failed":
        data["final"] = None
    elif isinstance(final, Mapping):
        data["final"] = {k: v for k, v in final.items() if k != "status"}
    return data


#: the older schemas this version reads, each with its migration to the next
MIGRATIONS = {"spamlang.run/1": _migrate_1}


# -- JSON (de)serialisation -----------------------------------------------------------------------------------------
def strict_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON of ``obj`` (dataclasses as objects, non-finite numbers as null)."""
    return json.dumps(_plain(obj), indent=indent, allow_nan=False, default=str)


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-ready data: dataclasses as dicts, tuples as lists, non-finite floats as None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(tp: Any, value: Any) -> Any:
    """``value`` (schema-valid JSON data) as the type ``tp``."""
    return _builder(tp)(value)


@functools.lru_cache(maxsize=None)
def _builder(tp: Any) -> Callable[[Any], Any]:
    """The function that turns schema-valid JSON data into the type ``tp`` (built once per type: reading a folder
    of records builds tens of thousands of evaluation points)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = _builder(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if origin is tuple:
        item = _builder(args[0])
        return lambda value: None if value is None else tuple(map(item, value))
    if tp is RunConfig:
        return lambda value: None if value is None else RunConfig.from_dict(value)
    if dataclasses.is_dataclass(tp):
        hints = type_hints(tp)
        fields = {name: _builder(hint) for name, hint in hints.items()}
        return lambda value: None if value is None else tp(**{name: fields[name](v) for name, v in value.items()})
    if tp is float:
        return lambda value: None if value is None else float(value)
    return lambda value: value


from spamlang.record.files import read, read_replaceable, write  # noqa: E402,F401 (re-exported: records' I/O)
