"""Where trials run: on this machine (the default, ``repro.bisect.trials``) or on a Ray cluster.

``--executor ray`` (an optional extra: ``pip install 'repro[ray]'``) runs each bisect trial
and each stress replica as a Ray actor that asks for its CPUs/GPUs, starts its own vLLM
server on the node it lands on (the same launcher as ``repro serve``) and stops it by process
group. Ray is imported only here, and only when asked for.

``cluster``   connect to a cluster (or start a local one), check resources, one-line errors
``node``      what runs on a node: the actor (``NodeRunner``), simulated trials, packing evidence
``node_job``  the subprocess a node runs for a real trial or replica (``python -m repro.executors.node_job``)
``ray_backend``  the bisect ``Backend`` on Ray (outcomes and heartbeats into the driver's journal)
``fleet``     ``repro stress --executor ray --replicas N``: N soaks, a fleet view, ``summary.json``
"""
