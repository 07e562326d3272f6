"""Celery's logging helpers: ``get_task_logger`` and ``get_logger`` (``celery.utils.log``).

Nearly every Celery tasks module starts with ``logger = get_task_logger(__name__)``, so the port
of that line must be the import alone: ``from taskq.log import get_task_logger``.

Celery's worker formats task records with ``worker_task_log_format``, which names
``%(task_name)s`` and ``%(task_id)s``. A task logger here puts both attributes on every record
(``???`` outside a task, as Celery does), so any format that names them works, including one set
up by a ``setup_logging`` receiver; taskq's own worker prints its single default format.
"""

from __future__ import annotations

import logging

from taskq import _state

__all__ = ["TASK_LOGGER_NAME", "TaskContextFilter", "get_logger", "get_task_logger"]

#: the parent of every task logger, as ``celery.task`` is in Celery
TASK_LOGGER_NAME = "taskq.task"
_RESERVED = frozenset({"taskq", TASK_LOGGER_NAME})


class TaskContextFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` of the running task to each record (``???`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _state.current_task()
        request = _state.current_request()
        if task is not None and request is not None:
            record.task_id = request.id
            record.task_name = task.name
        else:
            record.__dict__.setdefault("task_id", "???")
            record.__dict__.setdefault("task_name", "???")
        return True


_FILTER = TaskContextFilter()


def get_logger(name: str) -> logging.Logger:
    """A plain logger: taskq's worker configures the root logger, so every logger reaches it."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """The logger for a tasks module; its records carry the running task's name and id.

    As in Celery, it propagates through the task logger (``taskq.task``), so one level set there
    applies to every tasks module, and the reserved names are refused.
    """
    if name in _RESERVED:
        raise RuntimeError(f"Logger name {name!r} is reserved!")
    logger = logging.getLogger(name)
    logger.parent = logging.getLogger(TASK_LOGGER_NAME)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
