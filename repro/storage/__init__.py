"""Hidden-state storage accounting: which files clients claimed, which are orphans, when the store fills."""
