"""Prometheus metrics: request counts by status, token counts, latency histograms, engine gauges.

Each app has its own registry (several apps may live in one process, as in the tests). Engine numbers
(running, waiting, KV usage, ...) are read from the engine thread's last stats snapshot at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


# (family, name, help, key in the engine's stats snapshot)
ENGINE_METRICS = (
    (GaugeMetricFamily, "medvllm_requests_running", "Requests in the running batch", "num_running"),
    (GaugeMetricFamily, "medvllm_requests_waiting", "Requests waiting for the running batch", "num_waiting"),
    (
        GaugeMetricFamily,
        "medvllm_kv_cache_usage_ratio",
        "Fraction of KV-cache blocks held by requests",
        "kv_cache_usage",
    ),
    (CounterMetricFamily, "medvllm_preemptions", "Requests preempted for lack of KV blocks", "num_preemptions"),
    (
        CounterMetricFamily,
        "medvllm_prefix_cache_hit_tokens",
        "Prompt tokens served from the prefix cache",
        "prefix_cache_hit_tokens",
    ),
    (
        CounterMetricFamily,
        "medvllm_prefix_cache_query_tokens",
        "Prompt tokens looked up in the prefix cache",
        "prefix_cache_query_tokens",
    ),
)

# The same numbers under the names the Gateway API Inference Extension's model-server protocol reads by
# default (vLLM's), so its endpoint picker and other routers balance on us unchanged (docs/SERVER.md)
ROUTER_METRICS = (
    (GaugeMetricFamily, "vllm:num_requests_waiting", "Requests waiting (queue length)", "num_waiting"),
    (GaugeMetricFamily, "vllm:num_requests_running", "Requests in the running batch", "num_running"),
    (GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage as a fraction (1 = full)", "kv_cache_usage"),
    (GaugeMetricFamily, "vllm:gpu_cache_usage_perc", "KV-cache usage as a fraction (older name)", "kv_cache_usage"),
    (CounterMetricFamily, "vllm:prefix_cache_queries", "Prompt tokens looked up", "prefix_cache_query_tokens"),
    (
        CounterMetricFamily,
        "vllm:prefix_cache_hits",
        "Prompt tokens found in the prefix cache",
        "prefix_cache_hit_tokens",
    ),
)


def prefix_hit_rate(stats: dict) -> float:
    queried = stats["prefix_cache_query_tokens"]
    return stats["prefix_cache_hit_tokens"] / queried if queried else 0.0


class EngineCollector:
    """Reads the engine snapshot when Prometheus scrapes; nothing when the engine is not loaded yet."""

    def __init__(self, stats: Callable[[], dict | None]):
        self._stats = stats

    def collect(self):
        s = self._stats()
        if s is None:
            return
        for family, name, doc, key in ENGINE_METRICS + ROUTER_METRICS:
            yield family(name, doc, s[key])
        yield GaugeMetricFamily(
            "medvllm_prefix_cache_hit_rate",
            "Share of looked-up prompt tokens found in the prefix cache",
            prefix_hit_rate(s),
        )


class ServerMetrics:
    def __init__(self, engine_stats: Callable[[], dict | None]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "medvllm_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("medvllm_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.generation_tokens = Counter("medvllm_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "medvllm_time_to_first_token_seconds", "Arrival to first generated token", buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "medvllm_inter_token_latency_seconds",
            "Time between two tokens of a request",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "medvllm_request_latency_seconds", "Arrival to last token", buckets=E2E_BUCKETS, registry=r
        )
        r.register(EngineCollector(engine_stats))

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
