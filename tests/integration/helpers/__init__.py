"""Helpers shared by the integration tests: client factories (clients.py), a raw AMQP
0-9-1 frame builder/reader for protocol-level tests (amqp_raw.py), and RabbitMQ-style
password hashing for definitions files (passwords.py)."""
