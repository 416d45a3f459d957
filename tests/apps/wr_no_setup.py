"""An application module that forgot application_setup (for wallaroo-run error tests)."""
import wallaroo  # noqa: F401

VALUE = 1
