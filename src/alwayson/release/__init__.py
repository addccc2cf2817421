"""Releases: rolling, blue-green and canary, as pure planning and stepping functions.

The controller persists a :class:`~alwayson.release.model.Release` record, observes the
platform, and calls :func:`~alwayson.release.stepping.advance` once per tick; the record
says how many instances of each version run in each site and how traffic is split.
"""
