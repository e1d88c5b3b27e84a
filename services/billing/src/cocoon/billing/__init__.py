"""Billing service: prices, holds, the double-entry ledger, TON deposits and payouts."""
