"""The offline stages of a run folder: training (and its training set), scoring whole clips, evaluation, plots,
rendering, the CLI's pipeline of stages, and ``vad adapt``. Built on :mod:`vad.runtime`; never imported by the live
path or the site (docs/README.md has the picture)."""
