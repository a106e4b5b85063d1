"""Snakemake script for rule `dequantize`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.model.gguf import dequantize_gguf

    dequantize_gguf(snakemake.input.gguf, snakemake.output[0], dtype=snakemake.params.dtype)


run_job(snakemake, main, seed_key=None)
