"""Analysis of trace bundles: stuck frames, blocked/busy/progressing verdicts, stable signatures, ISSUE.md.

Analysis only reads a bundle's files (never the live process), so it works the
same on a bundle taken a minute ago and on one attached to an issue a month ago.
"""
