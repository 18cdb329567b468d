"""The service's log lines: one record, one line, whatever a client sent (issue 15, log injection).

Every value a client supplies can reach a log line (HELO names, addresses, AUTH, IMAP and POP3 user names,
IMAP tags, command text), so the escaping is done once, here, rather than at each call. A message that is
printable and short needs nothing (one isprintable() on the formatted line: about 0.5 us a record in all);
otherwise every string argument is escaped and bounded (message.printable), then the whole message (text put
in by an f-string or an exception's str()). The control characters in each line of a traceback are escaped
too.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.message.printable import LIMIT, printable

MESSAGE_LIMIT = 8 * LIMIT  # a whole message: several values and the words around them


class EscapingFormatter(logging.Formatter):
    """A logging.Formatter whose output holds no control character from the record's arguments or message."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging.Formatter's name
        message = record.message  # set by format(): the message with its arguments
        if len(message) > LIMIT or not message.isprintable():  # else no argument can be too long or unsafe
            args = record.args
            if args:
                record.args = _escaped(args)
                try:
                    message = record.getMessage()
                finally:
                    record.args = args  # the record stays as logged, for any other handler
            record.message = printable(message, MESSAGE_LIMIT)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging.Formatter's name
        return "\n".join(printable(line, None) for line in super().formatException(ei).split("\n"))


def _escaped(args: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(printable(arg) if isinstance(arg, str) else arg for arg in args)
    if isinstance(args, dict):  # logging's single-mapping form: log.info("%(user)s", {"user": ...})
        return {key: printable(value) if isinstance(value, str) else value for key, value in args.items()}
    return args
