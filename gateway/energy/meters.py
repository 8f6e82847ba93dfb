"""Energy meters: how much energy a backend's GPUs used, read from the sampler's thread.

Every meter answers ``read(now, counters)`` with a ``Reading``: the energy the backend's GPUs
used since the meter opened (joules, never decreasing, summed over its GPUs), the power now,
and whether the energy moved since the last reading. Counter wrap, driver reloads and
exporter restarts are handled inside the meter, so the sampler only ever subtracts two
readings. A meter that cannot work says so (``available = False`` and ``reason``); the sampler
then falls back to the estimate, labelled ``estimated``.

* ``NvmlMeter``: the gateway runs on the GPU node. Instant power (NVML field 186, ~4 us; else
  ``nvmlDeviceGetPowerUsage``) is read every tick and integrated for a fine timeline; the
  energy counter (``nvmlDeviceGetTotalEnergyConsumption``, ~4 ms per call on an H200, moves
  every ~100 ms) is read about once a second and replaces the integral since its previous
  read, so the total follows the counter and the power only fills in between.
* ``DcgmMeter``: a dcgm-exporter page (or the simulator's ``/dcgm/metrics``), GPUs chosen by
  label. Exporters publish the counter coarsely; ``fresh`` tells the sampler to wait for it.
* ``EstimateMeter``: no meter. Energy from the tokens the backend reports, priced by
  ``coefficients.TokenCosts`` at the backend's current batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import BackendConfig, DcgmMeterConfig, NvmlMeterConfig
from gateway.energy.coefficients import DEFAULT_CONTEXT, TokenCosts
from gateway.energy.scrape import HttpGetter, VllmCounters, counter_delta, parse_dcgm

log = logging.getLogger("gateway.energy")

MAX_WATTS_PER_GPU = 1500.0  # above any GPU's power limit (B200 1000 W): larger jumps are glitches
COUNTER_WRAP = 2**64  # NVML's counter is an unsigned 64-bit count of mJ


@dataclass(slots=True)
class Reading:
    t: float  # monotonic time of the reading
    joules: float  # cumulative since the meter opened, all GPUs, monotone
    watts: float | None  # power now, all GPUs (None when unknown)
    fresh: bool = True  # the energy moved since the previous reading
    at: float | None = None  # the moment ``joules`` is the energy up to (None: ``t``); a coarse counter lags


class EnergyCounter:
    """A GPU's energy counter (mJ since the driver loaded) as joules accumulated since we started.

    A counter that goes back either wrapped (it was near 2**64) or restarted from zero (driver
    reload, exporter or node restart): then the new value is the energy since the restart, if
    that is plausible, else the caller's fallback (power x time). A jump larger than any GPU
    could draw is a glitch and is replaced by the fallback too, so nothing is double counted.
    A counter that moves in steps read more often than it moves: a step is the energy since
    its previous step, which may be as old as the read before the one that first saw it.
    """

    __slots__ = ("raw", "t", "joules", "resets", "moved_t", "before_t")

    def __init__(self) -> None:
        self.raw: float | None = None
        self.t = 0.0  # the latest read
        self.joules = 0.0
        self.resets = 0
        self.moved_t = 0.0  # the read that first saw the current value
        self.before_t = 0.0  # the read before it: the current value was reached after it

    def update(self, raw_mj: float, t: float, fallback_j: float | None = None) -> float:
        """Take a new raw value; returns the joules added."""
        if self.raw is None:
            self.raw, self.t, self.moved_t, self.before_t = raw_mj, t, t, t - 1.0
            return 0.0
        step = raw_mj - self.raw
        if step == 0:
            self.t = t
            return 0.0
        delta: float | None = step
        if step < 0:
            if self.raw > COUNTER_WRAP * 0.9 and raw_mj < COUNTER_WRAP * 0.1:
                delta = raw_mj + COUNTER_WRAP - self.raw
            else:  # restarted since the latest read
                self.resets += 1
                delta = raw_mj if raw_mj <= _plausible_mj(t - self.t) else None
        elif step > _plausible_mj(t - self.before_t):
            delta = None
        if delta is None:
            added = max(0.0, fallback_j or 0.0)
        else:
            added = delta / 1000.0
        self.raw, self.before_t, self.moved_t, self.t = raw_mj, self.t, t, t
        self.joules += added
        return added


def _plausible_mj(seconds: float) -> float:
    return MAX_WATTS_PER_GPU * max(seconds, 0.0) * 1000.0 + 1000.0


class Meter:
    kind = "meter"
    measured = True
    polls = 1  # reads per sampling interval: more for a counter that moves in coarse steps (see DcgmMeter)

    def __init__(self) -> None:
        self.available = True
        self.reason: str | None = None

    def open(self) -> None:
        """Prepare (may block: called from the sampler thread)."""

    def read(self, now: float, counters: VllmCounters | None) -> Reading | None:
        """The reading at ``now``; None if it failed this time (the sampler will try again)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        if self.available:
            log.warning("%s meter unavailable: %s; falling back to estimates", self.kind, reason)
        self.available = False
        self.reason = reason


# ---------------------------------------------------------------- NVML


_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _field_value(value: Any) -> float:
    """The number in an ``nvmlFieldValue_t``, whatever its type."""
    return float(getattr(value.value, _VALUE_FIELDS.get(value.valueType, "uiVal")))


class _Gpu:
    __slots__ = ("index", "handle", "name", "power_mode", "counter", "base_j", "since_j", "watts", "failures")

    def __init__(self, index: int, handle: Any, name: str) -> None:
        self.index = index
        self.handle = handle
        self.name = name
        self.power_mode: str | None = "field"  # "field" (186, instant) | "usage" | None
        self.counter = EnergyCounter()
        self.base_j = 0.0  # energy up to the last counter read
        self.since_j = 0.0  # power integrated since the last counter read
        self.watts: float | None = None
        self.failures = 0


class NvmlMeter(Meter):
    kind = "nvml"
    MAX_FAILURES = 30  # consecutive failed reads (~3 s at 100 ms) before giving up

    def __init__(self, gpus: list[int], counter_every_s: float = 1.0, nvml: Any = None) -> None:
        super().__init__()
        self.indices = list(gpus)
        self.counter_every_s = counter_every_s
        self._nvml = nvml  # a module with pynvml's API; tests inject a fake
        self._gpus: list[_Gpu] = []
        self._t: float | None = None
        self._counter_t = 0.0
        self._reported = 0.0
        self._failures = 0
        self._initialised = False

    @property
    def gpu_names(self) -> list[str]:
        return [g.name for g in self._gpus]

    def open(self) -> None:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml  # nvidia-ml-py; optional at import time
            except ImportError:
                self.fail("nvidia-ml-py (pynvml) is not installed")
                return
            nvml = self._nvml = pynvml
        try:
            nvml.nvmlInit()
            self._initialised = True
            count = nvml.nvmlDeviceGetCount()
            for index in self.indices:
                if not 0 <= index < count:
                    self.fail(f"GPU {index} not found (this node has {count})")
                    return
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                self._gpus.append(_Gpu(index, handle, name.decode() if isinstance(name, bytes) else str(name)))
        except nvml.NVMLError as exc:
            self.fail(f"NVML: {exc}")
            return
        if not self._gpus:
            self.fail("no GPU configured")

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass

    def _power(self, gpu: _Gpu) -> float | None:
        nvml = self._nvml
        if gpu.power_mode == "field":
            try:
                value = nvml.nvmlDeviceGetFieldValues(gpu.handle, [nvml.NVML_FI_DEV_POWER_INSTANT])[0]
                if value.nvmlReturn == 0:
                    return _field_value(value) / 1000.0
                gpu.power_mode = "usage"  # the driver has no instant power field: use the average
            except nvml.NVMLError_NotSupported:
                gpu.power_mode = "usage"
            except nvml.NVMLError_FunctionNotFound:
                gpu.power_mode = "usage"
        if gpu.power_mode == "usage":
            try:
                return nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
                gpu.power_mode = None  # counter only, read every tick
        return None

    def read(self, now: float, counters: VllmCounters | None = None) -> Reading | None:
        if not self.available:
            return None
        nvml = self._nvml
        dt = 0.0 if self._t is None else max(0.0, now - self._t)
        read_counter = self._t is None or now - self._counter_t >= self.counter_every_s
        ok = 0
        watts = []
        for gpu in self._gpus:
            try:
                w = self._power(gpu)
            except nvml.NVMLError as exc:  # GPU lost, driver busy, ...: keep the last power a while
                gpu.failures += 1
                log.debug("NVML power read of GPU %d failed: %s", gpu.index, exc)
                w = None
            else:
                if w is not None:
                    ok += 1
                    gpu.failures = 0
            if gpu.power_mode is None:
                read_counter = True
            previous = gpu.watts
            if w is not None:
                gpu.since_j += (w + (previous if previous is not None else w)) / 2.0 * dt
                gpu.watts = w
                watts.append(w)
            elif previous is not None and gpu.failures < 5:
                gpu.since_j += previous * dt
        if read_counter:
            self._counter_t = now
            for gpu in self._gpus:
                try:
                    raw = nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)
                except nvml.NVMLError as exc:
                    log.debug("NVML energy read of GPU %d failed: %s", gpu.index, exc)
                    continue  # keep integrating power until the next counter read
                ok += 1
                gpu.base_j += gpu.counter.update(float(raw), now, fallback_j=gpu.since_j)
                gpu.since_j = 0.0
        self._t = now
        if ok == 0:
            self._failures += 1
            if self._failures >= self.MAX_FAILURES:
                self.fail(f"no NVML reading for {self._failures} ticks")
            return None
        self._failures = 0
        total = sum(g.base_j + g.since_j for g in self._gpus)
        # The power integral may run ahead of the next counter read; never go back.
        self._reported = max(self._reported, total)
        return Reading(now, self._reported, sum(watts) if watts else None, True)


# ---------------------------------------------------------------- DCGM


class DcgmMeter(Meter):
    """The energy counter of a dcgm-exporter page.

    The counter moves in steps (the GPU updates it every ~100 ms, an exporter re-reads it every
    collection period), so a value read now is the energy up to some moment since the previous
    read that saw an older value. Read ``polls`` times per sampling interval, that moment is
    known to a fraction of the interval: ``Reading.at`` is the middle of the span between the
    last read that saw the old value and the first that saw the new one. Without it, an
    interval's energy would be that of up to one counter period before its tokens, which is
    most of a short request.
    """

    kind = "dcgm"
    polls = 4

    def __init__(self, url: str, select: dict[str, list[str]] | None = None, timeout: float = 2.0) -> None:
        super().__init__()
        self.url = url
        self.select = select or {}
        self._http = HttpGetter(url, timeout=timeout)
        self._gpus: dict[str, EnergyCounter] = {}
        self._watts: dict[str, float] = {}
        self._joules = 0.0
        self._t: float | None = None
        self._at: float | None = None  # when the current value was (likely) reached
        self.error: str | None = None

    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    def close(self) -> None:
        self._http.close()

    def read(self, now: float, counters: VllmCounters | None = None) -> Reading | None:
        text = self._http.get()
        if text is None:
            self.error = self._http.error
            return None
        gpus = parse_dcgm(text, self.select)
        if not gpus:
            self.error = f"no GPU on {self.url} matches {self.select or 'anything'}"
            return None
        self.error = None
        fresh = self._t is None
        for key, (mj, watts) in gpus.items():
            counter = self._gpus.get(key)
            if counter is None:  # a GPU we have not seen: its energy so far is not ours
                counter = self._gpus[key] = EnergyCounter()
            previous = counter.raw
            dt = 0.0 if previous is None else max(0.0, now - counter.moved_t)  # since its previous step
            fallback = (watts if watts is not None else self._watts.get(key, 0.0)) * dt
            self._joules += counter.update(mj, now, fallback_j=fallback)
            if previous is not None and mj != previous:
                fresh = True
            if watts is not None:
                self._watts[key] = watts
        if self._t is None or self._at is None:
            self._at = now
        elif fresh:
            self._at = (self._t + now) / 2.0  # the counter moved somewhere since the previous read
        self._t = now
        watts = sum(self._watts[k] for k in gpus if k in self._watts) if self._watts else None
        return Reading(now, self._joules, watts, fresh, self._at)


# ---------------------------------------------------------------- estimate


class EstimateMeter(Meter):
    """Energy from the backend's token counters and the token-cost model (labelled estimated).

    With nothing running it is the GPUs' idle power; otherwise each prompt and generated token
    is priced at the batch the backend reports. ``costs`` is asked each time, so a model whose
    size becomes known later is priced right from then on.
    """

    kind = "estimate"
    measured = False

    def __init__(self, costs: Callable[[], TokenCosts], context: Callable[[], float] | None = None) -> None:
        super().__init__()
        self._costs = costs
        self._context = context or (lambda: DEFAULT_CONTEXT)
        self._last: VllmCounters | None = None
        self._t: float | None = None
        self._joules = 0.0
        self.watts: float | None = None

    def read(self, now: float, counters: VllmCounters | None) -> Reading | None:
        if counters is None:
            return None
        last, self._last = self._last, counters
        t0, self._t = self._t, now
        if last is None or t0 is None:
            return Reading(now, self._joules, None, True)
        costs = self._costs()
        d_prompt = counter_delta(last.prompt_tokens, counters.prompt_tokens)
        d_gen = counter_delta(last.generation_tokens, counters.generation_tokens)
        running = max(last.running, counters.running)
        dt = max(0.0, now - t0)
        if d_prompt or d_gen or running:
            batch = max(1.0, (last.running + counters.running) / 2.0)
            joules = costs.prefill(d_prompt) + costs.decode(batch, self._context()) * d_gen
        else:
            joules = costs.idle_w * dt
        self._joules += joules
        self.watts = joules / dt if dt > 0 else None
        return Reading(now, self._joules, self.watts, True)


def make_meter(backend: BackendConfig, costs: Callable[[], TokenCosts]) -> Meter:
    """The meter a backend's config asks for."""
    meter = backend.meter
    if isinstance(meter, NvmlMeterConfig):
        return NvmlMeter(meter.gpus)
    if isinstance(meter, DcgmMeterConfig):
        return DcgmMeter(meter.url, meter.select)
    return EstimateMeter(costs)
