"""The size limit (RFC 1870) and the recipient limit, as checks: at MAIL FROM for the declared SIZE=, at the
end of DATA for what really arrived, at RCPT TO for the number of recipients."""

from __future__ import annotations

from appliance.message import codes
from appliance.pipeline.stages import Client, MailFrom, Pipeline, RcptTo, Result, Stage, Transaction, refuse, tempfail


class SizeLimit:
    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size

    def mail(self, client: Client, transaction: Transaction, sender: MailFrom) -> Result | None:
        limit = self.max_message_size
        if limit and sender.size > limit:  # RFC 1870 §6.1
            return refuse(codes.SIZE_EXCEEDED)
        return None

    def data(self, client: Client, transaction: Transaction, content: bytes) -> Result | None:
        """RFC 5321 §4.2.5: the engine read on to the end marker keeping nothing; the answer comes only now.
        An over-long line is named first, as aiosmtpd does."""
        if transaction.oversize:
            return refuse(codes.DATA_LINE_TOO_LONG if transaction.long_line else codes.TOO_MUCH_DATA)
        return None


class RecipientLimit:
    def __init__(self, max_recipients: int) -> None:
        self.max_recipients = max_recipients

    def __call__(self, client: Client, transaction: Transaction, rcpt: RcptTo) -> Result | None:
        if len(transaction.rcpt_tos) >= self.max_recipients:
            return tempfail(codes.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.8: 452, the client sends the rest later
        return None


def register(pipeline: Pipeline, max_message_size: int, max_recipients: int) -> None:
    size = SizeLimit(max_message_size)
    pipeline.register(Stage.MAIL, size.mail)
    pipeline.register(Stage.RCPT, RecipientLimit(max_recipients))
    pipeline.register(Stage.DATA, size.data)
