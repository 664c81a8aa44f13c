"""Benchmarks of the kit (run as scripts, see BENCHMARKS.md); a package so that tests import what they share
(`from benchmarks import fast_endpoint`) without touching sys.path."""
