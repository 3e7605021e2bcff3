"""The `llmbatch` group and its entry point: logging, SIGTERM, and every error as one line with its exit code."""

from __future__ import annotations

import logging
import signal
import sys

import click

from .. import __version__
from ..errors import LLMBatchError
from .common import EXIT_INPUT, EXIT_INTERRUPTED, err

_debug = False  # --debug: let errors show their traceback


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmbatch")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (normally one line).")
def main(verbose: int, debug: bool) -> None:
    """Bulk LLM jobs on the cheapest good-enough model, under a hard budget, with a cost ledger."""
    global _debug
    _debug = debug
    # SIGTERM before (or after) a run's own handlers: like Ctrl-C, one line and exit 130, not a silent kill.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if verbose < 2:  # one line per HTTP call only at -vv; the ledger records every call anyway
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _store_error_class():
    """SQLAlchemyError if SQLAlchemy is loaded (an error can only be one if it is): no import on the error path."""
    exc = sys.modules.get("sqlalchemy.exc")
    return exc.SQLAlchemyError if exc is not None else None


def _one_line(e: BaseException) -> str:
    """An error as one line: LLMBatch errors say what to do; store and OS errors are named for what they are."""
    if isinstance(e, LLMBatchError):
        return " ".join(str(e).split())
    store_error = _store_error_class()
    if store_error is not None and isinstance(e, store_error):
        from ..store.db import classify_store_error

        known = classify_store_error(e)
        if known is not None:
            return str(known)
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        return f"store error: {first[:300]}"
    if isinstance(e, OSError):
        return f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}"
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"broker error ({type(e).__name__}): {first}; check LLMBATCH_BROKER_URL and that the broker runs"


def entrypoint() -> None:
    try:
        rv = main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see {e.ctx.command_path} --help)"
        err(" ".join(e.format_message().split()) + hint)
        sys.exit(EXIT_INPUT if isinstance(e, click.UsageError) else e.exit_code)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        store_error = _store_error_class()
        is_store_error = store_error is not None and isinstance(e, store_error)
        broker = type(e).__module__.split(".")[0] in ("kombu", "redis", "celery", "amqp")
        if _debug or not (isinstance(e, (LLMBatchError, OSError)) or is_store_error or broker):
            raise
        err(_one_line(e))
        sys.exit(EXIT_INPUT)
    sys.exit(rv if isinstance(rv, int) else 0)
