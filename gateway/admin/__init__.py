"""The operator API (JSON over HTTP): not on the request path, so twisted.web serves it."""
