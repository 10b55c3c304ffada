"""satellites-es: an event-sourced data layer over Postgres, RabbitMQ, Redis, Elasticsearch, FAISS."""

from __future__ import annotations
