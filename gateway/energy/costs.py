"""What a request costs, in one place: CO2e and money for its GPU energy, and what the same
tokens would cost on a hosted (cloud) model.

CO2-equivalent and money for an amount of GPU energy (CodeCarbon's arithmetic and defaults).

    CO2e (g) = energy (kWh) x grid carbon intensity (g/kWh) x PUE

The grid intensity and PUE are per backend in the config; the defaults are CodeCarbon's: the
world average of 475 g/kWh (IEA, used by CodeCarbon when nothing else is known) and a PUE of
1.0 (GPU energy only, no facility overhead). Some of CodeCarbon's country figures (Our World
in Data, 2023) are kept here for configs and docs that want a name instead of a number.

Cost is what the backend's owner says a GPU-hour and/or a kWh costs: a request pays for its
share of the backend's GPU time (the share of each interval's energy it was attributed, times
the interval's length, times the GPUs) and for its energy (with PUE, since the facility is
billed). Either price may be absent; with neither, there is no cost.

What the same tokens would cost on a cloud model, from the price map inside litellm (the
policy's cost comparison, ``CloudPrices``).

litellm ships ``model_prices_and_context_window_backup.json`` (per-token USD prices for
thousands of hosted models). The file is located with ``importlib.util.find_spec`` and read
as plain JSON: importing litellm itself takes seconds and sets process-wide environment
variables. Without litellm installed the comparison is simply unavailable. The file is
read once, in a worker thread, the first time a policy asks for a comparison.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

import orjson

from gateway.config import BackendConfig
from gateway.context import EnergyReport

log = logging.getLogger("gateway.policy")  # the cloud comparison is the policy's: its warnings keep its logger

# ------------------------------------------------------------ GPU energy: CO2e and money

WORLD_G_PER_KWH = 475.0  # CodeCarbon's fallback (IEA Global Energy & CO2 Status Report 2019)
COUNTRY_G_PER_KWH = {  # CodeCarbon global_energy_mix.json (Our World in Data, 2023)
    "USA": 369.5,
    "CAN": 170.0,
    "FRA": 56.0,
    "DEU": 381.0,
    "GBR": 237.6,
    "IRL": 290.8,
    "NLD": 267.6,
    "SWE": 40.7,
    "NOR": 30.1,
    "FIN": 79.2,
    "CHE": 34.8,
    "POL": 661.9,
    "CHN": 582.3,
    "IND": 713.4,
    "JPN": 485.4,
    "KOR": 430.6,
    "SGP": 470.8,
    "AUS": 548.7,
    "BRA": 98.3,
}
DEFAULT_PUE = 1.0

J_PER_KWH = 3.6e6


def kwh(joules: float) -> float:
    return joules / J_PER_KWH


def co2e_grams(joules: float, g_per_kwh: float = WORLD_G_PER_KWH, pue: float = DEFAULT_PUE) -> float:
    return kwh(joules) * g_per_kwh * pue


def cost_usd(
    joules: float,
    gpu_seconds: float,
    usd_per_gpu_hour: float | None,
    usd_per_kwh: float | None,
    pue: float = DEFAULT_PUE,
) -> float | None:
    """GPU time at $/GPU-hour plus facility energy at $/kWh; None when no price is configured."""
    if usd_per_gpu_hour is None and usd_per_kwh is None:
        return None
    usd = 0.0
    if usd_per_gpu_hour is not None:
        usd += gpu_seconds / 3600.0 * usd_per_gpu_hour
    if usd_per_kwh is not None:
        usd += kwh(joules) * pue * usd_per_kwh
    return usd


def energy_report(joules: float, source: str, gpu_seconds: float, backend: BackendConfig | None) -> EnergyReport:
    """The report for ``joules`` of GPU energy on ``backend`` (CodeCarbon defaults if unknown)."""
    if backend is None:
        return EnergyReport(joules=joules, source=source, co2e_g=co2e_grams(joules))
    return EnergyReport(
        joules=joules,
        source=source,
        co2e_g=co2e_grams(joules, backend.grid_g_per_kwh, backend.pue),
        usd=cost_usd(joules, gpu_seconds, backend.usd_per_gpu_hour, backend.usd_per_kwh, backend.pue),
    )


# ------------------------------------------------------------ the same tokens on a cloud model

PRICE_FILE = "model_prices_and_context_window_backup.json"


def locate_litellm_prices() -> Path | None:
    """The price map inside an installed litellm, without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / PRICE_FILE
        if path.is_file():
            return path
    return None


class CloudPrices:
    """Per-token (input, output) USD prices by model name."""

    def __init__(self, path: str | Path | None = None):
        self._path = Path(path) if path is not None else None
        self._prices: dict[str, tuple[float, float]] | None = None
        self._loading: asyncio.Future | None = None

    @property
    def loaded(self) -> bool:
        return self._prices is not None

    def load(self) -> None:
        """Read the price map (blocking: call from a thread, or at start-up)."""
        path = self._path or locate_litellm_prices()
        prices: dict[str, tuple[float, float]] = {}
        if path is not None:
            try:
                data = orjson.loads(Path(path).read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("cloud price map %s unreadable: %s", path, exc)
                data = {}
            for name, entry in data.items() if isinstance(data, dict) else ():
                if not isinstance(entry, dict) or name == "sample_spec":
                    continue
                cin, cout = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
                if isinstance(cin, (int, float)) and isinstance(cout, (int, float)):
                    prices[name] = (float(cin), float(cout))
        self._prices = prices

    async def ensure_loaded(self) -> None:
        if self._prices is not None:
            return
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self.load))
        await asyncio.shield(self._loading)

    def price(self, model: str) -> tuple[float, float] | None:
        prices = self._prices or {}
        found = prices.get(model)
        if found is None and "/" in model:  # "openai/gpt-4o" -> "gpt-4o"
            found = prices.get(model.split("/", 1)[1])
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        p = self.price(model)
        return None if p is None else prompt_tokens * p[0] + completion_tokens * p[1]
