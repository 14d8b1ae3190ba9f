"""Patient data in text: the factories' patient values, and anything shaped like the phone and
ABHA numbers the fake HealthDock generates. The suite-wide log check (``tests/conftest.py``)
runs every log record and everything a test prints through :func:`patient_data_in`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import traceback
from collections.abc import Iterator

from config.logs import QUIET_LOGGERS
from tests.factories import PATIENT_ABHA, PATIENT_DOB, PATIENT_NAME, PATIENT_PHONE

PATIENT_VALUES = (*PATIENT_NAME, PATIENT_PHONE, PATIENT_DOB, PATIENT_ABHA)
_SHAPES = (
    # The fake's phones are +91 and ten digits starting 6-9 (India's mobile numbers); also
    # caught without the plus or URL-encoded, or with a space or hyphen after the 91.
    (
        "an Indian mobile number",
        re.compile(r"(?<![\w+])(?:\+|%2[Bb])?91[ -]?[6-9]\d{9}(?!\d)"),
    ),
    # ABHA numbers: 14 digits, plain or grouped as ABDM prints them (12-3456-7890-1234).
    # Not inside a longer run of letters and digits (a hex digest, a token).
    ("an ABHA number", re.compile(r"(?<![\w-])(?:\d{14}|\d{2}-\d{4}-\d{4}-\d{4})(?![\w-])")),
)
# What every LogRecord has; anything else was passed as ``extra`` and a JSON formatter prints it.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def patient_data_in(text: str) -> list[str]:
    """What in ``text`` is patient data (empty when nothing is), each as the value found and
    what it looks like."""
    found = [f"{value!r} (a test patient's value)" for value in PATIENT_VALUES if value in text]
    for shape, pattern in _SHAPES:
        found += [f"{match!r} ({shape})" for match in pattern.findall(text)]
    return found


def record_text(record: logging.LogRecord) -> str:
    """Everything a log handler could write for ``record``: the message, the traceback and
    stack, and the extras."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a malformed record is still searched
        parts = [str(record.msg), repr(record.args)]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(record.exc_info[1])))
    parts += [text for text in (record.exc_text, record.stack_info) if text]
    parts += [repr(v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES]
    return "\n".join(parts)


class PatientDataCatcher(logging.Handler):
    """A handler that keeps a note of every record carrying patient data."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = patient_data_in(record_text(record))
        if found:
            self.found.append(f"{record.levelname} {record.name}: {', '.join(found)}")


@contextlib.contextmanager
def catching_patient_data() -> Iterator[PatientDataCatcher]:
    """Every record at every level, from every logger, goes through a catcher meanwhile, as a
    service logging at DEBUG would write them: every logger is at DEBUG (even one a library
    or an earlier test set higher), but those the logging setup holds quieter
    (``config.logs.QUIET_LOGGERS``), which are at the level it gives them, and their children.
    Loggers that do not propagate get the catcher too."""
    catcher = PatientDataCatcher()
    root = logging.getLogger()
    for name in QUIET_LOGGERS:
        logging.getLogger(name)  # may be a placeholder still: its children would not inherit
    loggers = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    isolated = [logger for logger in loggers if not logger.propagate]
    levels = {logger: logger.level for logger in [root, *loggers]}
    for logger in loggers:
        quiet = QUIET_LOGGERS.get(logger.name)
        if quiet is not None:
            logger.level = quiet
        elif not _under_a_quiet_logger(logger.name):
            logger.level = logging.DEBUG
    root.setLevel(logging.DEBUG)  # after the others: it clears every logger's level cache
    for logger in [root, *isolated]:
        logger.addHandler(catcher)
    try:
        yield catcher
    finally:
        for logger in [root, *isolated]:
            logger.removeHandler(catcher)
        for logger, level in levels.items():
            logger.level = level
        root.setLevel(levels[root])


def _under_a_quiet_logger(name: str) -> bool:
    return any(name.startswith(f"{quiet}.") for quiet in QUIET_LOGGERS)
