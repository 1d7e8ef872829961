"""A test's measurements as JUnit XML properties (``<property name="llmperf.tokens_per_s[b8]" value=...>``).

pytest writes a test's ``user_properties`` into its ``<testcase>`` in every junit family, but only the
``xunit1`` schema allows them there: run with ``-o junit_family=xunit1`` for a file that validates.
"""

from __future__ import annotations

from pytest_llmperf.results import BenchRecord


def junit_properties(record: BenchRecord) -> list[tuple[str, str]]:
    """Load metrics as ``llmperf.<metric>``, generate metrics (medians) as ``llmperf.<metric>[b<batch>]``,
    serving metrics as ``llmperf.<metric>[<load point>]`` (``[request_rate=4 p32o32]``)."""
    props = [(f"llmperf.{name}", f"{value:.6g}") for name, value in record.load_metric_values().items()]
    for result in record.generates:
        if result.outcome != "ok":
            props.append((f"llmperf.outcome[b{result.batch_size}]", result.outcome))
            continue
        props += [(f"llmperf.{name}[b{result.batch_size}]", f"{value:.6g}")
                  for name, value in result.metric_values().items()]
    for serving in record.servings:
        props += [(f"llmperf.{name}[{serving.config.label}]", f"{value:.6g}")
                  for name, value in serving.metric_values().items()]
    props += [("llmperf.backend", record.backend), ("llmperf.world_size", str(record.world_size)),
              ("llmperf.model", record.model.model_id), ("llmperf.dtype", record.model.dtype)]
    return props
