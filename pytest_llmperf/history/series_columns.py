"""How a ``SeriesKey`` is laid out in the columns of the ``results`` table, both ways.

The one place that knows which columns hold a series' identity: writes spread a key over them, and every
query that reads series back builds the key from them, by keyword.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_llmperf.series import LoadPoint, SeriesKey

#: the identity columns of ``results``, in the order ``series_key_from`` reads them
SERIES_COLUMNS = ("test_id", "model_id", "model_config_hash", "backend", "variant", "dtype", "world_size",
                  "batch_size", "prompt_tokens", "new_tokens", "metric", "env_fingerprint", "prompts",
                  "request_rate", "concurrency", "workload")
#: the load-point coordinates beyond the batch ones that have a column (a serving load point's)
SERVING_COORDINATES = ("request_rate", "concurrency")


def series_select(alias: str) -> str:
    """The identity columns for a SELECT list, each prefixed with the table's alias."""
    return ", ".join(f"{alias}.{c}" for c in SERIES_COLUMNS)


def series_key_from(values: Sequence[Any]) -> SeriesKey:
    """The key of a row whose first ``len(SERIES_COLUMNS)`` values are the identity columns, in order."""
    (test_id, model_id, config_hash, backend, variant, dtype, world_size, batch_size, prompt_tokens, new_tokens,
     metric, env, prompts, request_rate, concurrency, workload) = values[:len(SERIES_COLUMNS)]
    return SeriesKey(test_id=test_id, model_id=model_id, model_config_hash=config_hash, backend=backend,
                     variant=variant, dtype=dtype, world_size=world_size,
                     point=LoadPoint.of(batch_size=batch_size, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                                        request_rate=request_rate, concurrency=concurrency),
                     metric=metric, env_fingerprint=env, prompts=prompts, workload=workload)


def series_columns(key: SeriesKey) -> dict[str, Any]:
    """The identity columns of a result of this series, and its ``series_key``."""
    extra = {name: value for name, value in key.point.extra().items() if name not in SERVING_COORDINATES}
    if extra:
        raise ValueError(f"{key.label}: the history has no column for the load-point coordinates "
                         f"{', '.join(sorted(extra))}; a schema migration must add them before such series are "
                         f"recorded")
    return {"test_id": key.test_id, "model_id": key.model_id, "model_config_hash": key.model_config_hash,
            "backend": key.backend, "variant": key.variant, "dtype": key.dtype, "world_size": key.world_size,
            "batch_size": key.point.batch_size, "prompt_tokens": key.point.prompt_tokens,
            "new_tokens": key.point.new_tokens, "metric": key.metric, "env_fingerprint": key.env_fingerprint,
            "series_key": key.digest(),
            # left out (NULL) for random prompts, as in every row written before prompt sets existed
            **({"prompts": key.prompts} if key.prompts is not None else {}),
            # a serving load point's coordinates; NULL (left out) for every other series
            **{name: value for name, value in key.point.extra().items()},
            **({"workload": key.workload} if key.workload is not None else {})}
