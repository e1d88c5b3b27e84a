"""Scheduler service: the live worker pool, placement, leases and reputation.

pool.py        workers, verdicts, leases, decayed duration, reputation, cooldown (no Kafka)
index.py       the sets the pool keeps for placement: placeable and free workers per model, by
               price; Deadlines, what only time changes (lease, liveness, verdict, next look)
placement.py   choose_worker: filters and the score, over a few sampled workers
dispatcher.py  the per-request state machine: reservations -> assignments / outcomes, per-model
               waiting queues, ticks
chunks.py      (request_id, attempt, seq) of a sealed chunk without decoding the ciphertext
feeds.py       group-less readers (verdicts from the beginning; heartbeats, responses live)
service.py     Settings and the Kafka wiring (`cocoon run scheduler`)
metrics.py     cocoon_scheduler_* Prometheus metrics
"""
