"""No secret leaves the machine: find secrets, mask them while writing, and check every file after writing.

``secretscan``  the detectors (detect-secrets' plugins and repro's own rules) and masking
``prefilter``   a cheap gate that skips text no detector can match
``envpolicy``   the server environment's allow-list: names kept, values withheld unless allowed
``redact``      :class:`~repro.secrets.redact.Redactor`: every text, JSON value and argv on its way into a file
``lastcheck``   the last check: files read back from disk, anything found masked and counted

A bundle's writer (:mod:`repro.bundle.writer`), ``repro scrub`` and the recorded command line use them.
"""
