"""vad: video anomaly detection with student-teacher feature pyramids."""

__version__ = "0.1.0"
