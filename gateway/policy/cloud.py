"""What the same tokens would cost on a cloud model, from the price map inside litellm.

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

log = logging.getLogger("gateway.policy")

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
