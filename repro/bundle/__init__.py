"""The bundle format: what capture writes and analyze, issue, known and report read.

``manifest``  the manifest's name, format version and file digests
``writer``    :class:`~repro.bundle.writer.BundleWriter`: every file redacted on the way in, the last secret
              check on the way out, the size budget, then ``<name>.tar.gz`` beside the directory
``reader``    open a bundle given as a directory or a tarball (:func:`~repro.bundle.reader.open_bundle`),
              with one clear error when it is not one

Capture imports this package to write a bundle and analyze imports it to read one; neither imports the other
for the format.
"""
