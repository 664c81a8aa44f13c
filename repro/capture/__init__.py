"""Capture: the evidence of a stall, taken at the moment it is detected, packed into a bundle."""
