"""Checkpoint kinds: what each kind is, how it trains (its method) and how it applies to a base, and their registry."""
