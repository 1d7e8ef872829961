"""Settings from the command line and the ini file: defined once, validated once, at start-up.

Every option exists twice, as ``--llmperf-NAME`` on the command line and ``llmperf_NAME`` in the ini
file. Per-test knobs (trials, warm-ups, batch sizes, ...) can also be set by the marker; precedence is
command line > marker > ini file > built-in default (``resolve_knobs``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pytest_llmperf.backends import BACKEND_IDS, ENDPOINT_BACKENDS
from pytest_llmperf.budgets import Budget, parse_budget_text
from pytest_llmperf.models.dtypes import parse_dtype
from pytest_llmperf.models.spec import parse_model_spec


def _int_at_least(text: str | int, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"expected {wanted}, got {text!r}")
    return value


def positive_int(text: str | int) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str | int) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _items(text: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", text.strip()) if item]


def batch_sizes(value: str | int | Sequence[int]) -> tuple[int, ...]:
    """From text ('1,8,32') or from Python (8, [1, 8, 32])."""
    items: Sequence[str | int]
    items = _items(value) if isinstance(value, str) else [value] if isinstance(value, int) else value
    if not items:
        raise ValueError("expected a list of positive integers such as '1,8,32', got nothing")
    try:
        return tuple(positive_int(i) for i in items)
    except ValueError:
        raise ValueError(f"expected a list of positive integers such as '1,8,32', got {value!r}") from None


def new_tokens(text: str | int) -> int:
    value = positive_int(text)
    if value < 2:
        raise ValueError(f"expected at least 2 new tokens (time per output token needs two), got {text!r}")
    return value


def prompt_set(text: str) -> str:
    from pytest_llmperf.prompt_set import PROMPT_SETS

    value = text.strip()
    if value not in PROMPT_SETS:
        raise ValueError(f"expected one of {', '.join(PROMPT_SETS)}, got {text!r}")
    return value


def workload_label(text: str) -> str:
    """A serving workload's label (``p32o32``, ``sharegpt-max512``), checked and written as the workload's own."""
    from pytest_llmperf.serving.workloads import parse_workload

    return parse_workload(text.strip()).label


def dtype(text: str) -> str:
    return "auto" if text.strip() == "auto" else parse_dtype(text.strip())


def device(text: str) -> str:
    value = text.strip()
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise ValueError(f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {text!r}")


def model_list(text: str) -> tuple[str, ...]:
    items = tuple(_items(text))
    if not items:
        raise ValueError("expected at least one model, e.g. 'synthetic:llama-tiny'")
    for item in items:
        parse_model_spec(item)
    return items


def backend_list(text: str) -> tuple[str, ...]:
    items = tuple(_items(text))
    unknown = [i for i in items if i not in BACKEND_IDS and ":" not in i]
    if not items or unknown:
        raise ValueError(f"unknown backend {', '.join(unknown) or text!r}; known backends: {', '.join(BACKEND_IDS)}")
    return items


def world_sizes(text: str) -> tuple[int, ...] | None:
    """'auto' (None: 1, 2, 4, ... up to the pool's size) or a list of positive integers."""
    if text.strip() == "auto":
        return None
    items = _items(text)
    try:
        if items:
            return tuple(positive_int(i) for i in items)
    except ValueError:
        pass
    raise ValueError(f"expected 'auto' or a list of positive integers such as '1,2,4', got {text!r}")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m`` or ``1.5h``."""
    raw = str(text).strip().lower()
    unit = _DURATION_UNITS.get(raw[-1:])
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 1.0)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"expected a positive duration such as 900, 900s, 15m or 1.5h, got {text!r}")
    return value


def percentage(text: str) -> float:
    """A fraction from ``5%`` or ``0.05``."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < 10:
        raise ValueError(f"expected a change such as 5% or 0.05, got {text!r}")
    return value


def _default_pool_dir() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"pytest-llmperf-{os.getuid()}", "pool")


def memory_headroom(text: str | int) -> int | None:
    """A byte size ('300MB', '2GiB', or a number of bytes); '' or 'none' for no limit."""
    from pytest_llmperf.units import parse_bytes

    if isinstance(text, int):
        value = text
    elif text.strip().lower() in ("", "none"):
        return None
    else:
        value = int(parse_bytes(text))
    if value <= 0:
        raise ValueError(f"expected a positive byte size such as '300MB', got {text!r}")
    return value


def progress_mode(text: str) -> str:
    if text.strip() in ("auto", "on", "off"):
        return text.strip()
    raise ValueError(f"expected 'auto', 'on' or 'off', got {text!r}")


def budget_text(text: str) -> tuple[Budget, ...]:
    return parse_budget_text(text)


def slo_text(text: str) -> tuple[tuple[str, float], ...]:
    """``"ttft_ms=200 tpot_ms=50"`` -> SLO pairs (none for "")."""
    from pytest_llmperf.serving.request_metrics import parse_slo

    return tuple(parse_slo(text).items())


def server_url(text: str) -> str | None:
    """An http(s) URL of an OpenAI-compatible server, without a trailing slash; None for ""."""
    text = text.strip()
    if not text:
        return None
    if not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", text):
        raise ValueError(f"expected the server's base URL, e.g. 'http://127.0.0.1:8000', got {text!r}")
    return text.rstrip("/")


def rate_limit(text: str) -> float:
    """A request rate in requests per second, >= 0 (0: no search)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a request rate in requests per second (0: no search), got {text!r}")
    return value


def ab_tag(text: str) -> tuple[str, str] | None:
    if not text.strip():
        return None
    group, sep, side = text.strip().partition(":")
    if not sep or not group or side not in ("base", "head"):
        raise ValueError(f"expected GROUP:SIDE with SIDE 'base' or 'head' (as llmperf ab passes it), got {text!r}")
    return group, side


def min_effect_text(text: str) -> tuple[tuple[str, float], ...]:
    from pytest_llmperf.gate.spec import parse_min_effect

    return parse_min_effect(text)


@dataclass(frozen=True)
class PythonForm:
    """What a marker argument or an ``llm.generate`` argument may be for a knob, before its parser checks it."""

    accepts: Callable[[object], bool]
    expected: str


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_ints(value: object) -> bool:
    return _is_int(value) or (isinstance(value, list | tuple) and all(_is_int(v) for v in value))


INT = PythonForm(_is_int, "an int")
INTS = PythonForm(_is_ints, "an int or a list of ints, e.g. [1, 8, 32]")
TEXT = PythonForm(lambda v: isinstance(v, str), "a string")
BYTE_SIZE = PythonForm(lambda v: isinstance(v, str) or _is_int(v), "a byte size such as '300MB' or a number of bytes")


@dataclass(frozen=True)
class Option:
    """One setting: ``--llmperf-<name>`` on the command line and ``llmperf_<name>`` in the ini file.

    ``parse`` is its one typed coercion: it takes the text of the command line or ini file, and for a
    per-test knob also the Python value of a marker or a call (whose type ``python`` checks first).
    """

    name: str
    parse: Callable[[Any], Any]
    default: str
    help: str
    metavar: str = "VALUE"
    python: PythonForm | None = None

    @property
    def flag(self) -> str:
        return f"--llmperf-{self.name.replace('_', '-')}"

    @property
    def ini(self) -> str:
        return f"llmperf_{self.name}"


def argument_type(parse: Callable[[str], Any], name: str | None = None) -> Callable[[str], Any]:
    """An argparse type from one of the parsers above, for pytest's options and ``llmperf``'s alike: its
    ValueError becomes argparse's usage error, which names the flag and the value."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name or parse.__name__  # argparse names the type in some messages
    return convert


def cache_home() -> Path:
    """This user's cache of pytest-llmperf: synthetic models, compiled extensions."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-llmperf"


def _default_model_cache() -> str:
    return str(cache_home() / "models")


OPTIONS: tuple[Option, ...] = (
    Option("db", str, ".llmperf/history.db", "SQLite history file (relative paths: to the rootdir)", "PATH"),
    Option("model_cache", str, _default_model_cache(), "where synthetic models are built once and kept", "DIR"),
    Option("models", model_list, "synthetic:bloom-tiny,synthetic:llama-tiny",
           "models for performance tests whose marker names none", "LIST"),
    Option("backends", backend_list, ",".join(b for b in BACKEND_IDS if b not in ENDPOINT_BACKENDS),
           "backends for performance tests whose marker names none", "LIST"),
    Option("batch_sizes", batch_sizes, "1,8,32", "batch sizes a sweep measures", "LIST", INTS),
    Option("prompt_tokens", positive_int, "32", "prompt length in tokens", "N", INT),
    Option("new_tokens", new_tokens, "100", "tokens generated per sequence (>= 2)", "N", INT),
    Option("prompts", prompt_set, "random",
           "prompt set: random (seeded token ids) or text (the shipped passages, through the model's tokenizer)",
           "SET", TEXT),
    Option("workload", workload_label, "p32o32",
           "serving: the requests of a load point, e.g. p32o32, p16-64o8-32, sharegpt-max512, prefix16-p64o32, "
           "p32o32+text (see docs/serving-workloads.md)", "LABEL", TEXT),
    Option("trials", positive_int, "5", "measured trials per batch size", "N", INT),
    Option("warmups", non_negative_int, "1", "unmeasured warm-up generates per batch size", "N", INT),
    Option("dtype", dtype, "auto", "float32, float16, bfloat16 or auto (bfloat16 on CUDA, float32 on CPU)", "DTYPE",
           TEXT),
    Option("device", device, "auto", "cpu, cuda, cuda:N or auto (cuda:0 when available)", "DEVICE", TEXT),
    Option("seed", non_negative_int, "0", "seed of the prompt token ids and of synthetic weights", "N", INT),
    Option("memory_headroom", memory_headroom, "none",
           "a real memory limit per rank: what the loaded model uses plus this much (e.g. 300MB); RLIMIT_AS "
           "on CPU (multi-process backends only), the CUDA allocator's fraction on GPU", "SIZE", BYTE_SIZE),
    Option("budgets", budget_text, "", "budgets for every performance test, e.g. 'load_s=30 tokens_per_s[8]=60'",
           "SPEC"),
    Option("min_effect", min_effect_text, "0.05",
           "the smallest relative change the regression gate reports: a default, then per-metric values "
           "(e.g. '0.05 load_s=0.2')", "SPEC"),
    Option("baseline_branch", str, "",
           "with --llmperf-compare: the branch whose recent runs are the baseline (default: the repository's "
           "default branch)", "NAME"),
    Option("baseline_runs", positive_int, "10", "with --llmperf-compare: at most N earlier runs per series", "N"),
    Option("report_dir", str, "",
           "write the gate's reports here: verdicts.md, run.json, benchmark.json (pytest-benchmark format)", "DIR"),
    Option("label", str, "", "a label stored with the run in the history (free text)", "TEXT"),
    Option("ab", ab_tag, "", "set by `llmperf ab`: the A/B group and side of this run", "GROUP:SIDE"),
    Option("world_sizes", world_sizes, "auto",
           "world sizes for performance tests whose marker names none: a list, or auto (1, 2, 4, ... "
           "up to the device pool)", "LIST"),
    Option("cpu_slots", positive_int, str(os.cpu_count() or 1),
           "size of the device pool on a machine without CUDA (virtual CPU slots)", "N"),
    Option("pool_dir", str, _default_pool_dir(),
           "directory of the device pool's lock files, shared by every pytest process on this machine", "DIR"),
    Option("lease_timeout", seconds, "3600", "seconds a test waits for free devices before it fails", "S"),
    Option("rank_timeout", seconds, "600",
           "seconds a rank may take over one command (load, generate) before its group is torn down", "S"),
    Option("max_batch", non_negative_int, "0",
           "search for the largest batch that fits, up to N (doubling, then bisection); 0: no search", "N"),
    Option("slo", slo_text, "",
           "serving SLOs a request must meet to count toward goodput, and the target of the --llmperf-max-rate "
           "search, e.g. 'ttft_ms=200 tpot_ms=50' (ttft_ms, tpot_ms, e2el_ms)", "SPEC"),
    Option("max_rate", rate_limit, "0",
           "serving: search for the largest request rate, up to N req/s, whose p99 TTFT and TPOT meet the SLO; "
           "0: no search", "N"),
    Option("server_url", server_url, "",
           "an OpenAI-compatible server someone else runs (TGI, SGLang, a deployment), measured by serving tests "
           "whose backend is 'external'", "URL"),
    Option("server_timeout", seconds, "600", "seconds a serving test's server may take to answer", "S"),
    Option("progress", progress_mode, "auto", "progress display: auto (a terminal, not CI, not -q), on, off",
           "MODE"),
)
OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Knobs:
    """Per-test tunables. At each layer (command line, marker, ini) a field is None when not set there."""

    trials: int | None = None
    warmups: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    prompts: str | None = None
    #: a serving workload's label
    workload: str | None = None
    dtype: str | None = None
    device: str | None = None
    seed: int | None = None
    memory_headroom: int | None = None


KNOB_NAMES = tuple(f.name for f in fields(Knobs))
DEFAULT_KNOBS = Knobs(**{name: OPTIONS_BY_NAME[name].parse(OPTIONS_BY_NAME[name].default) for name in KNOB_NAMES})


def from_python(form: PythonForm, parse: Callable[[Any], Any], value: object, meaning: str = "") -> Any:
    """A value given in Python, checked strictly: its type against ``form``, then ``parse``. ValueError names
    what was expected (and ``meaning``, what the value is for); the caller names where it came from."""
    if not form.accepts(value):
        raise ValueError(f"expected {form.expected}" + (f" ({meaning})" if meaning else ""))
    return parse(value)


def knob_from_python(name: str, value: object) -> Any:
    """A knob given in Python (a marker or an ``llm.generate`` argument)."""
    option = OPTIONS_BY_NAME[name]
    assert option.python is not None, f"{name} is not a per-test knob"
    return from_python(option.python, option.parse, value, option.help)


def resolve_knobs(*layers: Knobs) -> Knobs:
    """Each field from the first layer that sets it: pass the layers highest precedence first."""
    resolved = Knobs()
    for name in KNOB_NAMES:
        for layer in layers:
            if getattr(layer, name) is not None:
                resolved = replace(resolved, **{name: getattr(layer, name)})
                break
    return resolved


class SettingsError(ValueError):
    """A setting with a bad value; the message names the option, the value and what is allowed."""


def _rooted(path: str, rootdir: Path) -> Path | None:
    if not path:
        return None
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else rootdir / p


@dataclass(frozen=True)
class Settings:
    enabled: bool
    db_path: Path
    model_cache: Path
    models: tuple[str, ...]
    backends: tuple[str, ...]
    progress: str
    #: None: "auto" (powers of two up to the pool's size)
    world_sizes: tuple[int, ...] | None
    cpu_slots: int
    pool_dir: Path
    lease_timeout_s: float
    rank_timeout_s: float
    max_batch: int
    cli: Knobs
    ini: Knobs
    cli_budgets: tuple[Budget, ...]
    ini_budgets: tuple[Budget, ...]
    #: ``min_effect`` pairs (see ``gate.spec``) from the command line and the ini file; () when not set there
    cli_min_effect: tuple[tuple[str, float], ...] = ()
    ini_min_effect: tuple[tuple[str, float], ...] = ()
    #: gate this run against the history (``--llmperf-compare``)
    compare: bool = False
    #: rerun regressed tests once before failing (on unless ``--llmperf-no-confirm``): one run's value has
    #: heavy tails, and a second process makes a false alarm need two outliers
    confirm: bool = True
    label: str | None = None
    #: None: the repository's default branch
    baseline_branch: str | None = None
    baseline_runs: int = 10
    report_dir: Path | None = None
    #: (group, side) of an A/B run, set by ``llmperf ab``
    ab: tuple[str, str] | None = None
    #: serving: the SLOs of goodput and of the max-rate search, (metric, milliseconds)
    slo: tuple[tuple[str, float], ...] = ()
    #: serving: the upper end of the max-rate search (0: none)
    max_rate_rps: float = 0.0
    #: serving: an endpoint someone else runs, for backend "external"
    server_url: str | None = None
    server_timeout_s: float = 600.0

    @classmethod
    def from_sources(cls, *, enabled: bool, cli: Mapping[str, Any], ini: Mapping[str, str | None],
                     rootdir: Path, compare: bool = False, confirm: bool = True) -> Settings:
        """``cli`` holds values already parsed by argparse (None when not given); ``ini`` holds raw strings."""
        ini_values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = ini.get(option.name)
            if raw is None or str(raw).strip() == "":
                continue
            try:
                ini_values[option.name] = option.parse(str(raw))
            except ValueError as e:
                raise SettingsError(f"{option.ini} = {raw!r} in the ini file: {e}") from None

        def pick(name: str) -> Any:
            for source in (cli, ini_values):
                if source.get(name) is not None:
                    return source[name]
            option = OPTIONS_BY_NAME[name]
            return option.parse(option.default)

        db = Path(os.path.expanduser(pick("db")))
        cache = pick("model_cache")
        return cls(
            enabled=enabled,
            db_path=db if db.is_absolute() else rootdir / db,
            model_cache=Path(os.path.expanduser(cache)),
            models=pick("models"),
            backends=pick("backends"),
            progress=pick("progress"),
            world_sizes=pick("world_sizes"),
            cpu_slots=pick("cpu_slots"),
            pool_dir=Path(os.path.expanduser(pick("pool_dir"))),
            lease_timeout_s=pick("lease_timeout"),
            rank_timeout_s=pick("rank_timeout"),
            max_batch=pick("max_batch"),
            cli=Knobs(**{n: cli.get(n) for n in KNOB_NAMES}),
            ini=Knobs(**{n: ini_values.get(n) for n in KNOB_NAMES}),
            cli_budgets=cli.get("budgets") or (),
            ini_budgets=ini_values.get("budgets", ()),
            cli_min_effect=cli.get("min_effect") or (),
            compare=compare,
            confirm=confirm,
            label=pick("label") or None,
            baseline_branch=pick("baseline_branch") or None,
            baseline_runs=pick("baseline_runs"),
            report_dir=_rooted(pick("report_dir"), rootdir),
            ab=pick("ab") or None,
            slo=pick("slo"),
            max_rate_rps=pick("max_rate"),
            server_url=pick("server_url"),
            server_timeout_s=pick("server_timeout"),
            ini_min_effect=ini_values.get("min_effect", ()),
        )
