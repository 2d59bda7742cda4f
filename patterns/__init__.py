"""The pattern library: pruning pattern families, masks, exact MAC/param accounting and realization."""
