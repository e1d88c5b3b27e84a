"""Scheduler service: the live worker pool, placement, leases and reputation.

pool.py        workers, verdicts, leases, decayed duration, reputation (no Kafka)
placement.py   choose_worker: filters and the score
dispatcher.py  the per-request state machine: reservations -> assignments / outcomes, ticks
chunks.py      (request_id, attempt, seq) of a sealed chunk without decoding the ciphertext
feeds.py       group-less readers (verdicts from the beginning; heartbeats, responses live)
service.py     Settings and the Kafka wiring (`cocoon run scheduler`)
metrics.py     cocoon_scheduler_* Prometheus metrics
"""
