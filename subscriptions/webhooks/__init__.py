"""Outbound webhooks (Standard Webhooks): endpoints, events written in the transaction of the
state change that causes them (an outbox), and their deliveries. The sending lives in the
engine (``subscriptions.webhooks.delivery``); this app only records."""
