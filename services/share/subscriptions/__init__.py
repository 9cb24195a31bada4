"""Topic-based FHIR Subscriptions (the Subscriptions R5 Backport IG on R4B, rest-hook only) for hospital systems.

A hospital system that would otherwise poll for new sheets, messages and Tasks registers a Subscription to one of
our topics (topics.py); the delivery worker (delivery.py) reads the event log after each subscription's cursor and
POSTs notification Bundles (notifications.py) to its endpoint, deciding each event by the owner's access of the
moment. The HTTP side is services/share/fhir/subscriptions.py.
"""
