"""Soak test: steady producers, random faults, then every sink compared with the log key by key.

``python -m bench.soak --minutes N [--rate 200] [--keys 500] [--seed S]`` (or ``--seconds``),
from the checkout's root.

What runs, all in a namespace of its own (:mod:`.namespace`: a fresh Postgres schema, Redis key
prefix, RabbitMQ exchange, Elasticsearch index prefix and FAISS directory, removed afterwards):

* producers in this process (:mod:`.producers`) append entity, document and embedding events at
  ``--rate`` events/s over ``--keys`` keys per resource;
* the child processes (:mod:`.processes`): two ``satellites-es relay`` (one leads, one stands
  by), two ``satellites-es project -p entities -p documents`` competing on the same
  position-conditional sinks, one ``satellites-es project -p embeddings`` (FAISS), and the bus
  auditor (:mod:`.auditor`), which records every delivered position;
* faults (:mod:`.faults`: kills, Postgres session terminations, RabbitMQ restarts), sink cuts at
  TCP proxies in front of the projectors (:mod:`.sink_cuts`) and poison events of every kind
  (:mod:`.poison`), until the time is up.

Then the faults stop, the soak waits for everything to catch up (:mod:`.catchup`), stops the
processes gracefully, reads the log, the sinks, ``parked_events`` and the audit record
(:mod:`.evidence`) and judges them (:mod:`.oracle`, pure functions over that plain data);
:mod:`.report` prints one line per part and last
``lost=… duplicated_effects=… mismatched=… parked=N/M`` (followed by any other failed check).
The exit code is 0 only when the run passed. ``--sabotage`` (:mod:`.sabotage`) damages the
stores before they are read, and the run must fail. Every loop is bounded in count and time;
all traffic is on 127.0.0.1.
"""
