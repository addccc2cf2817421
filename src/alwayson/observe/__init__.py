"""Monitoring: scraping, the embedded time-series store, queries, alerts, notifications,
reports. Sits beside release and data: it may import spec, store, util, never control.
"""
