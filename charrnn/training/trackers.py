"""Where a run's curves, samples and results go: the `logger` group (docs/trackers.md).

    logger=tensorboard              event files in the run folder (the default)
    logger=csv                      metrics.csv in the run folder
    logger=mlflow                   an MLflow tracking store or server
    logger=wandb                    Weights & Biases, online or offline
    logger=many                     tensorboard, csv and mlflow; or a list: logger=[csv,wandb]

Each tracker's settings are the arguments of its Lightning logger class, under logger.<name>.
Lightning gives every `self.log` value to each logger; the helpers here do the same for what
the callbacks write themselves (per-step scalars, sample text, the gradient-distance picture)
and for what a run leaves at its end (metrics.json, the run folder's path).

A run's tracker ids are kept in trackers.json in its folder, so that a resume continues the
same tracker run; in a sweep's folder the same file holds MLflow's parent run of the sweep.
A password never reaches a file or a tracker: one typed into logger.mlflow.tracking_uri on the
command line goes into MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD first (`take_secret`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from charrnn.errors import CharRNNError, check_keys

TRACKERS = ("tensorboard", "csv", "mlflow", "wandb")
# CSVLogger's warning that it deletes metrics.csv: a resumed run's is kept (_csv_logger)
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
TRACKERS_FILE = "trackers.json"
WHERE = "conf/train/logger/"
PROBE_TIMEOUT_S = 5
DEFAULT_EXPERIMENT = "charrnn"
EXTRA = 'pip install -e ".[trackers]"'


# --- the command line and the checks before training -------------------------------------------

def take_secret(arg: str) -> str:
    """`logger.mlflow.tracking_uri=https://user:pass@host` -> the URI without user and password,
    which go into MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (this process's jobs
    inherit them; Hydra, which writes every override into the run folder, never sees them)."""
    key, _, value = arg.partition("=")
    if key.lstrip("+") != "logger.mlflow.tracking_uri":
        return arg
    parts = urlsplit(value.strip("'\""))
    if parts.password is None and parts.username is None:
        return arg
    os.environ["MLFLOW_TRACKING_USERNAME"] = parts.username or ""
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = parts.password
    return f"{key}={urlunsplit(parts._replace(netloc=parts.netloc.rpartition('@')[2]))}"


def masked(uri: str) -> str:
    """A URI fit to print: user and password replaced by ***."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def selected(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The trackers the `logger` group chose, each with its settings, checked."""
    chosen = OmegaConf.to_container(cfg.get("logger") or {}, resolve=True)
    unknown = [name for name in chosen if name not in TRACKERS]
    if unknown or not chosen:
        raise CharRNNError(
            f"logger must choose one or more of {', '.join(TRACKERS)} (logger=mlflow, "
            f"logger=many or a list such as logger=[tensorboard,mlflow]); got "
            f"{', '.join(unknown) or 'none'} (the files in {WHERE}).")
    return {name: dict(settings or {}) for name, settings in chosen.items()}


def check_trackers(cfg: DictConfig) -> None:
    """Everything about the trackers that can fail, before training: each one's keys, its
    package, its store. An MLflow server is asked for its health (seconds, not an epoch)."""
    for name, settings in selected(cfg).items():
        target = _logger_class(name)
        if name == "wandb":  # WandbLogger passes what it does not take to wandb.init
            _check_wandb_keys(target, settings)
        else:
            check_keys(f"logger.{name}", target, settings, _TAKEN[name])
        if name == "mlflow":
            uri = mlflow_uri(settings)
            if uri.startswith(("http://", "https://")):
                probe_server(uri)
            elif settings.get("tracking_uri") and "@" in urlsplit(uri).netloc:
                raise CharRNNError(
                    f"logger.mlflow.tracking_uri holds a user or password ({masked(uri)}): "
                    "remove it from the config file and set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead.")


def _check_wandb_keys(target: type, settings: dict[str, Any]) -> None:
    import difflib
    import inspect

    import wandb

    allowed = sorted({*inspect.signature(target).parameters, *inspect.signature(
        wandb.init).parameters} - {"self", "kwargs", *_TAKEN["wandb"]})
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        near = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" Did you mean logger.wandb.{near[0]}?" if near else ""
        raise CharRNNError(
            f"logger.wandb.{unknown[0]} is not an argument of Lightning's WandbLogger or of "
            f"wandb.init, which logger.wandb.* configures.{hint} Remove it from the command "
            f"line or from {WHERE}wandb.yaml.")


def probe_server(uri: str) -> None:
    """Refuse a tracking server that does not answer /health (MLflow's) within seconds."""
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get(
        "MLFLOW_TRACKING_PASSWORD")
    if user is not None and password is not None:
        import base64

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as answer:
            answer.read(100)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise CharRNNError(
            f"the MLflow tracking server at {masked(uri)} (logger.mlflow.tracking_uri) does not "
            f"answer ({reason}; asked {uri.rstrip('/')}/health, waited up to "
            f"{PROBE_TIMEOUT_S} s). Nothing was trained. Start it (`mlflow server --host "
            f"127.0.0.1 --port 5000`), fix the URI, or leave logger.mlflow.tracking_uri unset "
            f"for a local store under outputs/.") from None


def _logger_class(name: str) -> type:
    if name == "tensorboard":
        return TensorBoardLogger
    if name == "csv":
        return CSVLogger
    try:
        if name == "mlflow":
            import mlflow  # noqa: F401
            from lightning.pytorch.loggers import MLFlowLogger
            return MLFlowLogger
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
        return WandbLogger
    except ImportError:
        raise CharRNNError(
            f"logger={name} needs the {name} package, which is not installed: {EXTRA} (or "
            f"pip install {name}), or choose another logger (logger=tensorboard).") from None


# What this project passes itself, not a key of logger.<name>.
_TAKEN = {
    "tensorboard": ("save_dir", "name", "version", "default_hp_metric", "sub_dir", "kwargs"),
    "csv": ("save_dir", "name", "version"),
    "mlflow": ("run_id", "save_dir", "log_model"),
    "wandb": ("save_dir", "dir", "version", "id", "experiment", "log_model", "anonymous"),
}


# --- building the loggers --------------------------------------------------------------------

def mlflow_uri(settings: dict[str, Any]) -> str:
    """logger.mlflow.tracking_uri, or the local default: SQLite in outputs/ (beside the runs).
    A plain folder is MLflow's file store."""
    uri = settings.get("tracking_uri")
    if not uri:
        return f"sqlite:///{Path('outputs').absolute() / 'mlflow.db'}"
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).expanduser().absolute().as_uri()
    return uri


def mlflow_store(settings: dict[str, Any]) -> tuple[str, str | None]:
    """The tracking URI and a new experiment's artifact location: logger.mlflow.* as given,
    a local store's artifacts in mlartifacts/ beside it. A file store is opted into (MLflow 3
    keeps it only on request, and a folder given as the URI is one)."""
    uri = mlflow_uri(settings)
    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    folder = (Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///")
              else Path(urlsplit(uri).path) if uri.startswith("file:") else None)
    artifacts = settings.get("artifact_location") or (
        (folder / "mlartifacts").as_uri() if folder is not None else None)
    return uri, artifacts


def read_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / TRACKERS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / TRACKERS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def sweep_folder() -> Path | None:
    """The folder of the sweep this job belongs to (None outside a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def sweep_name(folder: Path) -> str:
    """A sweep's experiment (MLflow) or group (W&B): its folder, as the user sees it."""
    try:
        return folder.absolute().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return folder.absolute().as_posix()


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The chosen trackers' loggers for the run in `run_dir` (a resumed run: the same tracker
    runs, from its trackers.json)."""
    record, sweep = read_record(run_dir), sweep_folder()
    parent = read_record(sweep) if sweep else {}
    loggers: list[Logger] = []
    for name, settings in selected(cfg).items():
        if name == "tensorboard":
            # name="" and version="": event files go straight into the run folder, and a
            # resumed run appends to the same folder instead of starting version_1.
            # max_queue: GradientMonitor writes its values in groups; with SummaryWriter's
            # default of 10 queued events each write of a group waits for the writer thread.
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="", version="",
                                             default_hp_metric=False, max_queue=1000,
                                             **settings))
        elif name == "csv":
            loggers.append(_csv_logger(settings, run_dir))
        elif name == "mlflow":
            loggers.append(_mlflow_logger(settings, run_dir, record, sweep, parent))
        else:
            loggers.append(_wandb_logger(settings, run_dir, record, sweep))
    return loggers


def _csv_logger(settings: dict, run_dir: Path) -> Logger:
    """CSVLogger, except that a resumed run's metrics.csv is kept and appended to (Lightning
    deletes it when the logger starts)."""
    logger = CSVLogger(save_dir=run_dir, name="", version="", **settings)
    path = run_dir / "metrics.csv"
    if path.is_file():
        kept = path.read_text()
        writer = logger.experiment  # the deletion
        path.write_text(kept)
        writer.metrics_keys = next(csv.reader(io.StringIO(kept)), [])
    return logger


def _mlflow_logger(settings: dict, run_dir: Path, record: dict, sweep: Path | None,
                   parent: dict) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger

    uri, artifacts = mlflow_store(settings)
    settings = {**settings, "tracking_uri": uri, "artifact_location": artifacts}
    if not settings.get("experiment_name"):
        settings["experiment_name"] = sweep_name(sweep) if sweep else DEFAULT_EXPERIMENT
    settings["run_name"] = settings.get("run_name") or run_dir.name
    tags = {**(settings.get("tags") or {}), "run_dir": str(run_dir.absolute())}
    if parent.get("mlflow", {}).get("parent_run_id"):
        tags["mlflow.parentRunId"] = parent["mlflow"]["parent_run_id"]
    settings["tags"] = tags
    return MLFlowLogger(**settings, run_id=record.get("mlflow", {}).get("run_id"))


def _wandb_logger(settings: dict, run_dir: Path, record: dict, sweep: Path | None) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    settings = dict(settings)
    if settings.get("offline") is None:  # online where a key is set, else offline
        settings["offline"] = not wandb_key_set()
    settings["name"] = settings.get("name") or run_dir.name
    if sweep and not settings.get("group"):
        settings["group"] = sweep_name(sweep)
    run_id = record.get("wandb", {}).get("id")
    extra = {"resume": "allow"} if run_id else {}
    return WandbLogger(save_dir=str(run_dir), id=run_id, **settings, **extra)


def wandb_key_set() -> bool:
    """Whether W&B has an API key here (WANDB_API_KEY, or `wandb login`'s ~/.netrc entry)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def remember_runs(loggers: list[Logger], run_dir: Path) -> None:
    """trackers.json in the run folder: each tracker run's id, for a resume to continue it."""
    record = read_record(run_dir)
    for logger in loggers:
        kind = _kind(logger)
        if kind == "mlflow":
            record["mlflow"] = {"run_id": logger.run_id, "experiment_id": logger.experiment_id,
                                "tracking_uri": masked(logger._tracking_uri or "")}
        elif kind == "wandb":
            run = logger.experiment
            record["wandb"] = {"id": run.id, "project": run.project,
                               "offline": bool(getattr(run.settings, "_offline", False))}
    if record:
        write_record(run_dir, record)


def _kind(logger: Logger) -> str:
    name = type(logger).__name__
    return {"TensorBoardLogger": "tensorboard", "CSVLogger": "csv", "MLFlowLogger": "mlflow",
            "WandbLogger": "wandb"}.get(name, name)


# --- writing to every tracker ----------------------------------------------------------------

def log_scalars(loggers: list[Logger], values: dict[str, float], step: int) -> None:
    """Scalars at `step` to every tracker (TensorBoard's writer directly: no per-call cost)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for key, value in values.items():
                logger.experiment.add_scalar(key, value, global_step=step)
        elif _kind(logger) == "mlflow":
            logger.log_metrics({_mlflow_key(k): v for k, v in values.items()}, step)
        else:
            logger.log_metrics(values, step)


def _mlflow_key(key: str) -> str:
    """MLflow's names take letters, digits, _ - . / and spaces: samples/T=0.5 -> samples/T_0.5."""
    return re.sub(r"[^\w\-./ ]", "_", key)


def log_text(loggers: list[Logger], key: str, text: str, step: int) -> None:
    """A text (a sample) to every tracker that has a place for it (not CSV)."""
    for logger in loggers:
        kind = _kind(logger)
        if kind == "tensorboard":
            # TensorBoard renders text as Markdown: a 4-space indent keeps every line break.
            block = "\n".join("    " + line for line in text.split("\n"))
            logger.experiment.add_text(key, block, global_step=step)
        elif kind == "mlflow":
            logger.experiment.log_text(logger.run_id, text,
                                       f"{_mlflow_key(key)}/step-{step:07d}.txt")
        elif kind == "wandb":
            logger.log_text(key=key, columns=["step", "text"], data=[[step, text]])


def log_image(loggers: list[Logger], key: str, image, step: int) -> None:
    """An RGB image (H, W, 3) to every tracker that has a place for it (not CSV)."""
    for logger in loggers:
        kind = _kind(logger)
        if kind == "tensorboard":
            logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
        elif kind == "mlflow":
            logger.experiment.log_image(logger.run_id, image, key=_mlflow_key(key), step=step)
        elif kind == "wandb":
            logger.log_image(key=key, images=[image], step=step)


def log_config(loggers: list[Logger], cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config as parameters, and the run folder's path, to MLflow and W&B
    (TensorBoard gets its HParams entry at the end, with the results; CSV's run folder holds
    config.yaml)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    flat["run_dir"] = str(run_dir.absolute())
    for logger in loggers:
        kind = _kind(logger)
        if kind == "mlflow":
            _mlflow_params(logger, flat)
        elif kind == "wandb":
            logger.experiment.config.update(flat, allow_val_change=True)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _mlflow_params(logger, flat: dict[str, Any]) -> None:
    """Parameters of an MLflow run: a resumed run keeps the ones it has (MLflow refuses to
    change one); what this resume changed (trainer.max_epochs, say) goes in a tag."""
    from mlflow.entities import Param, RunTag

    client, run_id = logger.experiment, logger.run_id
    had = client.get_run(run_id).data.params
    params = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in had]
    changed = [RunTag(f"resumed.{k}", str(v)[:5000]) for k, v in flat.items()
               if k in had and had[k] != str(v)[:6000]]
    for i in range(0, max(len(params), len(changed)), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=params[i : i + 100], tags=changed[i : i + 100])


def attach_results(loggers: list[Logger], run_dir: Path, files: list[Path]) -> None:
    """The run's result files (metrics.json) to the trackers that keep files; W&B's summary
    gets metrics.json's values too."""
    files = [path for path in files if path.is_file()]
    for logger in loggers:
        kind = _kind(logger)
        for path in files:
            if kind == "mlflow":
                logger.experiment.log_artifact(logger.run_id, str(path))
            elif kind == "wandb":
                logger.experiment.save(str(path), base_path=str(path.parent), policy="now")
        metrics = run_dir / "metrics.json"
        if kind == "wandb" and metrics in files:
            logger.experiment.summary.update(
                {k: v for k, v in json.loads(metrics.read_text()).items()
                 if isinstance(v, (int, float, str, bool))})


def close_trackers(loggers: list[Logger], failed: bool) -> None:
    """Each tracker run closed, as finished or failed: the next job of a sweep that runs in
    this process (Hydra's basic launcher) starts a run of its own."""
    for logger in loggers:
        logger.finalize("failed" if failed else "success")
        if _kind(logger) == "wandb" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)
            logger._experiment = None


# --- a sweep: MLflow's parent run ------------------------------------------------------------

def start_sweep(config: DictConfig) -> None:
    """At a sweep's start (SweepSummary): with mlflow among the loggers, the parent run that
    every job's run becomes a child of, its id in the sweep folder's trackers.json."""
    chosen = config.get("logger") or {}
    if "mlflow" not in chosen:
        return
    _logger_class("mlflow")  # not installed: one paragraph, before any job
    settings = dict(OmegaConf.to_container(chosen.mlflow, resolve=True) or {})
    folder = Path(config.hydra.sweep.dir)
    uri, artifacts = mlflow_store(settings)
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = settings.get("experiment_name") or sweep_name(folder)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=artifacts)
    run = client.create_run(experiment_id, run_name=f"sweep {sweep_name(folder)}",
                            tags={"sweep_dir": str(folder.absolute())})
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder, {"mlflow": {"parent_run_id": run.info.run_id,
                                     "experiment_id": experiment_id,
                                     "tracking_uri": masked(uri)}})


def end_sweep(config: DictConfig, files: list[Path], failed: bool) -> None:
    """At a sweep's end: the summary files attached to MLflow's parent run, which ends."""
    folder = Path(config.hydra.sweep.dir)
    parent = read_record(folder).get("mlflow")
    if not parent:
        return
    from mlflow import MlflowClient

    settings = OmegaConf.to_container(config.logger.mlflow, resolve=True) or {}
    client = MlflowClient(tracking_uri=mlflow_store(dict(settings))[0])
    for path in files:
        if path.is_file():
            client.log_artifact(parent["parent_run_id"], str(path))
    client.set_terminated(parent["parent_run_id"], "FAILED" if failed else "FINISHED")
