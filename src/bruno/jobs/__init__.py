"""One module per pipeline stage: the function a Snakemake script calls, with explicit arguments.

Scripts under scripts/ stay thin (read the `snakemake` object, call `run`); everything testable lives here.
"""
