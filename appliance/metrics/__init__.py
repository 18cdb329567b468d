"""The counters every process keeps (deliveries, refusals, sessions, scans) and the registry /metrics serves.

The ground floor: a counter is an integer increment on the paths it counts, and nothing here imports the rest of
appliance/.
"""
