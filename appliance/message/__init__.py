"""The ground floor's mail model: queued messages and recipients, addresses, SMTP reply codes, line endings.

Every room (smtp, pipeline, queue, delivery, store, filters) uses these; they import nothing above them.
"""
