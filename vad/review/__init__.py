"""The review page of a scored run, and the server where an operator gives verdicts on its events.

- :mod:`vad.review.page`: ``RUN/review.html`` (:func:`write_review`, called by the evaluate stage), rendered from
  ``templates/review.html`` with ``static/review.css`` and ``static/review.js`` inlined: one self-contained file that
  opens from ``file://`` (read-only there).
- :mod:`vad.review.thumbnails`: ``RUN/review/<event>.jpg``, each event's peak frame with its heatmap.
- :mod:`vad.review.server`: ``vad review`` (:func:`serve`, :class:`ReviewServer`): the page on 127.0.0.1, where it
  reads and records verdicts (:mod:`vad.review.verdicts` owns ``RUN/feedback.jsonl``).
"""

from vad.review.page import ScoredRunView, write_review
from vad.review.server import ReviewServer, serve

__all__ = ["ReviewServer", "ScoredRunView", "serve", "write_review"]
