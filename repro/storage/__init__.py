"""The hidden-state store: which files clients claimed, which are orphans, when the store fills, reaping.

``census`` scans the store; ``projection`` projects its growth; ``alerts`` turns the census history into
``storage-leak`` / ``storage-exhaustion`` warnings; ``finding`` and ``causes`` explain them; ``reaper`` deletes
orphans (only inside the store).
"""
