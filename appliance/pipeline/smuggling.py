"""The line-ending checks at the end of DATA: SMTP smuggling (RFC 5321 §2.3.8), over-long lines
(§4.5.3.1.6) and NUL octets, decided on what the engine measured of the data as it was sent (still
dot-stuffed).

Only <CRLF>.<CRLF> ends the data here; a next hop that also ends it at <LF>.<LF> or <CR>.<CR> would see a
second message inside ours. So data with a bare CR or LF is refused, never passed on or repaired. A NUL is
refused too, not stripped: a next hop that drops NULs would read ``<CRLF><NUL>.<CRLF>`` as the end of the data,
and stripping would change a message we may have to pass on signed (DKIM) or to a scanner byte for byte.
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
    if transaction.nul:
        log.warning("client=%s from=<%s> refused: NUL in DATA", client.ip, transaction.mail_from)
        return refuse(codes.NUL_IN_DATA)
    return None
