"""The HTTPS service of ``listen.web``: the admin console and its API, users' self-service, /metrics and the
well-known files mail clients and senders fetch (MTA-STS policies, autoconfig, autodiscover).

It runs in the queue process (service/root.py), where the queue, the directory and the quarantine live, on
uvicorn inside the service's own event loop (server.py). app.py assembles the Starlette application from the
routes of each part; access.py decides who may call what; parts.py names what the web sees of the service.
"""
