"""The test suite: a package, so that tests import their helpers (tests.helpers) by name."""
