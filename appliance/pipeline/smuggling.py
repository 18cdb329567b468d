"""The line-ending checks at the end of DATA: SMTP smuggling (RFC 5321 §2.3.8) and over-long lines
(§4.5.3.1.6), decided on what the engine measured of the data as it was sent (still dot-stuffed).

Only <CRLF>.<CRLF> ends the data here; a next hop that also ends it at <LF>.<LF> or <CR>.<CR> would see a
second message inside ours. So data with a bare CR or LF is refused, never passed on or repaired.
"""

from __future__ import annotations

import logging

from appliance.message import codes
from appliance.pipeline.stages import Client, Result, Transaction, refuse

log = logging.getLogger("appliance.smtp")


def line_endings(client: Client, transaction: Transaction, content: bytes) -> Result | None:
    if transaction.long_line:
        return refuse(codes.DATA_LINE_TOO_LONG)
    if transaction.bare_line_ending:
        log.warning("client=%s from=<%s> refused: bare CR/LF in DATA (possible SMTP smuggling)", client.ip,
                    transaction.mail_from)
        return refuse(codes.BARE_LINE_ENDING)
    return None
