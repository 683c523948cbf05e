"""Virtual API keys, budgets and rate limits (see docs/keys-and-budgets.md)."""
