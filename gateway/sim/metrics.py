"""The engine's ``vllm:*`` Prometheus metrics, with vLLM's names, labels and buckets.

The engine updates plain integers and bucket arrays step by step (cheap on the hot path: one
histogram update per step covers every sequence that decoded in it); a scrape turns them into
metric families and lets ``prometheus_client`` write the text format, so the exposition matches
what vLLM's own ``prometheus_client`` registry produces. Names and buckets follow
``vllm/v1/metrics/loggers.py``; labels are ``model_name`` and ``engine`` (plus ``finished_reason``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# fmt: off
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
# fmt: on
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]
PREEMPTION_BUCKETS = [0, 1, 2, 3, 4, 5, 10, 20]
FINISH_REASONS = ("stop", "length", "abort")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … up to ``max_value`` (vLLM's token-count buckets)."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Record ``n`` observations of ``value`` (a bucket's upper bound is inclusive, as Prometheus')."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def family_buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, c in zip(self.bounds, self.counts):
            running += c
            out.append((floatToGoString(bound), running))
        out.append(("+Inf", self.count))
        return out


class EngineMetrics:
    """Counters and histograms one engine core keeps (vLLM's ``PrometheusStatLogger`` state).

    Per-request observations (TTFT, and the latencies and lengths of finished requests) are
    queued and folded into the histograms in bulk, before every scrape: exact at any scrape,
    cheaper per request than observing one histogram at a time.
    """

    def __init__(self, max_model_len: int) -> None:
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.prefix_cache_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0  # none: the simulator does not model prefix caching
        self.request_success = dict.fromkeys(FINISH_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQUEST_LATENCY_BUCKETS)
        self.queue_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.prefill_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.decode_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.inference_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_prompt_tokens = Histogram(token_buckets)
        self.request_generation_tokens = Histogram(token_buckets)
        self.request_max_tokens = Histogram(token_buckets)
        self.iteration_tokens = Histogram(ITERATION_TOKEN_BUCKETS)
        self.request_params_n = Histogram(N_BUCKETS)
        self.request_preemptions = Histogram(PREEMPTION_BUCKETS)
        self.pending_ttft: list[float] = []
        # (arrival, scheduled, first token, end, prompt tokens, generated tokens, max_tokens param, preemptions)
        self.pending_finished: list[tuple] = []

    def fold(self) -> None:
        ttft, self.pending_ttft = self.pending_ttft, []
        for value in ttft:
            self.ttft.observe(value)
        finished, self.pending_finished = self.pending_finished, []
        for arrival, scheduled, first, end, prompt, generated, max_tokens, preemptions in finished:
            if scheduled is None:
                scheduled = end
            if first is None:
                first = end
            self.e2e.observe(end - arrival)
            self.queue_time.observe(scheduled - arrival)
            self.inference_time.observe(end - scheduled)
            self.prefill_time.observe(first - scheduled)
            self.decode_time.observe(end - first)
            self.request_prompt_tokens.observe(prompt)
            self.request_generation_tokens.observe(generated)
            if max_tokens:
                self.request_max_tokens.observe(max_tokens)
            self.request_preemptions.observe(preemptions)


class MetricsExporter:
    """Renders ``/metrics``: the engine's metrics plus the process/platform/GC collectors vLLM shows."""

    def __init__(
        self, engine, model_name: str, version, cache_info: dict[str, str] | None = None, show_hidden: str | None = None
    ) -> None:
        self._engine = engine
        self._labels = [model_name, "0"]
        self._version = version
        self._cache_info = cache_info or {}
        self._hidden = version.shows_hidden_metrics(show_hidden)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self):
        engine, labels, names = self._engine, self._labels, ["model_name", "engine"]
        m: EngineMetrics = engine.metrics
        m.fold()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(labels, value)
            return c

        def histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
            f = HistogramMetricFamily(name, doc, labels=names)
            f.add_metric(labels, h.family_buckets(), h.sum)
            return f

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", engine.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", engine.num_waiting)
        if self._version.has_waiting_by_reason_metric:
            by_reason = GaugeMetricFamily(
                "vllm:num_requests_waiting_by_reason",
                "Number of requests waiting to be processed, by reason.",
                labels=[*names, "reason"],
            )
            by_reason.add_metric([*labels, "capacity"], engine.num_waiting)
            by_reason.add_metric([*labels, "deferred"], 0)
            yield by_reason
        usage = engine.kv_cache_usage
        if self._version.has_gpu_cache_usage_metric or self._hidden:
            yield gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
                usage,
            )
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            m.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", m.prefix_cache_hits
        )
        if self._cache_info:
            doc = "Information of the LLMEngine CacheConfig"
            info = GaugeMetricFamily("vllm:cache_config_info", doc, labels=[*self._cache_info, "engine"])
            info.add_metric([*self._cache_info.values(), "0"], 1.0)
            yield info
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", m.preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", m.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", m.generation_tokens)
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.", labels=[*names, "finished_reason"]
        )
        for reason, value in m.request_success.items():
            success.add_metric([*labels, reason], value)
        yield success
        yield histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", m.request_prompt_tokens)
        yield histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", m.request_generation_tokens
        )
        yield histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", m.iteration_tokens
        )
        yield histogram("vllm:request_params_n", "Histogram of the n request parameter.", m.request_params_n)
        yield histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", m.request_max_tokens
        )
        yield histogram(
            "vllm:request_num_preemptions", "Number of preemptions per finished request.", m.request_preemptions
        )
        yield histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", m.ttft)
        if self._version.has_inter_token_latency_metric:
            yield histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", m.itl)
        if self._version.has_time_per_output_token_metric or self._hidden:
            yield histogram(
                "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", m.itl
            )
        yield histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", m.e2e)
        yield histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", m.queue_time
        )
        yield histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            m.inference_time,
        )
        yield histogram(
            "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", m.prefill_time
        )
        yield histogram(
            "vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", m.decode_time
        )
