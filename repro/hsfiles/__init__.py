"""Hidden-state files: what a response names, how a file is read and verified, how it is consumed.

``response``  the path (or store handle) and prompt ids a completion response carries
``hsfile``    read a safetensors hidden-state file of any dtype (bf16, f16, f32, FP8 e4m3 with scales), no torch
``expect``    what the server's connector writes (layout, dtype), checked against the file
``checker``   :class:`~repro.hsfiles.checker.FileChecker`: wait for the file, honour its ``.lock``, verify it
              against the prompt and the connector's layout, then consume it (delete, move or keep)

``repro stress`` checks every request's file with it and ``repro watch``'s probe checks its one file; neither
imports the other for it.
"""
