"""Example Flask apps for the gateway demo and the end-to-end tests.

Run one under Gunicorn's gthread worker, for example::

    gunicorn --worker-class gthread --threads 4 --bind 127.0.0.1:8001 backends.web:app

``web`` serves HTML, JSON, streamed and sized downloads, uploads and an echo
endpoint; ``api`` serves JSON under ``/api/``.  Every response says which
process served it in its ``X-Served-By`` header.
"""
