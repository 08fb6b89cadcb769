"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, one tracker run per training run.

A tracker logs each evaluation point of a run (every numeric :class:`~spamlang.record.EvalPoint` field at its step:
losses, accuracies, the gradient diagnostics, the baselines) as it is made, then the run's record: its status and
every numeric :class:`~spamlang.record.Final` field as ``final/<name>``, with the run's settings as parameters. The
harness knows nothing of trackers: it calls an ``on_eval`` callback, which :meth:`Tracker.log_point` fills.

Where each tracker writes: TensorBoard event files in ``<folder>/tensorboard/<run_id>``; W&B runs in
``<folder>/wandb`` (``$WANDB_DIR`` when set; offline with ``WANDB_MODE=offline``; project ``$WANDB_PROJECT`` or
``spamlang``); MLflow runs at ``$MLFLOW_TRACKING_URI``, else in the SQLite file ``<folder>/mlflow.db``, in the
experiment ``$MLFLOW_EXPERIMENT_NAME``, else the suite's name, else ``spamlang``. ``<folder>`` is the results folder of
``spamlang run`` or the ``--out`` folder of ``spamlang train``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spamlang.errors import SpamLangError

if TYPE_CHECKING:  # annotations only: the command line imports this module at start
    from spamlang.record import EvalPoint, RunRecord

#: tracker name -> (the module it needs, the pip extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


@dataclasses.dataclass(frozen=True)
class TrackerSpec:
    """Which tracker, the folder it writes under, and the group its runs belong to (a suite's name); picklable, so
    that a worker process or Ray task opens its own tracker."""
    name: str
    folder: str
    group: str | None = None


def check(name: str) -> None:
    """SpamLangError when tracker ``name`` is unknown or its package is not installed."""
    if name not in TRACKERS:
        raise SpamLangError(f"unknown tracker '{name}' (trackers: {', '.join(TRACKERS)})")
    module, extra = TRACKERS[name]
    if importlib.util.find_spec(module) is None:
        raise SpamLangError(f"--tracker {name} needs {module}: pip install 'spamlang[{extra}]'")


#: seconds the checks before the first run wait for a tracker's server
REACH_TIMEOUT = 5.0


def check_ready(spec: TrackerSpec) -> None:
    """SpamLangError now, before any run, for a tracker that would fail every run: its package missing; W&B online
    without a login or out of reach; an MLflow tracking URI (``$MLFLOW_TRACKING_URI``) that does not answer."""
    check(spec.name)
    if spec.name == "wandb":
        _check_wandb()
    elif spec.name == "mlflow" and os.environ.get("MLFLOW_TRACKING_URI"):
        _check_mlflow(os.environ["MLFLOW_TRACKING_URI"])


def _wandb_offline() -> bool:
    """Whether W&B logs locally: ``$WANDB_MODE`` (or the ``mode`` of its settings file) offline or disabled."""
    import configparser
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if not mode:
        folder = os.environ.get("WANDB_CONFIG_DIR") or Path("~/.config/wandb").expanduser()
        settings = configparser.ConfigParser()
        settings.read(Path(folder) / "settings")
        mode = settings.get("default", "mode", fallback="").strip().lower()
    return mode in ("offline", "disabled", "dryrun")


def _wandb_host() -> tuple[str, str, int]:
    """(base URL, host, port) of the W&B server: ``$WANDB_BASE_URL`` or https://api.wandb.ai."""
    from urllib.parse import urlsplit
    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    parts = urlsplit(base if "://" in base else f"https://{base}")
    return base, parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def _wandb_key(host: str) -> str | None:
    """The W&B API key: ``$WANDB_API_KEY``, else the netrc entry of the server (as ``wandb login`` writes it)."""
    import netrc
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    path = os.environ.get("NETRC") or Path("~/.netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _check_wandb() -> None:
    import socket
    if _wandb_offline():
        return
    base, host, port = _wandb_host()
    if not _wandb_key(host):
        raise SpamLangError(f"--tracker wandb: not logged in to {base} (run 'wandb login' or set WANDB_API_KEY), or "
                            f"set WANDB_MODE=offline to log locally")
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT).close()
    except OSError as exc:
        raise SpamLangError(f"--tracker wandb: cannot reach {base} ({exc.strerror or exc}); check the network, or set "
                            f"WANDB_MODE=offline to log locally") from None


def _check_mlflow(uri: str) -> None:
    """Ask the tracking server at ``uri`` for one experiment, without MLflow's retries, within REACH_TIMEOUT."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(REACH_TIMEOUT)))
    try:
        from mlflow.tracking import MlflowClient
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many kinds for a bad URI: one line names it
        raise SpamLangError(f"--tracker mlflow: the tracking URI {uri!r} (MLFLOW_TRACKING_URI) does not work: "
                            f"{_first_line(exc)}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def numbers(obj: Any) -> dict[str, float]:
    """The finite int and float fields of a dataclass (bools and None left out)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f.name] = float(value)
    return out


def point_metrics(point: EvalPoint) -> dict[str, float]:
    """An evaluation's metrics by name (``step`` is the x axis, not a metric)."""
    return {k: v for k, v in numbers(point).items() if k != "step"}


def params(config) -> dict[str, Any]:
    """A run's settings (a :class:`~spamlang.config.RunConfig`) as flat parameters: ``task_params.k``,
    ``head_params.NAME`` beside the others."""
    flat = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


class Tracker:
    """One tracker run: :meth:`log_point` for each evaluation, :meth:`finish` once with the record."""

    def log_point(self, point: EvalPoint) -> None:
        raise NotImplementedError

    def finish(self, rec: RunRecord) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    def __init__(self, spec: TrackerSpec, run_id: str, settings: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(spec.folder) / "tensorboard" / run_id))
        self.writer.add_text("config", "\n".join(f"- {k}: `{v}`" for k, v in settings.items()))

    def log_point(self, point: EvalPoint) -> None:
        for key, value in point_metrics(point).items():
            self.writer.add_scalar(f"eval/{key}", value, point.step)

    def finish(self, rec: RunRecord) -> None:
        step = rec.final.steps if rec.final is not None and rec.final.steps is not None else 0
        for key, value in (numbers(rec.final) if rec.final is not None else {}).items():
            self.writer.add_scalar(f"final/{key}", value, step)
        self.writer.add_text("status", rec.status + (f": {rec.error}" if rec.error else ""), step)
        self.writer.close()


class WandB(Tracker):
    def __init__(self, spec: TrackerSpec, run_id: str, settings: dict[str, Any]):
        import wandb
        folder = None if os.environ.get("WANDB_DIR") else Path(spec.folder)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "spamlang"), name=run_id, group=spec.group,
                              config=settings, dir=folder and str(folder), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def log_point(self, point: EvalPoint) -> None:
        self.run.log({f"eval/{k}": v for k, v in point_metrics(point).items()}, step=point.step)

    def finish(self, rec: RunRecord) -> None:
        final = numbers(rec.final) if rec.final is not None else {}
        self.run.summary.update({"status": rec.status, **{f"final/{k}": v for k, v in final.items()}})
        self.run.finish(exit_code=0 if rec.status != "failed" else 1)


class MLflow(Tracker):
    def __init__(self, spec: TrackerSpec, run_id: str, settings: dict[str, Any]):
        from mlflow.entities import Param
        self.client, experiment_id = _mlflow_experiment(spec)
        self.run_id = self.client.create_run(experiment_id, run_name=run_id).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in settings.items()])

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_point(self, point: EvalPoint) -> None:
        self._log({f"eval/{k}": v for k, v in point_metrics(point).items()}, point.step)

    def finish(self, rec: RunRecord) -> None:
        final = numbers(rec.final) if rec.final is not None else {}
        self._log({f"final/{k}": v for k, v in final.items()}, int(final.get("steps", 0)))
        self.client.set_tag(self.run_id, "status", rec.status)
        self.client.set_terminated(self.run_id, "FAILED" if rec.status == "failed" else "FINISHED")


def _mlflow_experiment(spec: TrackerSpec):
    """An MLflow client of the tracking URI (``$MLFLOW_TRACKING_URI``, else the SQLite file ``<folder>/mlflow.db``)
    and the id of the experiment (created when missing)."""
    from mlflow.tracking import MlflowClient
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        Path(spec.folder).mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{(Path(spec.folder) / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or spec.group or "spamlang"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    try:
        return client, client.create_experiment(name)
    except Exception:  # another worker created it first
        return client, client.get_experiment_by_name(name).experiment_id


def prepare(spec: TrackerSpec) -> None:
    """Set up what the runs of ``spec`` share before they start in parallel (MLflow: the store and experiment)."""
    check(spec.name)
    if spec.name == "mlflow":
        _mlflow_experiment(spec)


_ADAPTERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def start(spec: TrackerSpec, config) -> Tracker:
    """Open a tracker run for the run of ``config`` (a resolved :class:`~spamlang.config.RunConfig`)."""
    check(spec.name)
    settings = params(config)
    try:
        return _ADAPTERS[spec.name](spec, config.run_id, settings)
    except SpamLangError:
        raise
    except Exception as exc:  # the tracker's own errors (no login, no network, a bad store): one line
        raise SpamLangError(f"--tracker {spec.name}: {type(exc).__name__}: {_first_line(exc)}") from None



def finish(tracker: Tracker, rec: RunRecord, name: str) -> None:
    """:meth:`Tracker.finish`, its errors as one SpamLangError (the record is written before)."""
    try:
        tracker.finish(rec)
    except Exception as exc:
        raise SpamLangError(f"--tracker {name}: the run's record is written, but logging it failed: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
