"""Running a trained model: its checkpoint, its normal reference, the scorer (torch or an exported copy, each
stream's kept past, clip batches), the exports and their int8/bf16 copies, and post-processing of the scores.

Imports from the layers below only (``vad.io``, ``vad.models`` and the top-level helpers); the offline stages, the
live path, the review page and the site build on it (docs/README.md has the picture)."""
