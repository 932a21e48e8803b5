"""The benchmark: ``python -m scripts.bench [--quick]`` (not part of the test suite).

Starts a real redis-server, a fast fake upstream (``fake``) and the gateway as
subprocesses on loopback, drives them with an asyncio load generator (``client``), and
prints a table and writes ``bench-results.json``: completions/s through the gateway and
straight to the fake upstream in the same run, time to first byte added by the gateway with a
paced upstream, memory per open stream with 1,000 slow streams, CPU time, Redis commands and
upstream connections per request, WORKERS=2, the cost of a new upstream connection per request
(``transport_ab``) and, when py-spy is installed, a profile. ``run`` holds the plan.
"""
