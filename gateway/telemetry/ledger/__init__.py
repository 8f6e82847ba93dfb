"""The usage ledger: one row per request, in SQLite (one process) or PostgreSQL (every replica)."""

from gateway.telemetry.ledger.rows import COLUMNS, GROUPS, parse_when, row_from_context
from gateway.telemetry.ledger.service import Ledger, LedgerUnavailable, Store, open_store

__all__ = ["COLUMNS", "GROUPS", "Ledger", "LedgerUnavailable", "Store", "open_store", "parse_when", "row_from_context"]
