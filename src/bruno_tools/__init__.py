"""Tooling outside the pipeline's runtime package: the trial benchmark (`bench`, `bench_sizes`, `bench_table`,
`python -m bruno_tools.bench`), its roofline bounds (`roofline`) and the headless-browser check of a report
(`browser`, used by the browser test and for the README screenshot)."""
