"""Support for tests and benchmarks, one module per kind:

* :mod:`.services`: where the Postgres, Redis, RabbitMQ and Elasticsearch (the noida-db
  emulator, :class:`~.services.EmulatedElasticsearch`) the tests run against are, and unique
  names that keep tests on a shared service apart;
* :mod:`.network_faults`: :class:`~.network_faults.TcpProxy`, a network fault between one
  client and a service (not :mod:`satellites_es.faults`, which classifies errors);
* :mod:`.s3`: :class:`~.s3.S3Server`, moto's S3-compatible server on 127.0.0.1.

The fakes are not here: each seam's in-memory twin is in :mod:`satellites_es.memory` (the bus's
is :class:`satellites_es.events.InProcessEventBus`), next to the protocol it implements, and
passes the same contract suite as the real implementation (``tests/contract``).
"""
