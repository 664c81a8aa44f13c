"""Where bisect trials and stress replicas run: this machine or a Ray cluster, behind one ``Backend``.

Every backend is a :class:`repro.bisect.driver.Backend` (``run_step``, ``stop_all``, ``close``), chosen by
:func:`repro.executors.factory.backend_for`; the simulator's backend is :class:`repro.bisect.sim.SimBackend`.

``--executor ray`` (an optional extra: ``pip install 'repro[ray]'``) runs each bisect trial
and each stress replica as a Ray actor that asks for its CPUs/GPUs, starts its own vLLM
server on the node it lands on (the same launcher as ``repro serve``) and stops it by process
group. Ray is imported only by the Ray modules, and only when asked for.

``factory``      the one choice of backend: local, Ray, or the simulator
``local``        the local executor: each trial a stress run on a server of its own (the default)
``options``      the ``--executor`` flags shared by ``repro bisect`` and ``repro stress``
``cluster``      connect to a cluster (or start a local one), check resources, one-line errors
``node``         what runs on a node: the actor (``NodeRunner``), simulated trials, packing evidence
``node_job``     the subprocess a node runs for a real trial or replica (``python -m repro.executors.node_job``)
``ray_backend``  the bisect backend on Ray (outcomes and heartbeats into the driver's journal)
``fleet``        ``repro stress --executor ray --replicas N``: N soaks, a fleet view, ``summary.json``
"""
