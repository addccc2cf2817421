"""Monitoring: alert rules, alerts, notifications, silences, reports and exports, over the
store and engine of :mod:`alwayson.metrics`. Sits beside release and data: it may import
metrics, spec, store, util, never control.
"""
