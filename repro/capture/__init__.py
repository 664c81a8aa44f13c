"""Capture: the evidence of a stall, taken at the moment it is detected, written as a bundle.

``request`` is the contract with the callers (stress, watch, ``repro capture``); ``run`` orchestrates the
collectors (``pyspy``, ``procfs``, ``context``, ``gpu``, ``docker``, ``clients``), writes the bundle through
:mod:`repro.bundle` and has :mod:`repro.analyze` summarise it.
"""
