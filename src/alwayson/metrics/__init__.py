"""Metrics: the embedded time-series store, the one PromQL engine, scraping and the one
Prometheus text parser. Observe (alerts, reports), release analysis and scaling all read
through it. It sits below them and may import only spec and util.
"""
