"""`repro bisect`: shrink a rare, stochastic hang to the smallest configuration that still hangs.

``space``    the search space (concurrency range, changes towards a plain server) and configurations
``stats``    Gamma-Poisson rate posteriors and bounds; ``hazard``: memoryless or aging hazard models
``search``   the deterministic search (baseline, ddmin over changes, Bayesian bisection over concurrency)
``journal``  the fsync'ed journal every fact goes to; ``driver``: run, resume (replay), undo
``trials``   what one real trial is (its scenario, slot environment, exposure so far)
``sim``      the simulator (a hazard model and its backend); ``output``: minimal.json, repro_min.sh/py
``minload``  the stand-alone load script repro_min.py embeds

Trials run on a :class:`~repro.bisect.driver.Backend` from :mod:`repro.executors`.
"""
